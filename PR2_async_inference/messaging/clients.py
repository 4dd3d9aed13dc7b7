"""The service's consumers, on librdkafka (``confluent-kafka``): the worker's group consumer of the requests topic,
the lag and position questions asked of it, and what every consumer here shares (settings, reading what is ready,
records as plain values).

Client settings that one broker needs are chosen by ``settings.broker_kind`` (``kafka`` for Apache Kafka, the
broker docker-compose and the manifests deploy; ``tansu`` for the Kafka-protocol broker of the local stack
and tests) and say so where they are set. Everything else is the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from PR2_async_inference.settings import BrokerKind, Settings

logger = logging.getLogger(__name__)

#: How long one ListOffsets request for the end offsets may take before the lag is reported unknown.
END_OFFSETS_TIMEOUT_S = 1.0
#: How long a newly assigned member waits for the group's committed offsets (asked once per assignment).
COMMITTED_TIMEOUT_S = 10.0


@dataclass
class ConsumedRecord:
    """One consumed record as plain values (what the worker buffers, decodes and re-sends)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def consumer_config(settings: Settings, client_id: str, group_id: str, **extra: Any) -> dict[str, Any]:
    """librdkafka settings every consumer of the service shares, plus ``extra`` (librdkafka names)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "group.id": group_id,
        "enable.auto.commit": False,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "socket.nagle.disable": True,
        "logger": logging.getLogger("librdkafka"),
        **extra,
    }


def next_records(consumer: confluent_kafka.Consumer, max_records: int = 2000,
                 timeout_s: float = 0.2) -> list[ConsumedRecord]:
    """At most ``max_records`` records ready now, waiting up to ``timeout_s`` for the first one. (librdkafka's
    ``consume(n, timeout)`` alone waits for n records or the whole timeout: at low load every record would sit out
    the timeout.) Fetch errors are logged and skipped."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    messages = [first, *consumer.consume(num_messages=max_records - 1, timeout=0)] if max_records > 1 else [first]
    records = []
    for m in messages:
        if m.error() is not None:
            logger.warning("fetch error: %s", m.error().str())
            continue
        records.append(ConsumedRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() or []))
    return records


class WorkerConsumer(confluent_kafka.Consumer):
    """A group member of ``worker_group`` on the requests topic: manual commits, bounded polls. librdkafka calls
    ``on_assign`` / ``on_revoke`` inside :func:`next_records`, on the caller's thread.

    It remembers where reading starts on each partition it is given (the group's committed offset, 0 without
    one), so a partition it has not read from yet still has a position (librdkafka reports none until the first
    record): an empty partition is read to its end, and lag counts a backlog not fetched yet.
    """

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        super().__init__(consumer_config(
            settings, client_id, settings.worker_group,
            # A group that has never committed starts at the first request: requests accepted before any worker
            # joined are served, not skipped.
            **{"auto.offset.reset": "earliest",
               # The worker commits the offsets it answered itself, never the ones librdkafka stores as it reads.
               "enable.auto.offset.store": False,
               # A batch is at most max_poll_records forward passes; five minutes between polls is far beyond it.
               "max.poll.interval.ms": 300_000,
               "session.timeout.ms": settings.session_timeout_ms,
               "heartbeat.interval.ms": settings.heartbeat_interval_ms,
               # Room for a full batch of 224x224 images in one fetch, and a bound on what librdkafka reads ahead
               # (its default, 64 MB, would count against the worker's memory limit and the autoscaler's memory
               # target while a backlog waits).
               "max.partition.fetch.bytes": 8 * 1024 * 1024,
               "queued.max.messages.kbytes": 16 * 1024},
        ))
        self.started_at: dict[TopicPartition, int] = {}
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self.subscribe([settings.requests_topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        try:
            committed = self.committed(partitions, timeout=COMMITTED_TIMEOUT_S)
            self.started_at = {TopicPartition(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed}
        except confluent_kafka.KafkaException as exc:
            logger.warning("committed offsets unknown (%s): positions wait for the first records", exc)
            self.started_at = {}
        if self._on_assign:
            self._on_assign(partitions)

    def _revoked(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        logger.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self.started_at = {}
        if self._on_revoke:
            self._on_revoke(partitions)


def make_worker_consumer(
    settings: Settings,
    client_id: str,
    on_assign: Callable[[list[TopicPartition]], None] | None = None,
    on_revoke: Callable[[list[TopicPartition]], None] | None = None,
) -> WorkerConsumer:
    return WorkerConsumer(settings, client_id, on_assign, on_revoke)


def commit_answered(consumer: confluent_kafka.Consumer, records: Iterable[ConsumedRecord]) -> None:
    """Commit, synchronously, the offset after the last of ``records`` on each partition. Raises
    ``KafkaException`` when the broker refuses (e.g. the partitions moved in a rebalance)."""
    next_offsets: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        next_offsets[key] = max(next_offsets.get(key, 0), r.offset + 1)
    if next_offsets:
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()], asynchronous=False)


def positions(consumer: confluent_kafka.Consumer) -> dict[TopicPartition, int]:
    """{assigned partition: the next offset the consumer hands over}. A partition not read from yet has the
    position a :class:`WorkerConsumer` started it at, and is left out for other consumers."""
    assignment = consumer.assignment()
    if not assignment:
        return {}
    at = dict(getattr(consumer, "started_at", {}))
    at.update({TopicPartition(tp.topic, tp.partition): tp.offset for tp in consumer.position(assignment)
               if tp.offset >= 0})
    return {tp: at[tp] for tp in assignment if tp in at}


def make_offsets_admin(settings: Settings, client_id: str) -> AdminClient:
    """A client for end-offset questions only. It has connections of its own: a question asked on a consumer's
    connection waits behind that consumer's long-poll fetch (the broker answers one request per connection at a
    time), up to ``fetch_max_wait_ms`` per partition asked."""
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers, "client.id": client_id,
                        "logger": logging.getLogger("librdkafka")})


def end_offsets(consumer: confluent_kafka.Consumer, partitions: Iterable[TopicPartition], broker_kind: BrokerKind,
                admin: AdminClient | None = None) -> dict[TopicPartition, int]:
    """{partition: offset the next record will get}; partitions whose end is unknown are left out.

    With ``admin`` (on Apache Kafka) one ListOffsets request asks the broker for every partition; without it, or
    on Tansu, the ends are the high-water marks of the consumer's last fetch responses (no request).
    """
    partitions = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    # Tansu's ListOffsets(LATEST) can answer below the partition's end, while the high-water mark its fetch
    # responses carry is right: on Tansu the end comes from the consumer's last fetch.
    if admin is None or broker_kind == "tansu" or not partitions:
        return fetched_ends(consumer, partitions)
    ends = {}
    asked = admin.list_offsets(dict.fromkeys(partitions, OffsetSpec.latest()), request_timeout=END_OFFSETS_TIMEOUT_S)
    for tp, answer in asked.items():
        try:
            ends[TopicPartition(tp.topic, tp.partition)] = answer.result().offset
        except confluent_kafka.KafkaException as exc:
            logger.debug("end offset of %s[%d] unknown (%s)", tp.topic, tp.partition, exc)
    return {tp: end for tp, end in ends.items() if end >= 0}


def fetched_ends(consumer: confluent_kafka.Consumer, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """{partition: high-water mark of the consumer's last fetch response}, for partitions fetched already (no
    request)."""
    ends = {TopicPartition(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, cached=True)[1]
            for tp in partitions}
    return {tp: end for tp, end in ends.items() if end is not None and end >= 0}


def fetched_to_end(consumer: confluent_kafka.Consumer) -> bool:
    """True when every assigned partition's position has reached the high-water mark of its last fetch
    response: nothing more is queued for this consumer as of that fetch. Costs no request (the fetch responses
    carry the mark), so it can be asked on every poll; False while any mark or position is unknown."""
    assignment = consumer.assignment()
    if not assignment:
        return False
    at = positions(consumer)
    ends = fetched_ends(consumer, assignment)
    return all(tp in at and tp in ends and at[tp] >= ends[tp] for tp in assignment)


def consumer_lag(consumer: confluent_kafka.Consumer, broker_kind: BrokerKind = "kafka",
                 admin: AdminClient | None = None) -> dict[TopicPartition, int]:
    """Per assigned partition: end offset (:func:`end_offsets`) minus position (partitions whose end or position
    is unknown are skipped)."""
    at = positions(consumer)
    return {tp: max(0, end - at[tp]) for tp, end in end_offsets(consumer, at, broker_kind, admin).items()
            if tp in at}
