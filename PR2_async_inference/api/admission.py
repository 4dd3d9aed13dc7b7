"""What every accepted request goes through, whichever route it came by: checks against the registry and the
settings, backpressure (429), decoding with the model's manifest, then both records queued on Kafka (202)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from modelops.artifact import Manifest
from modelops.errors import UsageError
from PR2_async_inference import metrics
from PR2_async_inference.api.state import ModelUnavailable, RequestProducer, ServiceState
from PR2_async_inference.callback_security import host_allowed
from PR2_async_inference.codec import decode_input, decode_tensor, image_pixels, open_image
from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.messaging.producer import ProduceError


@dataclass
class Submission:
    """One inference request as a route hands it over."""

    model_name: str
    data: Any  # a base64 image string, a nested list, or an array the route already built
    top_k: int = 5
    callback_url: str | None = None
    ttl_s: float | None = None


@dataclass
class Accepted:
    request_id: str
    deadline: float | None
    replayed: bool = False  # an earlier request with the same Idempotency-Key


def reject(model: str, reason: str, code: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    """Count the refusal (``inference_requests_rejected_total{reason}``) and build its HTTPException."""
    metrics.REQUESTS_REJECTED.labels(model, reason).inc()
    return HTTPException(code, detail=detail, headers=headers)


def unknown_model(state: ServiceState, model_name: str) -> HTTPException:
    choices = ", ".join(sorted(state.registry.models))
    return reject("unknown", "unknown_model", 404, f"Unknown model {model_name!r}. Choose one of: {choices}")


def check_submission(state: ServiceState, sub: Submission) -> None:
    """The checks that need no decoding: model, top_k, ttl_s, callback host. Raises HTTPException."""
    s = state.settings
    if sub.model_name not in state.registry.models:
        raise unknown_model(state, sub.model_name)
    label = sub.model_name
    if sub.top_k > s.max_top_k:
        raise reject(label, "invalid_input", 422, f"parameters.top_k={sub.top_k} is above the maximum {s.max_top_k}")
    if sub.ttl_s is not None and sub.ttl_s > s.max_ttl_s:
        raise reject(label, "invalid_input", 422, f"ttl_s={sub.ttl_s} is above the maximum {s.max_ttl_s}")
    if sub.callback_url is not None and not host_allowed(sub.callback_url, s.callback_allowlist):
        raise reject(
            label,
            "callback_not_allowed",
            422,
            f"callback_url host is not on the allowlist ({', '.join(s.callback_allowlist) or 'empty'}); "
            "set INFERENCE_CALLBACK_ALLOWLIST",
        )


def check_backlog(state: ServiceState, label: str) -> None:
    """429 + Retry-After when the requests not yet final pass either bound of the settings."""
    s = state.settings
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


def model_manifest_or_503(state: ServiceState, label: str) -> Manifest:
    try:
        return state.manifest(label)[1]
    except ModelUnavailable as exc:
        raise reject(label, "model_unavailable", 503, str(exc), headers={"Retry-After": "5"}) from exc


#: A base64 image this short is opened on the event loop, and decoded there too when it has at most
#: INLINE_DECODE_PIXELS pixels: decoding a 224x224 JPEG takes about as long as the hop to a worker thread and
#: back, which it saves from every request's latency. Anything larger, and every nested list, is decoded on a
#: worker thread so that the event loop never waits long.
INLINE_BASE64_CHARS = 256 * 1024
INLINE_DECODE_PIXELS = 512 * 512


async def decode(data: Any, manifest: Manifest) -> np.ndarray:
    """A submission's data -> what travels on the queue (:func:`PR2_async_inference.codec.decode_input`)."""
    if isinstance(data, np.ndarray):
        return await run_in_threadpool(decode_tensor, data, manifest)
    if not isinstance(data, str) or len(data) > INLINE_BASE64_CHARS:
        return await run_in_threadpool(decode_input, data, manifest)
    image = open_image(data)  # the header only
    if image.width * image.height <= INLINE_DECODE_PIXELS:
        return image_pixels(image, manifest)
    return await run_in_threadpool(image_pixels, image, manifest)


def build_records(sub: Submission, tensor: Any, ttl_s: float, idempotency_key: str | None):
    """The requests-topic record and the ``queued`` state of a new request id."""
    request_id = str(uuid.uuid4())
    now = time.time()
    deadline = now + ttl_s
    message = RequestMessage(
        request_id=request_id,
        model=sub.model_name,
        tensor=tensor,
        deadline=deadline,
        enqueued_at=now,
        top_k=sub.top_k,
        callback_url=sub.callback_url,
    )
    queued = StatusMessage(
        request_id=request_id,
        model_name=sub.model_name,
        status="queued",
        created_at=now,
        updated_at=now,
        deadline=deadline,
        idempotency_key=idempotency_key,
        callback_url=sub.callback_url,
    )
    return message, queued


async def queue(
    state: ServiceState, producer: RequestProducer, sub: Submission, idempotency_key: str | None = None
) -> Accepted:
    """Apply backpressure, decode with the model's manifest, queue both records. Raises HTTPException."""
    label = sub.model_name
    check_backlog(state, label)
    manifest = model_manifest_or_503(state, label)
    try:
        tensor = await decode(sub.data, manifest)
    except UsageError as exc:
        raise reject(label, "invalid_input", 422, str(exc)) from exc
    message, queued = build_records(sub, tensor, sub.ttl_s or state.settings.default_ttl_s, idempotency_key)
    try:
        await producer.submit(message, queued)
    except (ProduceError, TimeoutError, asyncio.TimeoutError) as exc:
        raise reject(
            label, "broker_unavailable", 503, f"could not queue the request: {exc}", headers={"Retry-After": "1"}
        ) from exc
    state.store.apply(queued)
    metrics.REQUESTS_RECEIVED.labels(label).inc()
    return Accepted(message.request_id, message.deadline)


async def accept(
    state: ServiceState, producer: RequestProducer, sub: Submission, idempotency_key: str | None = None
) -> Accepted:
    """Check, then queue; a repeated Idempotency-Key returns the first request's id (``replayed``).

    Raises:
        HTTPException: 404 unknown model; 422 bad value; 429 backlog over its bound; 503 broker or model missing.
    """
    check_submission(state, sub)  # a repeat with a bad value is refused like any other request
    if not idempotency_key:
        return await queue(state, producer, sub)
    # Serialises concurrent repeats of one key on this replica; the results topic spreads the key to the others.
    lock = state.idempotency_locks.setdefault(idempotency_key, asyncio.Lock())
    try:
        async with lock:
            existing = state.store.by_idempotency_key(idempotency_key)
            if existing:
                old = state.store.get(existing)
                return Accepted(existing, old.deadline if old else None, replayed=True)
            return await queue(state, producer, sub, idempotency_key)
    finally:
        if not lock.locked():
            state.idempotency_locks.pop(idempotency_key, None)


def status_url(request: Request, request_id: str) -> str:
    """Where ``GET /inference/{id}`` answers for this request, as the client reached this service.

    Built from the base URL rather than ``request.url_for``, which tries every route in turn on each request.
    """
    return f"{request.base_url}inference/{request_id}"
