"""The service's producer: requests, state changes and dead letters.

It runs on librdkafka (``confluent-kafka``), whose network work happens in C threads outside the GIL, so a
send holds neither the event loop nor the GIL for its network round trips (``benchmarks/bench_kafka_hop.py``
times a hop from it to a librdkafka and a kafka-python consumer). The
service's consumers (:mod:`.clients`) run on it too; the topic admin stays on kafka-python.

Every send returns a :class:`concurrent.futures.Future` that holds the record's :class:`Delivered` position
once the broker has acknowledged it (acks=all), or a :class:`ProduceError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, NamedTuple

import confluent_kafka

from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

#: Largest record the producer sends (a float32 input of a few hundred pixels a side fits).
MAX_RECORD_BYTES = 4 * 1024 * 1024


class ProduceError(Exception):
    """The broker did not take a record (refused, unreachable past the delivery timeout, or too large)."""


class Delivered(NamedTuple):
    """Where an acknowledged record landed."""

    topic: str
    partition: int
    offset: int


class Producer:
    """acks=all + idempotence (no duplicates from producer retries), no linger, and a daemon thread that serves
    librdkafka's delivery reports into the futures :meth:`send` returns."""

    def __init__(self, settings: Settings, client_id: str = "inference") -> None:
        self._producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap_servers,
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                # librdkafka's default linger (5 ms) would be added to every request at low load.
                "linger.ms": 0,
                "socket.nagle.disable": True,
                "message.max.bytes": MAX_RECORD_BYTES,
                "request.timeout.ms": 15_000,
                "delivery.timeout.ms": 60_000,
            },
            logger=logging.getLogger("librdkafka"),
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name=f"{client_id}-deliveries", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Future[Delivered]:
        """Queue one record; the future completes when the broker acknowledges it."""
        future: Future[Delivered] = Future()

        def report(err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message) -> None:
            if err is not None:
                future.set_exception(ProduceError(f"{topic}: {err.str()}"))
            else:
                future.set_result(Delivered(msg.topic(), msg.partition(), msg.offset()))

        extra = {} if partition is None else {"partition": partition}
        try:
            self._producer.produce(topic, value=value, key=key, headers=headers or None, on_delivery=report, **extra)
        except (BufferError, confluent_kafka.KafkaException) as exc:  # local queue full, record too large
            future.set_exception(ProduceError(f"{topic}: {exc}"))
        return future

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every queued record; returns how many are still unacknowledged after ``timeout_s``."""
        return self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        left = self.flush(timeout_s)
        if left:
            logger.warning("producer closed with %d records unacknowledged", left)
        self._stop.set()
        self._poller.join(1.0)


def make_producer(settings: Settings, client_id: str = "inference") -> Producer:
    return Producer(settings, client_id)


def send_request(producer: Producer, settings: Settings, message: RequestMessage, *, topic: str | None = None):
    """Produce a request (key = request id)."""
    return producer.send(
        topic or settings.requests_topic,
        key=message.request_id.encode(),
        value=message.value(),
        headers=message.headers(),
    )


def send_status(producer: Producer, settings: Settings, status: StatusMessage) -> Future[Delivered]:
    """Produce a state change onto the results topic (key = request id: one request's states stay ordered)."""
    return producer.send(settings.results_topic, key=status.request_id.encode(), value=status.to_bytes())


def send_dead_letter(producer: Producer, settings: Settings, record: Any, error: str) -> Future[Delivered]:
    """Produce ``record`` (anything with topic, key, value, headers) onto the dead-letter topic as it was, plus
    ``error``, ``failed_at`` and ``source_topic`` headers."""
    headers = [(k, v) for k, v in (record.headers or []) if k not in ("error", "failed_at")]
    headers += [
        ("error", error[:2000].encode()),
        ("failed_at", repr(time.time()).encode()),
        ("source_topic", str(record.topic).encode()),
    ]
    return producer.send(settings.dlq_topic, key=record.key, value=record.value, headers=headers)


def wait_all(futures: Iterable[Future], timeout_s: float = 30.0) -> None:
    """Wait for every produce future; raises the first error (the caller must not commit then)."""
    for future in futures:
        future.result(timeout=timeout_s)


def as_asyncio(future: Future, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """A produce future awaitable in ``loop`` without blocking a thread."""
    return asyncio.wrap_future(future, loop=loop)
