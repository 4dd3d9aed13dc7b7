"""The Kafka layer of the async inference service: topics, message formats, producer, consumers.

Three topics (names and partition counts in :mod:`settings`):

- requests (key = request id): the value is the preprocessed input sample as raw float32 bytes (C, H, W);
  headers carry ``request_id``, ``model``, ``deadline``, ``attempt``, ``enqueued_at``, ``shape``, ``top_k``
  and ``callback_url``. Binary values keep a 224x224 image at 600 KB instead of several MB of JSON.
- results (key = request id): JSON :class:`StatusMessage` records. The API publishes ``queued`` when it
  accepts
  a request, the worker ``running`` when a batch starts and exactly one final state
  (``succeeded | failed | expired``) per request. Every API replica reads the whole topic (no group) into a
  bounded cache, so any replica answers ``GET /inference/{id}``.
- dead-letter (key = request id): the request as it was, plus ``error`` and ``failed_at`` headers.

Client settings work against Apache Kafka and against Tansu (the test broker): offsets start at
``earliest``, lag comes from the fetch high-water mark (Tansu's ListOffsets(LATEST) answers too low),
and joins use a short session timeout (Tansu answers a join after session_timeout/2).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel, Field

from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

Status = Literal["queued", "running", "succeeded", "failed", "expired"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "expired"})
STATUS_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "expired": 2}


# ---------------------------------------------------------------------------------------------- messages
@dataclass
class RequestMessage:
    """One inference request as it travels on the requests topic."""

    request_id: str
    model: str
    tensor: np.ndarray  # one sample (C, H, W): float32 model input, or uint8 image pixels (4x fewer bytes)
    deadline: float  # unix seconds; past it the request is reported expired, never run
    enqueued_at: float
    attempt: int = 1
    top_k: int = 5
    callback_url: str | None = None
    # Filled in by the consumer: where the record came from.
    topic: str = ""
    partition: int = -1
    offset: int = -1
    errors: list[str] = field(default_factory=list)

    def headers(self) -> list[tuple[str, bytes]]:
        pairs = {
            "request_id": self.request_id,
            "model": self.model,
            "deadline": repr(self.deadline),
            "attempt": str(self.attempt),
            "enqueued_at": repr(self.enqueued_at),
            "shape": ",".join(str(d) for d in self.tensor.shape),
            "dtype": self.dtype,
            "top_k": str(self.top_k),
        }
        if self.callback_url:
            pairs["callback_url"] = self.callback_url
        return [(k, v.encode()) for k, v in pairs.items()]

    @property
    def dtype(self) -> str:
        return "uint8" if self.tensor.dtype == np.uint8 else "float32"

    def value(self) -> bytes:
        return np.ascontiguousarray(self.tensor, dtype=self.dtype).tobytes()

    @classmethod
    def from_record(cls, record: Any) -> RequestMessage:
        """Decode a consumed record. Raises ValueError for a malformed one (a poison message)."""
        headers = {k: v.decode() for k, v in (record.headers or [])}
        try:
            shape = tuple(int(d) for d in headers["shape"].split(",") if d)
            dtype = headers.get("dtype", "float32")
            if dtype not in ("float32", "uint8"):
                raise ValueError(f"unsupported dtype header {dtype!r} (float32 or uint8)")
            tensor = np.frombuffer(record.value, dtype=dtype)
            if tensor.size != int(np.prod(shape)):
                raise ValueError(
                    f"payload holds {tensor.size} {dtype} values, header shape {shape} needs {int(np.prod(shape))}"
                )
            return cls(
                request_id=headers["request_id"],
                model=headers["model"],
                tensor=tensor.reshape(shape),
                deadline=float(headers["deadline"]),
                enqueued_at=float(headers["enqueued_at"]),
                attempt=int(headers.get("attempt", "1")),
                top_k=int(headers.get("top_k", "5")),
                callback_url=headers.get("callback_url"),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except KeyError as exc:
            raise ValueError(f"missing header {exc.args[0]!r}") from exc


def raw_headers(record: Any) -> dict[str, str]:
    """A record's headers as a str dict (undecodable values replaced)."""
    return {k: v.decode(errors="replace") for k, v in (record.headers or [])}


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class StatusMessage(BaseModel):
    """One state change of a request; the value of a results-topic record."""

    request_id: str
    model_name: str
    status: Status
    created_at: float = Field(description="when the API accepted the request (unix seconds)")
    updated_at: float = Field(default_factory=time.time)
    deadline: float | None = None
    attempt: int = 1
    result: list[Prediction] | None = None
    error: str | None = None
    batch_size: int | None = None
    queue_time_s: float | None = None
    inference_time_s: float | None = None
    worker: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> StatusMessage:
        return cls.model_validate_json(value)


# ---------------------------------------------------------------------------------------------- admin
def bootstrap_list(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]


def broker_reachable(settings: Settings, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to one bootstrap server opens (readiness, not a full protocol check)."""
    for server in bootstrap_list(settings):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
                return True
        except OSError:
            continue
    return False


def topic_specs(settings: Settings) -> dict[str, int]:
    return {
        settings.requests_topic: settings.requests_partitions,
        settings.results_topic: settings.results_partitions,
        settings.dlq_topic: settings.dlq_partitions,
    }


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create the three topics with their partition counts; existing topics are left as they are.

    Returns {topic: partitions} as the broker reports them after creation.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_list(settings),
                client_id="inference-admin",
                request_timeout_ms=10_000,
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            logger.info("broker not ready yet (%s); retrying", exc)
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, settings.replication_factor)
            for name, partitions in topic_specs(settings).items()
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted, timeout_ms=10_000)
                logger.info("created topics %s", ", ".join(t.name for t in wanted))
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return wait_for_topics(settings, deadline - time.monotonic())


def wait_for_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Block until the broker's metadata lists every topic; returns {topic: partitions}."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_list(settings), client_id="inference-topic-check")
    try:
        deadline = time.monotonic() + max(timeout_s, 1.0)
        while True:
            counts = {t: len(consumer.partitions_for_topic(t) or ()) for t in topic_specs(settings)}
            if all(counts.values()) or time.monotonic() > deadline:
                missing = [t for t, n in counts.items() if not n]
                if missing:
                    raise KafkaError(f"topics {missing} not visible on {settings.kafka_bootstrap_servers}")
                return counts
            time.sleep(0.2)
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------- producer
def make_producer(settings: Settings, client_id: str = "inference") -> KafkaProducer:
    """acks=all + idempotence (no duplicates from producer retries). Falls back, with a logged reason, when
    the broker refuses idempotent producers."""
    common = dict(
        bootstrap_servers=bootstrap_list(settings),
        client_id=client_id,
        acks="all",
        linger_ms=0,  # measured on Tansu: 1 ms of linger added ~1.5 ms to every acknowledged produce
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=15_000,
        retries=2147483647,
        delivery_timeout_ms=60_000,
    )
    try:
        return KafkaProducer(enable_idempotence=True, **common)
    except KafkaError as exc:  # pragma: no cover - depends on the broker
        logger.warning("broker refused an idempotent producer (%s); using acks=all without idempotence", exc)
        return KafkaProducer(enable_idempotence=False, **common)


def send_request(producer: KafkaProducer, settings: Settings, message: RequestMessage, *, topic: str | None = None):
    """Produce a request (key = request id). Returns kafka-python's future."""
    return producer.send(
        topic or settings.requests_topic,
        key=message.request_id.encode(),
        value=message.value(),
        headers=message.headers(),
    )


def send_status(producer: KafkaProducer, settings: Settings, status: StatusMessage):
    """Produce a state change onto the results topic (key = request id: one request's states stay ordered)."""
    return producer.send(settings.results_topic, key=status.request_id.encode(), value=status.to_bytes())


def send_dead_letter(producer: KafkaProducer, settings: Settings, record: Any, error: str):
    headers = [(k, v) for k, v in (record.headers or []) if k not in ("error", "failed_at")]
    headers += [
        ("error", error[:2000].encode()),
        ("failed_at", repr(time.time()).encode()),
        ("source_topic", str(record.topic).encode()),
    ]
    return producer.send(settings.dlq_topic, key=record.key, value=record.value, headers=headers)


def wait_all(futures: Iterable[Any], timeout_s: float = 30.0) -> None:
    """Wait for every produce future; raises the first error (the caller must not commit then)."""
    for future in futures:
        future.get(timeout=timeout_s)


def as_asyncio(future: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """Bridge a kafka-python produce future into the event loop without blocking a thread."""
    result: asyncio.Future = loop.create_future()

    def ok(value: Any) -> None:
        loop.call_soon_threadsafe(lambda: result.done() or result.set_result(value))

    def err(exc: BaseException) -> None:
        loop.call_soon_threadsafe(lambda: result.done() or result.set_exception(exc))

    future.add_callback(ok)
    future.add_errback(err)
    return result


# ---------------------------------------------------------------------------------------------- consumers
class LoggingRebalanceListener(ConsumerRebalanceListener):
    """Logs assignment and revocation; ``on_revoke`` lets the worker finish and commit its batch first."""

    def __init__(
        self,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        self._on_revoke = on_revoke
        self._on_assign = on_assign

    def on_partitions_revoked(self, revoked):
        logger.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        if self._on_revoke:
            self._on_revoke(list(revoked))

    def on_partitions_assigned(self, assigned):
        logger.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self._on_assign:
            self._on_assign(list(assigned))


def make_worker_consumer(settings: Settings, listener: ConsumerRebalanceListener, client_id: str) -> KafkaConsumer:
    """A group member of ``worker_group`` on the requests topic: manual commits, bounded polls."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_list(settings),
        group_id=settings.worker_group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        # A batch is at most max_poll_records forward passes; five minutes between polls is far beyond that.
        max_poll_interval_ms=300_000,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.subscribe([settings.requests_topic], listener=listener)
    return consumer


def consumer_lag(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Per assigned partition: fetch high-water mark minus position (unknown partitions are skipped)."""
    lags: dict[TopicPartition, int] = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        try:
            position = consumer.position(tp, timeout_ms=100)
        except Exception:  # position unknown right after a rebalance
            continue
        if position is not None:
            lags[tp] = max(0, highwater - position)
    return lags


class ResultsReader:
    """Reads every partition of the results topic (no consumer group) in a daemon thread and hands each
    :class:`StatusMessage` to ``on_status``. Starts from the earliest offset still inside
    ``results_lookback_s`` so a restarted replica rebuilds its cache."""

    def __init__(self, settings: Settings, on_status: Callable[[StatusMessage], None]) -> None:
        self.settings = settings
        self.on_status = on_status
        self.caught_up = threading.Event()
        self.last_poll = 0.0
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="results-reader", daemon=True)

    def start(self) -> ResultsReader:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _consumer(self) -> KafkaConsumer:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_list(s),
            group_id=None,
            client_id="inference-api-results",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_poll_records=2000,
        )
        deadline = time.monotonic() + 60
        partitions = None
        while not partitions and not self._stop.is_set():
            partitions = consumer.partitions_for_topic(s.results_topic)
            if not partitions:
                if time.monotonic() > deadline:
                    raise KafkaError(f"results topic {s.results_topic!r} not found")
                time.sleep(0.5)
        tps = [TopicPartition(s.results_topic, p) for p in sorted(partitions or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        since_ms = int((time.time() - s.results_lookback_s) * 1000)
        try:  # offsets_for_times skips history outside the lookback; brokers that cannot answer -> earliest
            for tp, found in consumer.offsets_for_times({tp: since_ms for tp in tps}).items():
                if found is not None:
                    consumer.seek(tp, found.offset)
        except Exception as exc:
            logger.info("offsets_for_times unsupported (%s); reading results from the beginning", exc)
        return consumer

    @staticmethod
    def _at_end(consumer: KafkaConsumer) -> bool:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None or consumer.position(tp) < highwater:
                return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                consumer = self._consumer()
            except Exception as exc:
                logger.warning("results reader cannot start (%s); retrying", exc)
                self._stop.wait(1.0)
                continue
            try:
                while not self._stop.is_set():
                    batches = consumer.poll(timeout_ms=200)
                    self.last_poll = time.time()
                    for records in batches.values():
                        for record in records:
                            try:
                                status = StatusMessage.from_bytes(record.value)
                            except ValueError as exc:
                                logger.warning(
                                    "skipping malformed result at %s[%d]@%d: %s",
                                    record.topic,
                                    record.partition,
                                    record.offset,
                                    exc,
                                )
                                continue
                            self.messages += 1
                            self.on_status(status)
                    if not self.caught_up.is_set() and self._at_end(consumer):
                        self.caught_up.set()
                        logger.info("results cache rebuilt from %d messages", self.messages)
            except Exception as exc:
                logger.warning("results reader error (%s); reconnecting", exc)
            finally:
                consumer.close()


# ---------------------------------------------------------------------------------------------- command line
def get_args_parser(add_help: bool = True):
    import argparse

    parser = argparse.ArgumentParser(
        description="Kafka admin for the inference service (settings from INFERENCE_*).", add_help=add_help
    )
    parser.add_argument(
        "command",
        choices=["create-topics", "check"],
        help="create-topics: create the requests/results/DLQ topics; check: list them",
    )
    parser.add_argument("--timeout-s", type=float, default=120.0, help="how long to wait for the broker (default: 120)")
    return parser


def main(args) -> dict[str, Any]:
    from PR2_async_inference.settings import get_settings

    settings = get_settings()
    counts = (
        ensure_topics(settings, args.timeout_s)
        if args.command == "create-topics"
        else wait_for_topics(settings, args.timeout_s)
    )
    print(json.dumps({"bootstrap": settings.kafka_bootstrap_servers, "partitions": counts}))
    return counts


if __name__ == "__main__":
    import sys

    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
