"""``POST /inference`` (202 + request id + Location; with ``?wait=S`` the final state itself, 200, when it comes
within S seconds) and ``GET /inference/{id}`` (its state, long polling)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from PR2_async_inference.api.admission import Submission, accept, status_url
from PR2_async_inference.api.deps import IdempotencyKey, ProducerDep, StateDep, require_api_key
from PR2_async_inference.api.schemas import (
    LOCATION,
    InferenceAccepted,
    InferenceRequest,
    InferenceStatus,
    error_responses,
)
from PR2_async_inference.messaging.messages import FINAL_STATES, StatusMessage
from PR2_async_inference.settings import MAX_STATUS_WAIT_S

router = APIRouter(prefix="/inference", tags=["inference"], dependencies=[Depends(require_api_key)])


STATUS_FIELDS = set(InferenceStatus.model_fields)

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_STATUS_WAIT_S,
        description="hold the answer until the request is final, at most this many seconds "
        "(0, the default, answers at once)",
    ),
]


def status_response(found: StatusMessage, headers: dict[str, str] | None = None) -> Response:
    """A cached state as the JSON of :class:`InferenceStatus`: it is already validated, so its fields are
    serialised once, without building a second model."""
    return Response(found.model_dump_json(include=STATUS_FIELDS),
                    media_type="application/json", headers=headers)


@router.post(
    "",
    status_code=202,
    response_model=InferenceAccepted,
    responses={
        200: {"model": InferenceStatus, "headers": LOCATION,
              "description": "with ?wait=S: the request's final state, reached within S seconds"},
        202: {"headers": LOCATION},
        **error_responses(400, 401, 404, 413, 422, 429, 503),
    },
)
async def create_inference(
    body: InferenceRequest,
    request: Request,
    response: Response,
    state: StateDep,
    producer: ProducerDep,
    idempotency_key: IdempotencyKey = None,
    wait: WaitSeconds = 0,
) -> InferenceAccepted | Response:
    """Queue one inference request; poll the status URL (or wait for the callback) for the result. Without
    ``model_name`` the registry's ``default_model`` serves it (the one ``GET /models`` marks ``default``).

    With ``?wait=S`` the answer is held until the request is final, at most S seconds: a final state comes back
    at once (200, the body of ``GET /inference/{id}``), one call instead of two; otherwise the 202 as without it.
    """
    model_name = body.model_name or state.registry.default_model
    submission = Submission(
        model_name=model_name,
        data=body.data,
        top_k=body.parameters.top_k,
        callback_url=body.callback_url,
        ttl_s=body.ttl_s,
    )
    accepted = await accept(state, producer, submission, idempotency_key)
    url = status_url(request, accepted.request_id)
    headers = {"Location": url, **({"Idempotent-Replayed": "true"} if accepted.replayed else {})}
    if wait:
        found = await state.store.wait_final(accepted.request_id, wait)
        if found is not None and found.status in FINAL_STATES:
            return status_response(found, headers=headers)
    response.headers.update(headers)
    return InferenceAccepted(
        request_id=accepted.request_id, model_name=model_name, status_url=url, deadline=accepted.deadline or 0.0
    )


@router.get(
    "/{request_id}",
    name="get_inference",
    response_model=InferenceStatus,
    responses=error_responses(401, 404, 422, e404="unknown (or evicted) request id"),
)
async def get_inference(request_id: uuid.UUID, state: StateDep, wait: WaitSeconds = 0) -> Response:
    """The request's state: queued, running, succeeded (with top-k), failed (with the error) or expired.

    With ``?wait=S`` a client gets the result as soon as it exists, in one request, instead of polling.
    """
    found = await state.store.wait_final(str(request_id), wait)
    if found is None:
        raise HTTPException(404, detail=f"no request {request_id} (unknown, or older than this replica's cache)")
    return status_response(found)
