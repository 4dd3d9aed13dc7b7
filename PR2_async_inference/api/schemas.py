"""Request, response and error bodies of the inference API.

Every error answer (4xx, 5xx) is JSON: ``{"detail": "..."}``, or for a body or parameter that fails the schema,
``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` (FastAPI's validation errors).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from PR2_async_inference.messaging.messages import Prediction

#: Request bodies validate strictly, as their JSON schema reads: ``"5"`` is not an integer, ``false`` not a number.
STRICT = ConfigDict(strict=True)


# ---------------------------------------------------------------------------------------------- POST /inference
class InferenceParameters(BaseModel):
    model_config = STRICT

    top_k: int = Field(5, ge=1, le=1000, description="how many labels to return, best first")


#: A 2x2 PNG: any image model accepts it (the API resizes images to the model's input).
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR42mM8ISfHwMDAxMDAwMDAAAANBAEIf62CUQAAAABJRU5ErkJggg=="
)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        strict=True, json_schema_extra={"examples": [{"data": EXAMPLE_IMAGE, "parameters": {"top_k": 3}}]}
    )

    model_name: str | None = Field(
        None, min_length=1, max_length=200,
        description="a name from GET /models (default: the registry's default_model, marked default there)",
    )
    data: Annotated[str, Field(min_length=1)] | Annotated[list[Any], Field(min_length=1)] = Field(
        description="a base64 PNG/JPEG image (preprocessed with the model's manifest), or a nested list "
        "already preprocessed to the model's input shape [C, H, W]"
    )
    parameters: InferenceParameters = Field(default_factory=InferenceParameters)
    callback_url: str | None = Field(
        None, max_length=2000, description="POSTed the final result, HMAC-signed; host must be allowlisted"
    )
    ttl_s: float | None = Field(
        None, gt=0, description="seconds before an unstarted request expires (default: the service's default_ttl_s)"
    )


class InferenceAccepted(BaseModel):
    request_id: str
    status: Literal["queued"] = "queued"
    model_name: str
    status_url: str
    deadline: float = Field(description="unix seconds after which the request is reported expired if not started")


class InferenceStatus(BaseModel):
    request_id: str
    model_name: str
    status: Literal["queued", "running", "succeeded", "failed", "expired"]
    created_at: float
    updated_at: float
    attempt: int = 1
    result: list[Prediction] | None = Field(None, description="top-k labels and softmax scores, best first")
    error: str | None = None
    batch_size: int | None = Field(None, description="how many requests shared the forward pass")
    queue_time_s: float | None = None
    inference_time_s: float | None = None


# ---------------------------------------------------------------------------------------------- GET /models
class ModelInfo(BaseModel):
    name: str
    available: bool
    default: bool
    artifact: str | None = Field(None, description="the artifact's file name (no server path)")
    format: str | None = None
    input_shape: list[int] | None = None
    num_classes: int | None = None
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------- health
class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- OIP v2
Dimension = Annotated[int, Field(ge=1, le=1 << 24)]


class OIPTensor(BaseModel):
    model_config = STRICT

    name: str = Field("input", max_length=200)
    shape: list[Dimension] = Field(min_length=1, max_length=8, description="[C, H, W] or [1, C, H, W]")
    datatype: Literal["FP32", "FP64", "FP16", "INT64", "INT32", "UINT8"] = "FP32"
    data: list[float] = Field(min_length=1, description="the tensor's values, flat in row-major order")


class OIPParameters(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # OIP lets clients send parameters a server does not use

    top_k: int = Field(5, ge=1, le=1000, description="how many labels to return, best first")
    callback_url: str | None = Field(None, max_length=2000, description="as in POST /inference")
    ttl_s: float | None = Field(None, gt=0, description="as in POST /inference")


class OIPInferRequest(BaseModel):
    model_config = STRICT

    id: str | None = Field(None, max_length=200, description="client id, echoed back")
    inputs: list[OIPTensor] = Field(min_length=1, max_length=1)
    parameters: OIPParameters = Field(default_factory=OIPParameters)


class OIPAccepted(BaseModel):
    id: str | None
    request_id: str
    model_name: str
    status: Literal["queued"] = "queued"
    status_url: str


# ---------------------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what was wrong; for a body or parameter that fails the schema, one entry per error"
    )


#: Headers some answers carry, for the OpenAPI document.
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
LOCATION = {"Location": {"description": "the status URL of the request", "schema": {"type": "string"}}}

#: What each error status means, unless an operation says more precisely.
ERROR_MEANINGS = {
    400: "a body that cannot be read (not UTF-8 JSON)",
    401: "missing or wrong X-API-Key (only when the service sets INFERENCE_API_KEY)",
    404: "unknown model",
    413: "body over INFERENCE_MAX_BODY_BYTES",
    422: "a body or parameter that fails the schema, or a value the schema cannot describe: an image that does "
    "not decode, a tensor whose shape is not the model's, a callback host off the allowlist, a top_k or ttl_s "
    "over the service's maximum",
    429: "backlog over its bound; retry after Retry-After seconds",
    503: "the broker or the model's artifact is unavailable; retry after Retry-After seconds",
}


def error_responses(*codes: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with the JSON :class:`ErrorBody`.

    ``meanings`` overrides a code's description (``e404="unknown request id"``).
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": meanings.get(f"e{code}", ERROR_MEANINGS[code])}
        if code in (429, 503):
            entry["headers"] = RETRY_AFTER
        responses[code] = entry
    return responses
