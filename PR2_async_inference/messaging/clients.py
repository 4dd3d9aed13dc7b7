"""Producer and consumers of the service's topics.

Client settings that one broker needs are chosen by ``settings.broker_kind`` (``kafka`` for Apache Kafka, the
broker docker-compose and the manifests deploy; ``tansu`` for the Kafka-protocol broker of the local stack
and tests) and say so where they are set. Everything else is the same on both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from PR2_async_inference.messaging.admin import bootstrap_list
from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.settings import BrokerKind, Settings

logger = logging.getLogger(__name__)

#: How long one ListOffsets request for the end offsets may take before the lag is reported unknown.
END_OFFSETS_TIMEOUT_MS = 1000


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
    """Produce ``record`` (anything with topic, key, value, headers) onto the dead-letter topic as it was, plus
    ``error``, ``failed_at`` and ``source_topic`` headers."""
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
    """Logs assignment and revocation and calls ``on_revoke`` / ``on_assign``. kafka-python 3.0.12 runs these
    on its IO thread: they must not block nor call the consumer's blocking methods (commit, poll)."""

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
        # A group that has never committed starts at the first request: requests accepted before any worker
        # joined are served, not skipped.
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        # A batch is at most max_poll_records forward passes; five minutes between polls is far beyond that.
        max_poll_interval_ms=300_000,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        # Room for a full batch of 224x224 images in one fetch (kafka-python's default is 1 MB).
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    consumer.subscribe([settings.requests_topic], listener=listener)
    # Metadata fetched after subscribe, before the first join. kafka-python 3.0.12 builds the snapshot of the
    # subscribed topics' partitions only from metadata that arrives while subscribed; a group leader that joins
    # before such an update assigns with an empty snapshot, then its post-assignment refresh differs from it and
    # it rejoins at once (~100 ms later). That needless second rebalance is where members on Apache Kafka can be
    # left looping on the coordinator lookup (worker.membership replaces such a member). A blocking fetch here
    # makes the first assignment's snapshot the real one.
    consumer.topics()
    return consumer


def end_offsets(consumer: KafkaConsumer, partitions: Iterable[TopicPartition], broker_kind: BrokerKind) -> dict:
    """{partition: offset the next record will get}; partitions whose end is unknown are left out."""
    partitions = list(partitions)
    if broker_kind == "tansu":
        # Tansu's ListOffsets(LATEST) can answer below the partition's end, while the high-water mark its
        # fetch responses carry is right: on Tansu the end comes from the consumer's last fetch (no request).
        ends = {tp: consumer.highwater(tp) for tp in partitions}
    else:
        try:
            ends = consumer.end_offsets(partitions, timeout_ms=END_OFFSETS_TIMEOUT_MS) if partitions else {}
        except KafkaError as exc:
            logger.debug("end offsets unknown (%s)", exc)
            return {}
    return {tp: end for tp, end in ends.items() if end is not None}


def fetched_to_end(consumer: KafkaConsumer) -> bool:
    """True when every assigned partition's position has reached the high-water mark of its last fetch
    response: nothing more is queued for this consumer as of that fetch. Costs no request (the fetch responses
    carry the mark), so it can be asked on every poll; False while any mark or position is unknown."""
    assignment = consumer.assignment()
    if not assignment:
        return False
    for tp in assignment:
        highwater = consumer.highwater(tp)
        try:
            position = consumer.position(tp, timeout_ms=0)
        except Exception:  # position unknown right after a rebalance
            return False
        if highwater is None or position is None or position < highwater:
            return False
    return True


def consumer_lag(consumer: KafkaConsumer, broker_kind: BrokerKind = "kafka") -> dict[TopicPartition, int]:
    """Per assigned partition: end offset minus position (partitions whose end or position is unknown are
    skipped)."""
    lags: dict[TopicPartition, int] = {}
    for tp, end in end_offsets(consumer, consumer.assignment(), broker_kind).items():
        try:
            position = consumer.position(tp, timeout_ms=100)
        except Exception:  # position unknown right after a rebalance
            continue
        if position is not None:
            lags[tp] = max(0, end - position)
    return lags


class ResultsReader:
    """Reads every partition of the results topic (no consumer group) in a daemon thread and hands each
    :class:`StatusMessage` to ``on_status``. Starts from the earliest offset still inside
    ``results_lookback_s`` so a restarted replica rebuilds its cache."""

    def __init__(self, settings: Settings, on_status: Callable[[StatusMessage], None]) -> None:
        self.settings = settings
        self.on_status = on_status
        self.caught_up = threading.Event()
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="results-reader", daemon=True)

    def start(self) -> ResultsReader:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # a reader that never started has no thread to wait for
            self._thread.join(timeout_s)

    def _consumer(self) -> KafkaConsumer:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_list(s),
            group_id=None,
            client_id="inference-api-results",
            enable_auto_commit=False,
            # The reader seeks explicitly; this applies only when its offset has left retention: reread what is
            # left rather than skip to the end.
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

    def _at_end(self, consumer: KafkaConsumer) -> bool:
        assignment = consumer.assignment()
        ends = end_offsets(consumer, assignment, self.settings.broker_kind)
        return len(ends) == len(assignment) and all(consumer.position(tp) >= end for tp, end in ends.items())

    def _deliver(self, records: Iterable[Any]) -> None:
        for record in records:
            try:
                status = StatusMessage.from_bytes(record.value)
            except ValueError as exc:
                logger.warning(
                    "skipping malformed result at %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc
                )
                continue
            self.messages += 1
            self.on_status(status)

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
                    for records in consumer.poll(timeout_ms=200).values():
                        self._deliver(records)
                    if not self.caught_up.is_set() and self._at_end(consumer):
                        self.caught_up.set()
                        logger.info("results cache rebuilt from %d messages", self.messages)
            except Exception as exc:
                logger.warning("results reader error (%s); reconnecting", exc)
            finally:
                consumer.close()
