"""Dependencies of the routes, as ``Annotated`` aliases (swappable with ``app.dependency_overrides``).

Each object a route uses comes by one dependency: ``StateDep`` (settings, registry and manifests, results cache)
and ``ProducerDep`` (the request producer) hold nothing of each other. They are ``async def`` although they
never await: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop on every request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from PR2_async_inference.api.state import RequestProducer, ServiceState
from PR2_async_inference.settings import Settings


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_producer(request: Request) -> RequestProducer:
    return request.app.state.producer


ProducerDep = Annotated[RequestProducer, Depends(get_producer)]


async def get_app_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]

#: The OpenAPI security scheme of the API key; :mod:`.openapi` drops it when no key is set.
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="required when the service sets INFERENCE_API_KEY"
)


async def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """401 unless the service sets no key or ``X-API-Key`` matches it (compared in constant time)."""
    if settings.api_key and not (key and hmac.compare_digest(key.encode(), settings.api_key.encode())):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="repeats with the same key return the same request id"),
]
