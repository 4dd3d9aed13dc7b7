"""The worker's consumer of the requests topic (a ``worker_group`` member on kafka-python) and the lag and
position questions asked of it.

Client settings that one broker needs are chosen by ``settings.broker_kind`` (``kafka`` for Apache Kafka, the
broker docker-compose and the manifests deploy; ``tansu`` for the Kafka-protocol broker of the local stack
and tests) and say so where they are set. Everything else is the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from PR2_async_inference.messaging.admin import bootstrap_list
from PR2_async_inference.settings import BrokerKind, Settings

logger = logging.getLogger(__name__)

#: How long one ListOffsets request for the end offsets may take before the lag is reported unknown.
END_OFFSETS_TIMEOUT_MS = 1000


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
