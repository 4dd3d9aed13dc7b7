"""The worker's health and metrics: the backlog gauges it sets each loop, and the HTTP server for ``/metrics``
(Prometheus, names in :mod:`PR2_async_inference.metrics`), ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from confluent_kafka import TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from PR2_async_inference import metrics

if TYPE_CHECKING:
    from PR2_async_inference.worker.batching import ModelWorker


def record_backlog(lags: dict[TopicPartition, int], buffered: Iterable[Any]) -> None:
    """Set the consumer-lag gauge per partition and the age of the oldest buffered request."""
    # Drop partitions lost in a rebalance: a stale lag would keep the autoscaler's per-pod sum too high.
    metrics.CONSUMER_LAG.clear()
    for tp, lag in lags.items():
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
    oldest = 0.0
    now = time.time()
    for record in buffered:
        enqueued = dict(record.headers or []).get("enqueued_at")
        if enqueued:
            with contextlib.suppress(ValueError):
                oldest = max(oldest, now - float(enqueued))
    metrics.OLDEST_REQUEST_AGE.set(oldest)


def health_answer(worker: ModelWorker, path: str) -> tuple[bytes, str, int]:
    """(body, content type, status code) of a GET on ``path``."""
    if path.startswith("/metrics"):
        return generate_latest(), CONTENT_TYPE_LATEST, 200
    if path.startswith("/healthz"):
        return b'{"status":"ok"}', "application/json", 200
    if path.startswith("/readyz"):
        ready = worker.assigned.is_set() and not worker.stop_event.is_set()
        info = {"ready": ready, "models": sorted(worker.predictors), "load_errors": worker.load_errors}
        return json.dumps(info).encode(), "application/json", 200 if ready else 503
    return b"not found", "text/plain", 404


def serve_metrics(worker: ModelWorker, host: str, port: int) -> ThreadingHTTPServer:
    """/metrics (Prometheus), /healthz (process up), /readyz (models loaded and partitions assigned), served
    from a daemon thread; stop with ``server.shutdown()``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, ctype, code = health_answer(worker, self.path)
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
