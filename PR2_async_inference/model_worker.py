"""The inference worker: a consumer-group member that batches requests per model and publishes results.

    python PR2_async_inference/model_worker.py                 # settings from INFERENCE_* variables
    python PR2_async_inference/model_worker.py --metrics-port 9101

Loop: poll (<= poll_timeout_ms) -> gather records until one model has ``max_batch_size`` requests or the
first buffered request waited ``max_batch_delay_ms`` -> per model: expired requests are reported ``expired``
and never run, the rest run in batches through :func:`modelops.artifact.load_artifact` predictors -> results
are produced (acks=all) -> only then the consumed offsets are committed (at-least-once; a redelivered request
only repeats a result keyed by the same request id). A request that raises is re-queued with ``attempt + 1``
up to ``max_attempts``, then goes to the dead-letter topic and gets a final ``failed`` status; the worker
keeps going.
SIGTERM: finish the current batch, commit, leave the group.

Metrics (names in :mod:`metrics`) and ``/healthz`` ``/readyz`` are served on ``worker_metrics_port``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch
from kafka import TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelops.artifact import Predictor, load_artifact
from PR2_async_inference import metrics
from PR2_async_inference.callback_security import host_allowed, sign
from PR2_async_inference.kafka_queue_service import (
    LoggingRebalanceListener,
    RequestMessage,
    StatusMessage,
    consumer_lag,
    ensure_topics,
    make_producer,
    make_worker_consumer,
    send_dead_letter,
    send_request,
    send_status,
    wait_all,
)
from PR2_async_inference.registry import Registry, load_registry, model_input, top_k
from PR2_async_inference.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class CallbackSender:
    """POSTs final results to callback URLs, signed, retried with exponential back-off, in a small pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback")

    def submit(self, url: str, status: StatusMessage) -> None:
        if not host_allowed(url, self.settings.callback_allowlist):
            logger.warning("callback host of %s not on the allowlist; not calling it", url)
            return
        self.pool.submit(self._deliver, url, status.to_bytes())

    def _deliver(self, url: str, body: bytes) -> bool:
        import httpx

        s = self.settings
        delay = s.callback_backoff_s
        for attempt in range(1, s.callback_max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Inference-Timestamp": timestamp,
                "X-Inference-Signature": "sha256=" + sign(body, s.callback_hmac_secret, timestamp),
            }
            try:
                response = httpx.post(
                    url, content=body, headers=headers, timeout=s.callback_timeout_s, follow_redirects=False
                )
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = str(exc)
            logger.info("callback %s attempt %d/%d failed: %s", url, attempt, s.callback_max_attempts, reason)
            if attempt < s.callback_max_attempts:
                time.sleep(delay)
                delay *= 2
        return False

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)


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
        self.consumer = None
        self.producer = None
        self.callbacks = CallbackSender(self.settings)
        self.batches_run = 0

    # ------------------------------------------------------------------ models
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
        for name, spec in self.registry.models.items():
            path = spec.resolve()
            if path is None:
                self.load_errors[name] = f"artifact for model {name!r} not found: {spec.artifact}"
                logger.warning(self.load_errors[name])
                continue
            try:
                # ONNX Runtime's idle threads spin by default: that burns CPU the worker's Kafka threads need
                # and inflates the CPU utilisation PR1's autoscaler reads.
                predictor = load_artifact(path, threads=self.settings.torch_threads,
                                          ort_session_config={"session.intra_op.allow_spinning": "0"})
                example = torch.zeros(1, *predictor.input_shape)
                predictor(example)  # warm-up: first call allocates
                self.predictors[name] = predictor
                logger.info("loaded model %s from %s (%s)", name, path, predictor.backend)
            except Exception as exc:
                self.load_errors[name] = f"cannot load {path}: {exc}"
                logger.error(self.load_errors[name])

    # ------------------------------------------------------------------ kafka
    def connect(self) -> None:
        ensure_topics(self.settings)
        self.producer = make_producer(self.settings, client_id=f"worker-{self.worker_id}")
        listener = LoggingRebalanceListener(
            on_revoke=self._on_revoke, on_assign=lambda _: self.assigned.set()
        )
        self.consumer = make_worker_consumer(self.settings, listener, client_id=f"worker-{self.worker_id}")
        self._buffer: list[Any] = []
        self._caught_up = False

    def _on_revoke(self, revoked: list[TopicPartition]) -> None:
        # Called inside poll() before the rebalance completes: finish what we hold and commit while our
        # generation is still valid, so the next owner does not repeat it.
        if self._buffer:
            logger.info(
                "rebalance: finishing %d buffered requests before giving up partitions", len(self._buffer)
            )
            self._process(self._buffer)
            self._buffer = []

    # ------------------------------------------------------------------ main loop
    def run(self, max_seconds: float | None = None) -> None:
        s = self.settings
        started = time.monotonic()
        first_at: float | None = None
        try:
            while not self.stop_event.is_set():
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                timeout_ms = s.poll_timeout_ms
                if self._buffer and first_at is not None:
                    wait = min(self.batching(m)[1] for m in self._buffer_models()) - (
                        time.monotonic() - first_at
                    )
                    timeout_ms = int(max(0.0, min(wait * 1000, s.poll_timeout_ms)))
                room = max(1, s.max_poll_records - len(self._buffer))
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
                for records in polled.values():
                    self._buffer.extend(records)
                if self._buffer and first_at is None:
                    first_at = time.monotonic()
                self._update_gauges()
                if self._buffer and self._should_flush(first_at):
                    self._process(self._buffer)
                    self._buffer = []
                    first_at = None
            if self._buffer:
                self._process(self._buffer)
                self._buffer = []
        finally:
            self.close()

    def _buffer_models(self) -> set[str]:
        return {dict(r.headers or []).get("model", b"").decode(errors="replace") for r in self._buffer}

    def _should_flush(self, first_at: float | None) -> bool:
        if len(self._buffer) >= self.settings.max_poll_records or self.stop_event.is_set():
            return True
        if self.settings.adaptive_batching and self._caught_up:
            return True  # nothing else is queued for us: waiting would only add latency
        counts: dict[str, int] = {}
        for record in self._buffer:
            model = dict(record.headers or []).get("model", b"").decode(errors="replace")
            counts[model] = counts.get(model, 0) + 1
        waited = time.monotonic() - (first_at or time.monotonic())
        return any(n >= self.batching(m)[0] or waited >= self.batching(m)[1] for m, n in counts.items())

    def _update_gauges(self) -> None:
        # Drop partitions lost in a rebalance: a stale lag would keep the autoscaler's per-pod sum too high.
        metrics.CONSUMER_LAG.clear()
        lags = consumer_lag(self.consumer)
        for tp, lag in lags.items():
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        # Caught up = every assigned partition's position is at the high-water mark of its last fetch.
        assignment = self.consumer.assignment()
        self._caught_up = bool(assignment) and len(lags) == len(assignment) and not any(lags.values())
        oldest = 0.0
        now = time.time()
        for record in self._buffer:
            enqueued = dict(record.headers or []).get("enqueued_at")
            if enqueued:
                with contextlib.suppress(ValueError):
                    oldest = max(oldest, now - float(enqueued))
        metrics.OLDEST_REQUEST_AGE.set(oldest)

    # ------------------------------------------------------------------ processing
    def _process(self, records: list[Any]) -> None:
        """Answer every record, wait for the produced results' acks, then commit. On a produce failure the
        partitions are rewound to the first unanswered record so nothing is lost."""
        futures: list[Any] = []
        finals: list[tuple[str, StatusMessage]] = []
        by_model: dict[str, list[RequestMessage]] = {}
        for record in records:
            try:
                message = RequestMessage.from_record(record)
            except ValueError as exc:
                futures += self._fail_record(record, f"malformed request: {exc}")
                continue
            by_model.setdefault(message.model, []).append(message)
        for model, messages in by_model.items():
            now = time.time()
            live = []
            for m in messages:
                if m.deadline <= now:
                    metrics.REQUESTS_EXPIRED.labels(model).inc()
                    status = self._status(
                        m,
                        "expired",
                        error=f"deadline passed {now - m.deadline:.3f} s before "
                        "the request was picked up; not run",
                    )
                    futures.append(send_status(self.producer, self.settings, status))
                    finals.append((m.callback_url or "", status))
                else:
                    live.append(m)
            size, _ = self.batching(model)
            for start in range(0, len(live), size):
                futures += self._run_batch(model, live[start : start + size], finals)
        try:
            wait_all(futures, timeout_s=60)
            self.consumer.commit()
        except Exception as exc:
            logger.error("could not deliver results or commit (%s); rewinding for redelivery", exc)
            self._rewind(records)
            return
        for url, status in finals:
            if url:
                self.callbacks.submit(url, status)

    def _rewind(self, records: list[Any]) -> None:
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        for tp, offset in first.items():
            try:
                self.consumer.seek(tp, offset)
            except Exception as exc:  # partition no longer ours: its next owner re-reads from the commit
                logger.info("cannot rewind %s: %s", tp, exc)

    def _status(self, m: RequestMessage, status: str, **fields: Any) -> StatusMessage:
        return StatusMessage(
            request_id=m.request_id,
            model_name=m.model,
            status=status,
            created_at=m.enqueued_at,
            deadline=m.deadline,
            attempt=m.attempt,
            worker=self.worker_id,
            callback_url=m.callback_url,
            **fields,
        )

    def _run_batch(
        self, model: str, batch: list[RequestMessage], finals: list[tuple[str, StatusMessage]]
    ) -> list[Any]:
        futures: list[Any] = []
        if not batch:
            return futures
        start_wall = time.time()
        if self.settings.publish_running:
            for m in batch:
                futures.append(send_status(self.producer, self.settings, self._status(m, "running")))
        for m in batch:
            metrics.QUEUE_TIME.labels(model).observe(max(0.0, start_wall - m.enqueued_at))
        predictor = self.predictors.get(model)
        if predictor is None:
            error = self.load_errors.get(model) or f"model {model!r} is not in this worker's registry"
            for m in batch:
                futures += self._fail(m, error)
            return futures
        try:
            outputs, seconds = self._forward(predictor, [m.tensor for m in batch])
            metrics.BATCH_SIZE.labels(model).observe(len(batch))
            metrics.LATENCY.labels(model).observe(seconds)
            self.batches_run += 1
            results = [(m, outputs[i], None) for i, m in enumerate(batch)]
            batch_size = len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return futures + self._fail(batch[0], f"{type(exc).__name__}: {exc}")
            # Isolate the bad request(s): one poison input must not fail its neighbours.
            logger.warning(
                "batch of %d for %s failed (%s); running its requests one by one", len(batch), model, exc
            )
            results, batch_size, seconds = [], 1, 0.0
            for m in batch:
                try:
                    out, secs = self._forward(predictor, [m.tensor])
                    metrics.BATCH_SIZE.labels(model).observe(1)
                    metrics.LATENCY.labels(model).observe(secs)
                    results.append((m, out[0], None))
                    seconds = secs
                except Exception as single_exc:
                    results.append((m, None, f"{type(single_exc).__name__}: {single_exc}"))
        labels = predictor.manifest.labels
        for m, logits, error in results:
            if error is not None:
                futures += self._fail(m, error)
                continue
            status = self._status(
                m,
                "succeeded",
                result=top_k(logits, labels, m.top_k),
                batch_size=batch_size,
                queue_time_s=round(start_wall - m.enqueued_at, 6),
                inference_time_s=round(seconds, 6),
            )
            metrics.REQUESTS_PROCESSED.labels(model).inc()
            futures.append(send_status(self.producer, self.settings, status))
            finals.append((m.callback_url or "", status))
        return futures

    @staticmethod
    def _forward(predictor: Predictor, tensors: list[np.ndarray]) -> tuple[np.ndarray, float]:
        batch = torch.from_numpy(np.stack([model_input(t, predictor.manifest) for t in tensors]))
        predictor.check_input(batch)
        t0 = time.perf_counter()
        logits = predictor(batch)
        seconds = time.perf_counter() - t0
        out = logits.detach().float().cpu().numpy()
        if out.shape[0] != len(tensors) or not np.isfinite(out).all():
            raise ValueError(f"model returned {out.shape} with non-finite values or a wrong batch dimension")
        return out, seconds

    def _fail(self, m: RequestMessage, error: str) -> list[Any]:
        """Retry (re-queue with attempt + 1) or, after max_attempts, dead-letter + final ``failed``."""
        metrics.REQUESTS_FAILED.labels(m.model).inc()
        if m.attempt < self.settings.max_attempts:
            logger.info("request %s attempt %d failed (%s); re-queueing", m.request_id, m.attempt, error)
            m.attempt += 1
            return [send_request(self.producer, self.settings, m)]
        logger.warning("request %s failed %d times; dead-lettering: %s", m.request_id, m.attempt, error)
        retry = RequestMessage(**{**m.__dict__, "errors": []})
        record = _Record(self.settings.requests_topic, m.request_id.encode(), retry.value(), retry.headers())
        status = self._status(m, "failed", error=error)
        return [
            send_dead_letter(self.producer, self.settings, record, error),
            send_status(self.producer, self.settings, status),
        ]

    def _fail_record(self, record: Any, error: str) -> list[Any]:
        """A record that cannot even be decoded: retried as raw bytes with a bumped attempt header."""
        headers = {k: v for k, v in (record.headers or [])}
        model = headers.get("model", b"?").decode(errors="replace")
        request_id = headers.get("request_id", record.key or b"?").decode(errors="replace")
        metrics.REQUESTS_FAILED.labels(model).inc()
        try:
            attempt = int(headers.get("attempt", b"1"))
        except ValueError:
            attempt = self.settings.max_attempts
        if attempt < self.settings.max_attempts:
            headers["attempt"] = str(attempt + 1).encode()
            return [
                self.producer.send(
                    self.settings.requests_topic,
                    key=record.key,
                    value=record.value,
                    headers=list(headers.items()),
                )
            ]
        logger.warning(
            "request %s undecodable after %d attempts; dead-lettering: %s", request_id, attempt, error
        )
        futures = [send_dead_letter(self.producer, self.settings, record, error)]
        try:
            created = float(headers.get("enqueued_at", b"0"))
        except ValueError:
            created = 0.0
        status = StatusMessage(
            request_id=request_id,
            model_name=model,
            status="failed",
            created_at=created,
            attempt=attempt,
            error=error,
            worker=self.worker_id,
        )
        futures.append(send_status(self.producer, self.settings, status))
        return futures

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()  # leaves the group: partitions move to the other workers at once
            self.consumer = None
        if self.producer is not None:
            self.producer.flush(30)
            self.producer.close(10)
            self.producer = None
        self.callbacks.close()


class _Record:
    """The minimal record shape send_dead_letter needs, for messages rebuilt in memory."""

    def __init__(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.topic, self.key, self.value, self.headers = topic, key, value, headers


def serve_metrics(worker: ModelWorker, host: str, port: int) -> ThreadingHTTPServer:
    """/metrics (Prometheus), /healthz (process up), /readyz (models loaded and partitions assigned)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                body, ctype, code = b'{"status":"ok"}', "application/json", 200
            elif self.path.startswith("/readyz"):
                ready = worker.assigned.is_set() and not worker.stop_event.is_set()
                info = {
                    "ready": ready,
                    "models": sorted(worker.predictors),
                    "load_errors": worker.load_errors,
                }
                body, ctype, code = json.dumps(info).encode(), "application/json", 200 if ready else 503
            else:
                body, ctype, code = b"not found", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet: Prometheus scrapes every few seconds
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Kafka inference worker (settings from INFERENCE_* variables).", add_help=add_help
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="metrics bind address (default: 0.0.0.0)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="metrics port (default: settings.worker_metrics_port, 9100)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this long (default: run forever)"
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    worker = ModelWorker(settings)
    server = serve_metrics(worker, args.metrics_host, args.metrics_port or settings.worker_metrics_port)

    def on_sigterm(signum, frame):
        logger.info("SIGTERM: finishing the current batch, committing, leaving the group")
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    worker.load_models()
    worker.connect()
    try:
        worker.run(args.max_seconds)
    finally:
        server.shutdown()
    return {"worker": worker.worker_id, "batches_run": worker.batches_run}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
