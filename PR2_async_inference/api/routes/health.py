"""``GET /healthz`` (the process is up) and ``GET /readyz`` (broker reachable, results cache caught up)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from PR2_async_inference.api.deps import StateDep
from PR2_async_inference.api.schemas import Health
from PR2_async_inference.callback_security import callbacks_allowed, secret_is_placeholder
from PR2_async_inference.messaging.admin import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "not ready"}})
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when the broker accepts connections and the results cache has caught up.

    ``detail`` also says whether callbacks are allowed and whether their signing secret is set: the service
    refuses to start with callbacks allowed and the placeholder secret.
    """
    reachable = await run_in_threadpool(broker_reachable, state.settings)
    pending, oldest = state.store.backlog()
    caught_up = state.reader.caught_up.is_set()
    detail = {
        "broker_reachable": reachable,
        "results_caught_up": caught_up,
        "pending": pending,
        "oldest_pending_age_s": round(oldest, 3),
        "callbacks_allowed": callbacks_allowed(state.settings),
        "callback_secret": "placeholder" if secret_is_placeholder(state.settings.callback_hmac_secret) else "set",
    }
    ok = reachable and caught_up
    body = Health(status="ready" if ok else "not ready", detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
