"""The worker's batch loop: a consumer-group member that gathers requests per model into batches, answers them
and commits.

Loop: poll (<= poll_timeout_ms) -> gather records until one model has ``max_batch_size`` requests or the first
buffered request waited ``max_batch_delay_ms`` (or, with ``adaptive_batching``, nothing else is queued) -> per
model: expired requests are reported ``expired`` and never run, the rest run in batches -> results are produced
(acks=all) -> only then the consumed offsets are committed (at-least-once; a redelivered request only repeats a
result keyed by the same request id). Failures go through :mod:`PR2_async_inference.worker.retries`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from modelops.artifact import Predictor
from PR2_async_inference import metrics
from PR2_async_inference.codec import top_k
from PR2_async_inference.messaging.admin import ensure_topics
from PR2_async_inference.messaging.clients import (
    WorkerConsumer,
    commit_answered,
    consumer_lag,
    fetched_to_end,
    make_offsets_admin,
    make_worker_consumer,
    next_records,
)
from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.messaging.producer import Producer, make_producer, send_status, wait_all
from PR2_async_inference.registry import Registry, load_registry
from PR2_async_inference.settings import Settings, get_settings
from PR2_async_inference.worker.callbacks import CallbackSender
from PR2_async_inference.worker.health import record_backlog
from PR2_async_inference.worker.inference import load_predictors, predict_batch
from PR2_async_inference.worker.retries import retry_or_dead_letter, retry_or_dead_letter_record

logger = logging.getLogger(__name__)

#: How often the consumer-lag and oldest-request gauges are refreshed (seconds; Prometheus scrapes every 15 s).
LAG_REFRESH_S = 1.0

#: Final states to hand to the callback client once their results are committed: (callback URL or "", status).
Finals = list[tuple[str, StatusMessage]]


def record_model(record: Any) -> str:
    """The ``model`` header of a consumed request record ("" when absent)."""
    return dict(record.headers or []).get("model", b"").decode(errors="replace")


class ModelWorker:
    """Consumes the requests topic as a member of ``worker_group`` and answers requests in batches.

    Args:
        settings: service settings (defaults to :func:`get_settings`).
        registry: the model registry (default: read from ``settings.model_registry``).
        worker_id: name used in logs and results (default: hostname-pid).
    """

    def __init__(
        self, settings: Settings | None = None, registry: Registry | None = None, worker_id: str | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.registry = registry or load_registry(self.settings.model_registry)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.predictors: dict[str, Predictor] = {}
        self.load_errors: dict[str, str] = {}
        self.stop_event = threading.Event()
        self.assigned = threading.Event()
        self.consumer: WorkerConsumer | None = None
        self.producer: Producer | None = None
        self.offsets_admin: AdminClient | None = None  # the lag gauge's end offsets (messaging.clients.end_offsets)
        self.callbacks = CallbackSender(self.settings)
        self.batches_run = 0
        self._buffer: list[Any] = []
        self._caught_up = False
        self._lag_refreshed_at = float("-inf")

    # ------------------------------------------------------------------ set-up
    def batching(self, model: str) -> tuple[int, float]:
        """(max_batch_size, max_batch_delay_s) for a model: an INFERENCE_ setting set explicitly wins over the
        registry entry, which wins over the settings' defaults."""
        s = self.settings
        spec = self.registry.models.get(model)
        explicit = s.model_fields_set
        size = s.max_batch_size
        delay = s.max_batch_delay_ms
        if spec is not None:
            if spec.max_batch_size is not None and "max_batch_size" not in explicit:
                size = spec.max_batch_size
            if spec.max_batch_delay_ms is not None and "max_batch_delay_ms" not in explicit:
                delay = spec.max_batch_delay_ms
        return size, delay / 1000.0

    def load_models(self) -> None:
        """Load every model whose artifact exists; a missing one fails only its own requests."""
        self.predictors, self.load_errors = load_predictors(self.registry, self.settings.torch_threads,
                                                            spinning=self.settings.runtime_spinning)

    def connect(self) -> None:
        ensure_topics(self.settings)
        self.producer = make_producer(self.settings, client_id=f"worker-{self.worker_id}")
        self.offsets_admin = make_offsets_admin(self.settings, client_id=f"worker-{self.worker_id}-offsets")
        self._new_consumer()

    def _new_consumer(self) -> None:
        self.consumer = make_worker_consumer(self.settings, client_id=f"worker-{self.worker_id}",
                                             on_assign=lambda _: self.assigned.set(), on_revoke=self._on_revoke)
        self._buffer = []
        self._caught_up = False
        self._lag_refreshed_at = float("-inf")  # a new assignment: the gauges at the first poll

    def _on_revoke(self, revoked: list[TopicPartition]) -> None:
        # librdkafka calls this inside next_records, on this thread, before the partitions go. The buffered
        # requests are dropped unanswered; their offsets are not committed, so whoever owns the partitions next
        # (this worker included: a new assignment starts at the committed offsets) reads them again.
        if self._buffer:
            logger.info("rebalance: %d buffered requests dropped unanswered, to be read again", len(self._buffer))
            self._buffer = []

    # ------------------------------------------------------------------ main loop
    def run(self, max_seconds: float | None = None) -> None:
        """Poll, batch and answer until ``stop_event`` is set or ``max_seconds`` passed; then answer what is
        buffered and close."""
        started = time.monotonic()
        first_at: float | None = None
        try:
            while not self.stop_event.is_set():
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                room = max(1, self.settings.max_poll_records - len(self._buffer))
                # Read first, then extend: a rebalance inside the read replaces self._buffer (see _on_revoke).
                polled = next_records(self.consumer, room, self._poll_timeout_ms(first_at) / 1000)
                self._buffer.extend(polled)
                if not self._buffer:
                    first_at = None  # nothing held (a rebalance may have dropped the buffer inside poll)
                elif first_at is None:
                    first_at = time.monotonic()
                self._update_gauges()
                if self._buffer and self._should_flush(first_at):
                    self._flush()
                    first_at = None
            if self._buffer:
                self._flush()
        finally:
            self.close()

    def _poll_timeout_ms(self, first_at: float | None) -> int:
        """The poll timeout: poll_timeout_ms, shortened to the time left until the buffer's batch delay ends."""
        timeout_ms = self.settings.poll_timeout_ms
        if self._buffer and first_at is not None:
            delay = min(self.batching(m)[1] for m in self._buffer_models())
            wait = delay - (time.monotonic() - first_at)
            timeout_ms = int(max(0.0, min(wait * 1000, timeout_ms)))
        return timeout_ms

    def _buffer_models(self) -> set[str]:
        return {record_model(r) for r in self._buffer}

    def _should_flush(self, first_at: float | None) -> bool:
        if len(self._buffer) >= self.settings.max_poll_records or self.stop_event.is_set():
            return True
        if self.settings.adaptive_batching and self._caught_up:
            return True  # nothing else is queued for us: waiting would only add latency
        counts: dict[str, int] = {}
        for record in self._buffer:
            model = record_model(record)
            counts[model] = counts.get(model, 0) + 1
        waited = time.monotonic() - (first_at or time.monotonic())
        return any(n >= self.batching(m)[0] or waited >= self.batching(m)[1] for m, n in counts.items())

    def _update_gauges(self) -> None:
        # Caught up = every assigned partition's position is at the high-water mark of its last fetch response:
        # asked on every poll, it costs no request. The lag gauge (what PR1's autoscaler reads) asks the broker
        # for end offsets, a round trip that would otherwise add to every poll: at most every LAG_REFRESH_S.
        self._caught_up = fetched_to_end(self.consumer)
        now = time.monotonic()
        if now - self._lag_refreshed_at >= LAG_REFRESH_S:
            self._lag_refreshed_at = now
            record_backlog(consumer_lag(self.consumer, self.settings.broker_kind, self.offsets_admin), self._buffer)

    def _flush(self) -> None:
        self._process(self._buffer)
        self._buffer = []

    # ------------------------------------------------------------------ processing
    def _process(self, records: list[Any]) -> None:
        """Answer every record, wait for the produced results' acks, then commit. On a produce failure the
        partitions are rewound to the first unanswered record so nothing is lost."""
        futures: list[Any] = []
        finals: Finals = []
        by_model: dict[str, list[RequestMessage]] = {}
        for record in records:
            try:
                message = RequestMessage.from_record(record)
            except ValueError as exc:
                futures += retry_or_dead_letter_record(
                    self.producer, self.settings, record, f"malformed request: {exc}", self.worker_id
                )
                continue
            by_model.setdefault(message.model, []).append(message)
        for model, messages in by_model.items():
            live = self._expire(model, messages, futures, finals)
            size, _ = self.batching(model)
            for start in range(0, len(live), size):
                futures += self._run_batch(model, live[start : start + size], finals)
        try:
            wait_all(futures, timeout_s=60)
            commit_answered(self.consumer, records)
        except Exception as exc:
            logger.error("could not deliver results or commit (%s); rewinding for redelivery", exc)
            self._rewind(records)
            return
        for url, status in finals:
            if url:
                self.callbacks.submit(url, status)

    def _expire(self, model: str, messages: list[RequestMessage], futures: list[Any], finals: Finals) -> list:
        """Report the messages past their deadline ``expired`` (never run); returns the others."""
        now = time.time()
        live = []
        for m in messages:
            if m.deadline > now:
                live.append(m)
                continue
            metrics.REQUESTS_EXPIRED.labels(model).inc()
            error = f"deadline passed {now - m.deadline:.3f} s before the request was picked up; not run"
            status = StatusMessage.for_request(m, "expired", self.worker_id, error=error)
            futures.append(send_status(self.producer, self.settings, status))
            finals.append((m.callback_url or "", status))
        return live

    def _rewind(self, records: list[Any]) -> None:
        first: dict[tuple[str, int], int] = {}
        for r in records:
            first[r.topic, r.partition] = min(first.get((r.topic, r.partition), r.offset), r.offset)
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition, offset)
            try:
                self.consumer.seek(tp)
            except Exception as exc:  # partition no longer ours: its next owner re-reads from the commit
                logger.info("cannot rewind %s: %s", tp, exc)

    def _run_batch(self, model: str, batch: list[RequestMessage], finals: Finals) -> list[Any]:
        """Run one batch of a model; returns the produce futures of its states."""
        futures: list[Any] = []
        if not batch:
            return futures
        start_wall = time.time()
        for m in batch:
            if self.settings.publish_running:
                futures.append(send_status(self.producer, self.settings, StatusMessage.for_request(
                    m, "running", self.worker_id)))
            metrics.QUEUE_TIME.labels(model).observe(max(0.0, start_wall - m.enqueued_at))
        predictor = self.predictors.get(model)
        if predictor is None:
            error = self.load_errors.get(model) or f"model {model!r} is not in this worker's registry"
            for m in batch:
                futures += self._fail(m, error)
            return futures
        outcome = predict_batch(predictor, model, batch)
        if outcome.whole_batch:
            self.batches_run += 1
        for m, logits, error in outcome.results:
            if error is not None:
                futures += self._fail(m, error)
                continue
            status = StatusMessage.for_request(
                m, "succeeded", self.worker_id,
                result=top_k(logits, predictor.manifest.labels, m.top_k),
                batch_size=outcome.batch_size,
                queue_time_s=round(start_wall - m.enqueued_at, 6),
                inference_time_s=round(outcome.seconds, 6),
            )
            metrics.REQUESTS_PROCESSED.labels(model).inc()
            futures.append(send_status(self.producer, self.settings, status))
            finals.append((m.callback_url or "", status))
        return futures

    def _fail(self, m: RequestMessage, error: str) -> list[Any]:
        return retry_or_dead_letter(self.producer, self.settings, m, error, self.worker_id)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()  # leaves the group: partitions move to the other workers at once
            self.consumer = None
        if self.producer is not None:
            self.producer.close(30)
            self.producer = None
        self.callbacks.close()
