"""``POST /v2/models/{name}/infer``: the KServe Open Inference Protocol v2 request body, answered asynchronously
(202 + request id onto the same queue as ``POST /inference``)."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response

from PR2_async_inference.api.admission import Submission, accept, reject, status_url, unknown_model
from PR2_async_inference.api.deps import IdempotencyKey, ProducerDep, StateDep, require_api_key
from PR2_async_inference.api.schemas import LOCATION, OIPAccepted, OIPInferRequest, error_responses

router = APIRouter(prefix="/v2", tags=["open inference protocol v2 (async)"], dependencies=[Depends(require_api_key)])

ModelName = Annotated[str, Path(min_length=1, max_length=200, description="a name from GET /models")]


@router.post(
    "/models/{model_name}/infer",
    status_code=202,
    response_model=OIPAccepted,
    responses={202: {"headers": LOCATION}, **error_responses(400, 401, 404, 413, 422, 429, 503)},
)
async def oip_infer(
    model_name: ModelName,
    body: OIPInferRequest,
    request: Request,
    response: Response,
    state: StateDep,
    producer: ProducerDep,
    idempotency_key: IdempotencyKey = None,
) -> OIPAccepted:
    """``inputs[0].data`` is the flat (row-major) tensor of ``shape`` ([C, H, W] or [1, C, H, W]);
    ``parameters`` take ``top_k``, ``callback_url`` and ``ttl_s`` as ``POST /inference`` does."""
    if model_name not in state.registry.models:
        raise unknown_model(state, model_name)
    tensor = body.inputs[0]
    count = math.prod(tensor.shape)
    if count != len(tensor.data):
        raise reject(
            model_name,
            "invalid_input",
            422,
            f"inputs[0].shape {tensor.shape} needs {count} values, data has {len(tensor.data)}",
        )
    params = body.parameters
    submission = Submission(
        model_name=model_name,
        data=np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape),
        top_k=params.top_k,
        callback_url=params.callback_url,
        ttl_s=params.ttl_s,
    )
    accepted = await accept(state, producer, submission, idempotency_key)
    url = status_url(request, accepted.request_id)
    response.headers["Location"] = url
    return OIPAccepted(id=body.id, request_id=accepted.request_id, model_name=model_name, status_url=url)
