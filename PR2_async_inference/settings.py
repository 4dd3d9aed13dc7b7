"""One place for every setting of the async inference service (API, worker, compose, k8s, tests).

Read from the environment with the prefix ``INFERENCE_`` (``INFERENCE_KAFKA_BOOTSTRAP_SERVERS=kafka:9092``).
The API and the worker read only :func:`get_settings`, never ``os.environ`` directly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Docker image built by ``PR2_async_inference/Dockerfile``; used by docker-compose.yaml and PR1's manifests.
IMAGE_NAME = "inference-service:0.1.0"
#: Registry shipped beside this file.
DEFAULT_REGISTRY = Path(__file__).resolve().parent / "model_registry.yaml"
#: The brokers the clients know: Apache Kafka and Tansu.
BrokerKind = Literal["kafka", "tansu"]
#: The longest ``GET /inference/{id}?wait=S`` holds a connection (long polling), in seconds.
MAX_STATUS_WAIT_S = 60.0


class Settings(BaseSettings):
    """Service settings; every field can be set as ``INFERENCE_<FIELD_NAME>``."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    requests_topic: str = "inference-requests"
    requests_partitions: int = Field(6, ge=1)
    results_topic: str = "inference-results"
    results_partitions: int = Field(3, ge=1)
    dlq_topic: str = "inference-dlq"
    dlq_partitions: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    worker_group: str = "inference-workers"
    # Which broker the clients talk to: "kafka" (Apache Kafka, as docker-compose and the manifests deploy) or
    # "tansu" (the Kafka-protocol broker of the local stack and the tests). It picks the client settings only
    # one of them needs (see PR2_async_inference/messaging/clients.py).
    broker_kind: BrokerKind = "kafka"
    # 6 s is the shortest session Apache Kafka accepts by default (group.min.session.timeout.ms): a killed
    # worker's partitions move to the others within it. Tansu answers a group join after session_timeout/2,
    # so joins there take ~3 s.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_records: int = Field(64, ge=1)
    poll_timeout_ms: int = Field(200, ge=1, le=1000)
    # The longest a fetch waits on the broker for new records. Apache Kafka answers a waiting fetch as soon
    # as data arrives, so its default of 500 ms costs no latency there. Tansu (the local/test broker) answers
    # only at check points spread over the wait, which makes it a polling interval: local_stack.py lowers it
    # (see there).
    fetch_max_wait_ms: int = Field(500, ge=1, le=500)
    # How far back (seconds) a (re)started API replica reads the results topic to rebuild its cache.
    results_lookback_s: float = 3600.0

    # Ports
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    worker_metrics_port: int = 9100

    # Models and batching
    model_registry: Path = DEFAULT_REGISTRY
    max_batch_size: int = Field(16, ge=1)
    max_batch_delay_ms: float = Field(10.0, ge=0)
    # Run a partial batch at once when the broker holds no more requests for this worker (consumer lag 0):
    # at low load nothing would join it, so waiting max_batch_delay_ms would only add latency. Under load
    # the lag is above 0 and batches still fill up to max_batch_size or max_batch_delay_ms.
    adaptive_batching: bool = True
    torch_threads: int | None = None
    # ONNX Runtime's idle intra-op threads spin-wait by default. Off in the worker: between batches that spinning
    # burns the CPU the worker's Kafka threads (and, on a shared host, the API and broker) need, and it inflates
    # the CPU utilisation PR1's autoscaler reads. On: each batch starts its threads a little sooner.
    runtime_spinning: bool = False
    max_attempts: int = Field(3, ge=1)
    default_ttl_s: float = Field(300.0, gt=0)
    max_ttl_s: float = Field(3600.0, gt=0)
    max_top_k: int = 20
    # Publish a "running" state when a batch starts. Off by default: a batch's forward pass is short next to a
    # client's wait, so clients rarely see the state, while it costs every request one more record through the
    # broker and every API replica's results reader, produced just as the forward pass starts.
    publish_running: bool = False

    # Backpressure: POST answers 429 when the backlog passes either bound (0 disables that bound).
    backpressure_max_lag: int = Field(10_000, ge=0)
    backpressure_max_age_s: float = Field(60.0, ge=0)
    backpressure_retry_after_s: int = Field(5, ge=1)

    # Access control and callbacks
    api_key: str | None = None
    callback_allowlist: list[str] = Field(default_factory=list, description="host names or host:port allowed")
    # The placeholder signs nothing: with a non-empty allowlist the API and the worker refuse to start on it
    # (callback_security.require_callback_secret).
    callback_hmac_secret: str = "change-me"
    callback_max_attempts: int = Field(4, ge=1)
    callback_backoff_s: float = Field(0.5, gt=0)
    callback_timeout_s: float = Field(5.0, gt=0)

    # Limits
    result_cache_size: int = Field(100_000, ge=1)
    idempotency_cache_size: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests clear the cache with ``get_settings.cache_clear()``)."""
    return Settings()
