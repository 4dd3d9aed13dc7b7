"""``POST /inference`` (202 + request id + Location) and ``GET /inference/{id}`` (its state, long polling)."""

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
from PR2_async_inference.settings import MAX_STATUS_WAIT_S

router = APIRouter(prefix="/inference", tags=["inference"], dependencies=[Depends(require_api_key)])


@router.post(
    "",
    status_code=202,
    response_model=InferenceAccepted,
    responses={202: {"headers": LOCATION}, **error_responses(400, 401, 404, 413, 422, 429, 503)},
)
async def create_inference(
    body: InferenceRequest,
    request: Request,
    response: Response,
    state: StateDep,
    producer: ProducerDep,
    idempotency_key: IdempotencyKey = None,
) -> InferenceAccepted:
    """Queue one inference request; poll the status URL (or wait for the callback) for the result."""
    submission = Submission(
        model_name=body.model_name,
        data=body.data,
        top_k=body.parameters.top_k,
        callback_url=body.callback_url,
        ttl_s=body.ttl_s,
    )
    accepted = await accept(state, producer, submission, idempotency_key)
    url = status_url(request, accepted.request_id)
    response.headers["Location"] = url
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return InferenceAccepted(
        request_id=accepted.request_id, model_name=body.model_name, status_url=url, deadline=accepted.deadline or 0.0
    )


STATUS_FIELDS = set(InferenceStatus.model_fields)

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_STATUS_WAIT_S,
        description="long polling: hold the answer until the request is final, at most this many seconds "
        "(0, the default, answers at once)",
    ),
]


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
    # The cached state is already validated: serialise its InferenceStatus fields once, without a second model.
    return Response(found.model_dump_json(include=STATUS_FIELDS), media_type="application/json")
