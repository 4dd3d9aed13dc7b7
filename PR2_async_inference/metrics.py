"""Prometheus metrics of the API and the worker. Names are defined once here; PR1's
prometheus-adapter rules and HPA manifests use the same names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# API
REQUESTS_RECEIVED = Counter(
    "inference_requests_received", "Requests accepted onto the queue", ["model"]
)  # exported as inference_requests_received_total
REQUESTS_REJECTED = Counter(
    "inference_requests_rejected", "Requests refused before queueing", ["model", "reason"]
)  # inference_requests_rejected_total

# Worker
REQUESTS_PROCESSED = Counter("inference_requests_processed", "Requests answered successfully", ["model"])
REQUESTS_FAILED = Counter(
    "inference_requests_failed", "Request attempts that raised (retried or dead-lettered)", ["model"]
)
REQUESTS_EXPIRED = Counter(
    "inference_requests_expired", "Requests skipped because their deadline passed", ["model"]
)
BATCH_SIZE = Histogram(
    "inference_batch_size",
    "Requests per model forward pass",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
LATENCY = Histogram(
    "inference_latency_seconds",
    "Model forward time per batch",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FORWARD_CPU = Counter(
    "inference_forward_cpu_seconds",
    "Process CPU time (all threads) spent in model forward passes",
    ["model"],
)  # inference_forward_cpu_seconds_total
QUEUE_TIME = Histogram(
    "inference_queue_time_seconds",
    "Time from enqueue to the start of the batch",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CONSUMER_LAG = Gauge(
    "inference_consumer_lag",
    "End offset minus position, per assigned partition",
    ["topic", "partition"],
)
OLDEST_REQUEST_AGE = Gauge(
    "inference_oldest_request_age_seconds", "Age of the oldest request this worker holds but has not finished"
)

# Names as Prometheus exposes them (counters get _total), for manifests and tests.
METRIC_NAMES = {
    "requests_received": "inference_requests_received_total",
    "requests_rejected": "inference_requests_rejected_total",
    "requests_processed": "inference_requests_processed_total",
    "requests_failed": "inference_requests_failed_total",
    "requests_expired": "inference_requests_expired_total",
    "batch_size": "inference_batch_size",
    "latency": "inference_latency_seconds",
    "forward_cpu": "inference_forward_cpu_seconds_total",
    "queue_time": "inference_queue_time_seconds",
    "consumer_lag": "inference_consumer_lag",
    "oldest_request_age": "inference_oldest_request_age_seconds",
}
