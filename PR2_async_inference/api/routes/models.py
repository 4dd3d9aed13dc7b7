"""``GET /models``: the registry, each model's availability, input shape, labels and batching."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from PR2_async_inference.api.deps import StateDep, require_api_key
from PR2_async_inference.api.schemas import ModelInfo, error_responses
from PR2_async_inference.api.state import ModelUnavailable, ServiceState

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_api_key)])


def model_info(state: ServiceState, name: str) -> ModelInfo:
    """One registry entry as clients see it: the artifact's file name, never its path on this server."""
    spec = state.registry.models[name]
    info = ModelInfo(
        name=name,
        available=False,
        default=name == state.registry.default_model,
        max_batch_size=spec.max_batch_size,
        max_batch_delay_ms=spec.max_batch_delay_ms,
    )
    try:
        path, manifest = state.manifest(name)
    except ModelUnavailable as exc:
        info.error = str(exc)
        return info
    info.available, info.artifact, info.format = True, path.name, manifest.format
    info.input_shape, info.num_classes = manifest.input_shape, manifest.num_classes
    info.labels, info.preprocessing = manifest.labels, manifest.preprocessing
    return info


@router.get("", response_model=list[ModelInfo], responses=error_responses(401))
async def list_models(state: StateDep) -> list[ModelInfo]:
    """The registry: every model name, whether its artifact is present, its input shape and labels."""
    return [model_info(state, name) for name in state.registry.models]
