"""The asynchronous inference API (FastAPI): accept a request, queue it on Kafka, answer 202 at once.

    python PR2_async_inference/async_fastapi_server.py --port 8000          # or, in the image:
    uvicorn PR2_async_inference.async_fastapi_server:create_app --factory --host 0.0.0.0 --port 8000

Endpoints: ``POST /inference`` (202 + request id + Location), ``GET /inference/{id}`` (``?wait=S`` holds the
answer until the request is final, at most S seconds: long polling), ``GET /models``,
``POST /v2/models/{name}/infer`` (the KServe Open Inference Protocol v2 body, answered with 202),
``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Settings come from :mod:`settings` (``INFERENCE_*``).

Every replica reads the whole results topic into a bounded cache (:class:`ResultStore`), so any replica
answers
``GET /inference/{id}``; the same cache gives the backlog (requests queued but not final, and the oldest one's
age) that drives backpressure (429 + Retry-After) without asking the broker on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from modelops.artifact import Manifest, manifest_path
from modelops.errors import UsageError
from PR2_async_inference import metrics
from PR2_async_inference.callback_security import host_allowed
from PR2_async_inference.kafka_queue_service import (
    FINAL_STATES,
    STATUS_RANK,
    Prediction,
    RequestMessage,
    ResultsReader,
    StatusMessage,
    as_asyncio,
    broker_reachable,
    make_producer,
    send_request,
    send_status,
)
from PR2_async_inference.registry import Registry, decode_input, load_registry, model_manifest
from PR2_async_inference.settings import DEFAULT_MODEL_NAME, MAX_STATUS_WAIT_S, Settings, get_settings

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- bodies
class InferenceParameters(BaseModel):
    top_k: int = Field(5, ge=1, le=1000, description="how many labels to return, best first")


class InferenceRequest(BaseModel):
    model_name: str = Field(
        DEFAULT_MODEL_NAME, min_length=1, max_length=200, description="a name from GET /models"
    )
    data: str | list[Any] = Field(
        description="a base64 PNG/JPEG image (preprocessed with the model's manifest), or a nested list "
        "already preprocessed to the model's input shape [C, H, W]"
    )
    parameters: InferenceParameters = Field(default_factory=InferenceParameters)
    callback_url: str | None = Field(
        None, max_length=2000, description="POSTed the final result, HMAC-signed; host must be allowlisted"
    )
    ttl_s: float | None = Field(
        None,
        gt=0,
        description="seconds before an unstarted request expires (default: the service's default_ttl_s)",
    )


class InferenceAccepted(BaseModel):
    request_id: str
    status: Literal["queued"] = "queued"
    model_name: str
    status_url: str
    deadline: float = Field(
        description="unix seconds after which the request is reported expired if not started"
    )


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


class ModelInfo(BaseModel):
    name: str
    available: bool
    default: bool
    artifact: str | None = None
    format: str | None = None
    input_shape: list[int] | None = None
    num_classes: int | None = None
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    error: str | None = None


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


class OIPTensor(BaseModel):
    name: str = Field("input", max_length=200)
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["FP32", "FP64", "FP16", "INT64", "INT32", "UINT8"] = "FP32"
    data: list[Any]


class OIPInferRequest(BaseModel):
    id: str | None = Field(None, max_length=200, description="client id, echoed back")
    inputs: list[OIPTensor] = Field(min_length=1, max_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict, description="top_k, callback_url, ttl_s")


class OIPAccepted(BaseModel):
    id: str | None
    request_id: str
    model_name: str
    status: Literal["queued"] = "queued"
    status_url: str


# ---------------------------------------------------------------------------------------------- state
class ResultStore:
    """Bounded LRU of request states, fed by the results topic (and by this replica's own accepts).

    A final state is never replaced (the first final state wins, so a redelivered request cannot flip a
    result), and a state never goes back (``running`` after ``succeeded`` is ignored).
    """

    def __init__(self, size: int, idempotency_size: int) -> None:
        self.size = size
        self.idempotency_size = idempotency_size
        self.statuses: OrderedDict[str, StatusMessage] = OrderedDict()
        self.idempotency: OrderedDict[str, str] = OrderedDict()
        self.pending: OrderedDict[str, float] = OrderedDict()  # not final yet -> created_at
        # Long-polling GETs waiting for a final state. apply() runs on the results-reader thread, so each
        # waiter is woken through its own event loop.
        self.waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self.lock = threading.Lock()

    def apply(self, new: StatusMessage) -> None:
        with self.lock:
            woken = self._store(new)
        for loop, event in woken:
            with contextlib.suppress(RuntimeError):  # that request's loop is already closed
                loop.call_soon_threadsafe(event.set)

    def _store(self, new: StatusMessage) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]:
        """Apply ``new`` (lock held); return the waiters to wake."""
        old = self.statuses.get(new.request_id)
        if old is not None and (
            old.status in FINAL_STATES or STATUS_RANK[new.status] < STATUS_RANK[old.status]
        ):
            return []
        if old is not None and new.idempotency_key is None:
            new.idempotency_key = old.idempotency_key
        self.statuses[new.request_id] = new
        self.statuses.move_to_end(new.request_id)
        while len(self.statuses) > self.size:
            evicted, _ = self.statuses.popitem(last=False)
            self.pending.pop(evicted, None)
        if new.status in FINAL_STATES:
            self.pending.pop(new.request_id, None)
        elif new.request_id not in self.pending:
            self.pending[new.request_id] = new.created_at
        if new.idempotency_key:
            self.idempotency[new.idempotency_key] = new.request_id
            while len(self.idempotency) > self.idempotency_size:
                self.idempotency.popitem(last=False)
        return self.waiters.pop(new.request_id, []) if new.status in FINAL_STATES else []

    def get(self, request_id: str) -> StatusMessage | None:
        with self.lock:
            return self.statuses.get(request_id)

    async def wait_final(self, request_id: str, timeout_s: float) -> StatusMessage | None:
        """The request's state once it is final, or its state after ``timeout_s`` (None if unknown)."""
        event = asyncio.Event()
        with self.lock:
            found = self.statuses.get(request_id)
            if found is None or found.status in FINAL_STATES or timeout_s <= 0:
                return found
            self.waiters.setdefault(request_id, []).append((asyncio.get_running_loop(), event))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        finally:
            with self.lock:
                waiting = [w for w in self.waiters.get(request_id, []) if w[1] is not event]
                if waiting:
                    self.waiters[request_id] = waiting
                else:
                    self.waiters.pop(request_id, None)
        return self.get(request_id)

    def by_idempotency_key(self, key: str) -> str | None:
        with self.lock:
            return self.idempotency.get(key)

    def backlog(self, now: float | None = None) -> tuple[int, float]:
        """(requests accepted but not final, age in seconds of the oldest of them)."""
        with self.lock:
            if not self.pending:
                return 0, 0.0
            oldest = next(iter(self.pending.values()))
            return len(self.pending), max(0.0, (now or time.time()) - oldest)


class RequestProducer:
    """Publishes an accepted request: its ``queued`` state (so every replica knows it) and the request itself,
    both acknowledged by the broker (acks=all) before the API answers 202."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = None
        self._lock = threading.Lock()

    def producer(self):
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.settings, client_id="inference-api")
            return self._producer

    async def submit(self, message: RequestMessage, queued: StatusMessage) -> None:
        # Creating the producer blocks on the broker, so only the first call pays a thread hop.
        producer = self._producer or await run_in_threadpool(self.producer)
        loop = asyncio.get_running_loop()
        futures = [  # the request first: it is what a worker waits for
            send_request(producer, self.settings, message),
            send_status(producer, self.settings, queued),
        ]
        await asyncio.wait_for(asyncio.gather(*(as_asyncio(f, loop) for f in futures)), timeout=30)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5)


class ServiceState:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.store = ResultStore(settings.result_cache_size, settings.idempotency_cache_size)
        self.producer = RequestProducer(settings)
        self.reader = ResultsReader(settings, self.store.apply)
        self._manifests: dict[str, tuple[Path, Manifest, float]] = {}
        self.idempotency_locks: dict[str, asyncio.Lock] = {}

    def manifest(self, name: str) -> tuple[Path, Manifest]:
        """The model's artifact path + manifest (re-read when the file changes; no model is loaded)."""
        spec = self.registry.models[name]
        path = spec.resolve()
        cached = self._manifests.get(name)
        if path is not None and cached and cached[0] == path:
            with contextlib.suppress(OSError):
                if manifest_path(path).stat().st_mtime == cached[2]:
                    return cached[0], cached[1]
        path, manifest = model_manifest(spec)
        self._manifests[name] = (path, manifest, manifest_path(path).stat().st_mtime)
        return path, manifest


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in
# its thread pool, and four thread hops per request cost milliseconds on a busy 2-core machine.
async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_producer(state: Annotated[ServiceState, Depends(get_state)]) -> RequestProducer:
    return state.producer


async def get_app_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
ProducerDep = Annotated[RequestProducer, Depends(get_producer)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="required when the service sets INFERENCE_API_KEY"
)


async def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None
) -> None:
    if settings.api_key and not (key and _const_eq(key, settings.api_key)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )


def _const_eq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


# ---------------------------------------------------------------------------------------------- core logic
def reject(
    model: str, reason: str, code: int, detail: str, headers: dict[str, str] | None = None
) -> HTTPException:
    metrics.REQUESTS_REJECTED.labels(model, reason).inc()
    return HTTPException(code, detail=detail, headers=headers)


async def accept(
    state: ServiceState,
    producer: RequestProducer,
    request: Request,
    *,
    model_name: str,
    data: Any,
    top_k: int,
    callback_url: str | None,
    ttl_s: float | None,
    idempotency_key: str | None,
) -> tuple[str, float]:
    """Validate, apply backpressure, queue; returns (request_id, deadline). Raises HTTPException."""
    s = state.settings
    label = model_name if model_name in state.registry.models else "unknown"
    if model_name not in state.registry.models:
        raise reject(
            label,
            "unknown_model",
            404,
            f"Unknown model {model_name!r}. Choose one of: {', '.join(sorted(state.registry.models))}",
        )
    if top_k > s.max_top_k:
        raise reject(
            label, "invalid_input", 422, f"parameters.top_k={top_k} is above the maximum {s.max_top_k}"
        )
    if ttl_s is not None and ttl_s > s.max_ttl_s:
        raise reject(label, "invalid_input", 422, f"ttl_s={ttl_s} is above the maximum {s.max_ttl_s}")
    if callback_url is not None and not host_allowed(callback_url, s.callback_allowlist):
        raise reject(
            label,
            "callback_not_allowed",
            422,
            f"callback_url host is not on the allowlist ({', '.join(s.callback_allowlist) or 'empty'}); "
            "set INFERENCE_CALLBACK_ALLOWLIST",
        )
    pending, oldest_age = state.store.backlog()
    if (s.backpressure_max_lag and pending >= s.backpressure_max_lag) or (
        s.backpressure_max_age_s and oldest_age >= s.backpressure_max_age_s
    ):
        raise reject(
            label,
            "backpressure",
            429,
            f"queue is full: {pending} requests pending (limit {s.backpressure_max_lag}), oldest "
            f"{oldest_age:.1f} s old (limit {s.backpressure_max_age_s} s); retry later",
            headers={"Retry-After": str(s.backpressure_retry_after_s)},
        )
    try:
        _, manifest = state.manifest(model_name)
    except FileNotFoundError as exc:
        raise reject(label, "model_unavailable", 503, str(exc)) from exc
    try:
        tensor = await run_in_threadpool(decode_input, data, manifest)
    except UsageError as exc:
        raise reject(label, "invalid_input", 422, str(exc)) from exc

    request_id = str(uuid.uuid4())
    now = time.time()
    deadline = now + (ttl_s or s.default_ttl_s)
    message = RequestMessage(
        request_id=request_id,
        model=model_name,
        tensor=tensor,
        deadline=deadline,
        enqueued_at=now,
        top_k=top_k,
        callback_url=callback_url,
    )
    queued = StatusMessage(
        request_id=request_id,
        model_name=model_name,
        status="queued",
        created_at=now,
        updated_at=now,
        deadline=deadline,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )
    try:
        await producer.submit(message, queued)
    except (KafkaError, TimeoutError, asyncio.TimeoutError) as exc:
        raise reject(
            label,
            "broker_unavailable",
            503,
            f"could not queue the request: {exc}",
            headers={"Retry-After": "1"},
        ) from exc
    state.store.apply(queued)
    metrics.REQUESTS_RECEIVED.labels(model_name).inc()
    return request_id, deadline


async def accept_idempotent(
    state: ServiceState,
    producer: RequestProducer,
    request: Request,
    idempotency_key: str | None,
    **kwargs: Any,
) -> tuple[str, float | None, bool]:
    """Like :func:`accept`; a repeated Idempotency-Key returns the first request's id (third value True)."""
    if not idempotency_key:
        request_id, deadline = await accept(state, producer, request, idempotency_key=None, **kwargs)
        return request_id, deadline, False
    # Serialises concurrent repeats of one key on this replica; the results topic spreads the key to the others.
    lock = state.idempotency_locks.setdefault(idempotency_key, asyncio.Lock())
    try:
        async with lock:
            existing = state.store.by_idempotency_key(idempotency_key)
            if existing:
                old = state.store.get(existing)
                return existing, old.deadline if old else None, True
            request_id, deadline = await accept(
                state, producer, request, idempotency_key=idempotency_key, **kwargs
            )
    finally:
        if not lock.locked():
            state.idempotency_locks.pop(idempotency_key, None)
    return request_id, deadline, False


def status_url(request: Request, request_id: str) -> str:
    return str(request.url_for("get_inference", request_id=request_id))


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="repeats with the same key return the same request id",
    ),
]


# ---------------------------------------------------------------------------------------------- routers
inference_router = APIRouter(prefix="/inference", tags=["inference"], dependencies=[Depends(require_api_key)])


@inference_router.post(
    "",
    status_code=202,
    response_model=InferenceAccepted,
    responses={
        404: {"description": "unknown model"},
        413: {"description": "body too large"},
        422: {"description": "wrong shape or undecodable input"},
        429: {"description": "backlog over its bound; see Retry-After"},
    },
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
    request_id, deadline, repeated = await accept_idempotent(
        state,
        producer,
        request,
        idempotency_key,
        model_name=body.model_name,
        data=body.data,
        top_k=body.parameters.top_k,
        callback_url=body.callback_url,
        ttl_s=body.ttl_s,
    )
    url = status_url(request, request_id)
    response.headers["Location"] = url
    if repeated:
        response.headers["Idempotent-Replayed"] = "true"
    return InferenceAccepted(
        request_id=request_id, model_name=body.model_name, status_url=url, deadline=deadline or 0.0
    )


@inference_router.get(
    "/{request_id}",
    name="get_inference",
    response_model=InferenceStatus,
    responses={404: {"description": "unknown (or evicted) request id"}},
)
async def get_inference(
    request_id: uuid.UUID,
    state: StateDep,
    wait: Annotated[float, Query(
        ge=0, le=MAX_STATUS_WAIT_S,
        description="long polling: hold the answer until the request is final, at most this many seconds "
        "(0, the default, answers at once)")] = 0,
) -> InferenceStatus:
    """The request's state: queued, running, succeeded (with top-k), failed (with the error) or expired.

    With ``?wait=S`` a client gets the result as soon as it exists, in one request, instead of polling.
    """
    found = await state.store.wait_final(str(request_id), wait)
    if found is None:
        raise HTTPException(
            404, detail=f"no request {request_id} (unknown, or older than this replica's cache)"
        )
    return InferenceStatus(**found.model_dump(include=set(InferenceStatus.model_fields)))


models_router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_api_key)])


@models_router.get("", response_model=list[ModelInfo])
async def list_models(state: StateDep) -> list[ModelInfo]:
    """The registry: every model name, whether its artifact is present, its input shape and labels."""
    rows = []
    for name, spec in state.registry.models.items():
        info = ModelInfo(
            name=name,
            available=False,
            default=name == state.registry.default_model,
            max_batch_size=spec.max_batch_size,
            max_batch_delay_ms=spec.max_batch_delay_ms,
        )
        try:
            path, manifest = state.manifest(name)
            info.available, info.artifact, info.format = True, str(path), manifest.format
            info.input_shape, info.num_classes = manifest.input_shape, manifest.num_classes
            info.labels, info.preprocessing = manifest.labels, manifest.preprocessing
        except FileNotFoundError as exc:
            info.error = str(exc)
        rows.append(info)
    return rows


oip_router = APIRouter(
    prefix="/v2", tags=["open inference protocol v2 (async)"], dependencies=[Depends(require_api_key)]
)


@oip_router.post(
    "/models/{model_name}/infer",
    status_code=202,
    response_model=OIPAccepted,
    responses={
        404: {"description": "unknown model"},
        422: {"description": "wrong shape"},
        429: {"description": "backlog over its bound"},
    },
)
async def oip_infer(
    model_name: str,
    body: OIPInferRequest,
    request: Request,
    response: Response,
    state: StateDep,
    producer: ProducerDep,
    idempotency_key: IdempotencyKey = None,
) -> OIPAccepted:
    """KServe Open Inference Protocol v2 request body, answered asynchronously: 202 + request id onto the same
    queue as ``POST /inference``. ``inputs[0].data`` is the flat (row-major) tensor of ``shape``
    ([C, H, W] or [1, C, H, W])."""
    if model_name not in state.registry.models:
        raise reject("unknown", "unknown_model", 404, f"Unknown model {model_name!r}. Choose one of: "
                     f"{', '.join(sorted(state.registry.models))}")
    tensor = body.inputs[0]
    count = 1
    for dim in tensor.shape:
        if dim < 1:
            raise reject(
                model_name, "invalid_input", 422, f"inputs[0].shape {tensor.shape} has a dimension < 1"
            )
        count *= dim
    if count != len(tensor.data):
        raise reject(
            model_name,
            "invalid_input",
            422,
            f"inputs[0].shape {tensor.shape} needs {count} values, data has {len(tensor.data)}",
        )
    try:
        import numpy as np

        nested = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape).tolist()
    except (ValueError, TypeError) as exc:
        raise reject(
            model_name, "invalid_input", 422, f"inputs[0].data is not numeric: {str(exc)[:200]}"
        ) from exc
    params = body.parameters
    try:
        top_k = int(params.get("top_k", 5))
        ttl_s = float(params["ttl_s"]) if params.get("ttl_s") is not None else None
    except (TypeError, ValueError) as exc:
        raise reject(model_name, "invalid_input", 422, f"parameters: {exc}") from exc
    if top_k < 1 or (ttl_s is not None and not ttl_s > 0):
        raise reject(model_name, "invalid_input", 422, "parameters.top_k must be >= 1 and ttl_s > 0")
    callback = params.get("callback_url")
    request_id, _, _ = await accept_idempotent(
        state,
        producer,
        request,
        idempotency_key,
        model_name=model_name,
        data=nested,
        top_k=top_k,
        callback_url=str(callback) if callback is not None else None,
        ttl_s=ttl_s,
    )
    url = status_url(request, request_id)
    response.headers["Location"] = url
    return OIPAccepted(id=body.id, request_id=request_id, model_name=model_name, status_url=url)


health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@health_router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(state: StateDep) -> Any:
    """Ready when the broker accepts connections and the results cache has caught up."""
    reachable = await run_in_threadpool(broker_reachable, state.settings)
    pending, oldest = state.store.backlog()
    detail = {
        "broker_reachable": reachable,
        "results_caught_up": state.reader.caught_up.is_set(),
        "pending": pending,
        "oldest_pending_age_s": round(oldest, 3),
    }
    ok = reachable and state.reader.caught_up.is_set()
    return JSONResponse(
        Health(status="ready" if ok else "not ready", detail=detail).model_dump(),
        status_code=200 if ok else 503,
    )


metrics_router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])


@metrics_router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus text format (inference_requests_received_total, inference_requests_rejected_total, ...)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------------------------------- app
class BodyLimitMiddleware:
    """413 for bodies over ``max_body_bytes``: by Content-Length when given, by counting chunks otherwise."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                return await self._reject(scope, receive, send, length.decode(errors="replace"))
            return await self.app(scope, receive, send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._reject(scope, receive, send, f">{self.max_bytes}")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send, size: str) -> None:
        metrics.REQUESTS_REJECTED.labels("unknown", "too_large").inc()
        response = JSONResponse(
            {
                "detail": f"request body of {size} bytes is over the limit of {self.max_bytes} "
                "bytes (INFERENCE_MAX_BODY_BYTES)"
            },
            status_code=413,
        )
        await response(scope, receive, send)


def create_app(
    settings: Settings | None = None, registry: Registry | None = None, start_kafka: bool = True
) -> FastAPI:
    """Build the app. ``start_kafka=False`` skips the results reader (for tests that override ProducerDep)."""
    settings = settings or get_settings()
    registry = registry or load_registry(settings.model_registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ServiceState(settings, registry)
        app.state.service = state
        if start_kafka:
            state.reader.start()
        try:
            yield
        finally:
            state.reader.stop()
            state.producer.close()

    app = FastAPI(
        title="Async inference service",
        version="0.1.0",
        lifespan=lifespan,
        description="Queue inference requests on Kafka; batching workers answer them. "
        "POST returns 202 + a request id; GET the status URL for the result.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    for router in (inference_router, models_router, oip_router, health_router, metrics_router):
        app.include_router(router)
    return app


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Async inference API (settings from INFERENCE_* variables).", add_help=add_help
    )
    parser.add_argument("--host", default=None, help="bind address (default: settings.api_host, 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: settings.api_port, 8000)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    app = create_app(settings)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)
    return {"host": host, "port": port}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
