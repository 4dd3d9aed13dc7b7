"""The app factory: settings and registry in, a FastAPI app with every router, the body limit and a fitted
OpenAPI document out. The service state (``app.state.service``, its results reader running) and the request
producer (``app.state.producer``) live from the app's start-up to its shutdown; :mod:`.deps` hands them to the
routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from PR2_async_inference.api.middleware import BodyLimitMiddleware
from PR2_async_inference.api.openapi import fitted_openapi
from PR2_async_inference.api.routes import ROUTERS
from PR2_async_inference.api.state import RequestProducer, ServiceState
from PR2_async_inference.callback_security import require_callback_secret
from PR2_async_inference.registry import Registry, load_registry
from PR2_async_inference.settings import Settings, get_settings


def create_app(settings: Settings | None = None, registry: Registry | None = None, start_kafka: bool = True) -> FastAPI:
    """Build the app. ``start_kafka=False`` skips the results reader, for tests without a broker (the producer
    connects on its first request).

    Raises:
        UsageError: callbacks are allowed while the signing secret is the placeholder, or the registry is bad.
    """
    settings = settings or get_settings()
    require_callback_secret(settings)
    registry = registry or load_registry(settings.model_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One torch thread while the app runs, set before any request thread touches torch (a thread keeps the
        # count it first ran with). The API's tensor work is one image's decoding at a time, too small to split,
        # and OpenMP's idle threads spin-wait after every parallel region: a second thread would only add CPU.
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            state = ServiceState(settings, registry)
            app.state.service, app.state.producer = state, RequestProducer(settings)
            await run_in_threadpool(state.warm_manifests)
            if start_kafka:
                state.reader.start()
            try:
                yield
            finally:
                state.reader.stop()
                app.state.producer.close()
        finally:
            torch.set_num_threads(torch_threads)

    app = FastAPI(
        title="Async inference service",
        version="0.1.0",
        lifespan=lifespan,
        description="Queue inference requests on Kafka; batching workers answer them. "
        "POST returns 202 + a request id; GET the status URL for the result.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = fitted_openapi(app, settings)  # type: ignore[method-assign]
    return app
