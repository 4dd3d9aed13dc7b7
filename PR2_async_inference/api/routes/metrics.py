"""``GET /metrics``: the API's Prometheus metrics (names in :mod:`PR2_async_inference.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from PR2_async_inference.api.deps import require_api_key
from PR2_async_inference.api.schemas import error_responses

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
               **error_responses(401)},
)
async def prometheus_metrics() -> Response:
    """Prometheus text format (inference_requests_received_total, inference_requests_rejected_total, ...)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
