"""Retries and dead letters: a request that fails is re-queued with ``attempt + 1``; after ``max_attempts`` it goes
to the dead-letter topic as it was and gets a final ``failed`` status. Each function returns the produce futures
the caller waits for before it commits."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from PR2_async_inference import metrics
from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.messaging.producer import Producer, send_dead_letter, send_request, send_status
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """The record fields :func:`send_dead_letter` reads, for a request rebuilt from a decoded message."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def retry_or_dead_letter(
    producer: Producer, settings: Settings, m: RequestMessage, error: str, worker_id: str
) -> list[Any]:
    """Re-queue ``m`` with attempt + 1 or, after max_attempts, dead-letter it and publish its final ``failed``."""
    metrics.REQUESTS_FAILED.labels(m.model).inc()
    if m.attempt < settings.max_attempts:
        logger.info("request %s attempt %d failed (%s); re-queueing", m.request_id, m.attempt, error)
        m.attempt += 1
        return [send_request(producer, settings, m)]
    logger.warning("request %s failed %d times; dead-lettering: %s", m.request_id, m.attempt, error)
    dead_letter = RequestRecord(settings.requests_topic, m.request_id.encode(), m.value(), m.headers())
    status = StatusMessage.for_request(m, "failed", worker_id, error=error)
    return [send_dead_letter(producer, settings, dead_letter, error), send_status(producer, settings, status)]


def retry_or_dead_letter_record(
    producer: Producer, settings: Settings, record: Any, error: str, worker_id: str
) -> list[Any]:
    """A record that cannot even be decoded: re-queued as raw bytes with a bumped ``attempt`` header or, after
    max_attempts (or with an unreadable attempt header), dead-lettered with a final ``failed`` status."""
    headers = {k: v for k, v in (record.headers or [])}
    model = headers.get("model", b"?").decode(errors="replace")
    request_id = headers.get("request_id", record.key or b"?").decode(errors="replace")
    metrics.REQUESTS_FAILED.labels(model).inc()
    try:
        attempt = int(headers.get("attempt", b"1"))
    except ValueError:
        attempt = settings.max_attempts
    if attempt < settings.max_attempts:
        headers["attempt"] = str(attempt + 1).encode()
        return [producer.send(settings.requests_topic, key=record.key, value=record.value,
                              headers=list(headers.items()))]
    logger.warning("request %s undecodable after %d attempts; dead-lettering: %s", request_id, attempt, error)
    try:
        created = float(headers.get("enqueued_at", b"0"))
    except ValueError:
        created = 0.0
    status = StatusMessage(request_id=request_id, model_name=model, status="failed", created_at=created,
                           attempt=attempt, error=error, worker=worker_id)
    return [send_dead_letter(producer, settings, record, error), send_status(producer, settings, status)]
