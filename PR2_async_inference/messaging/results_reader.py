"""The API's reader of the results topic: every partition, no consumer group, on librdkafka (``confluent-kafka``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

import confluent_kafka

from PR2_async_inference.messaging.clients import ConsumedRecord, consumer_config, fetched_ends, next_records
from PR2_async_inference.messaging.messages import StatusMessage
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

#: Longest wait for the broker's answer to one metadata, offsets or watermark request.
REQUEST_TIMEOUT_S = 10.0


class ResultsReader:
    """Reads every partition of the results topic in a daemon thread and hands each :class:`StatusMessage` to
    ``on_status``. Starts from the earliest offset still inside ``results_lookback_s`` so a restarted replica
    rebuilds its cache; ``caught_up`` is set once it has read to the end of every partition."""

    def __init__(self, settings: Settings, on_status: Callable[[StatusMessage], None]) -> None:
        self.settings = settings
        self.on_status = on_status
        self.caught_up = threading.Event()
        self.messages = 0
        self._next: dict[int, int | None] = {}
        self._ends: dict[int, int] = {}  # on Apache Kafka, each partition's end when reading began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="results-reader", daemon=True)

    def start(self) -> ResultsReader:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # a reader that never started has no thread to wait for
            self._thread.join(timeout_s)

    def _consumer(self) -> confluent_kafka.Consumer:
        s = self.settings
        consumer = confluent_kafka.Consumer(consumer_config(
            s, "inference-api-results",
            # librdkafka wants a group id; the reader assigns partitions itself and never joins nor commits.
            f"inference-api-results-{socket.gethostname()}",
            # Applies only when an offset has left retention: reread what is left rather than skip to the end.
            **{"auto.offset.reset": "earliest", "enable.auto.offset.store": False},
        ))
        try:
            start = self._start_offsets(consumer)
            # Asked before assign() starts the fetches, which the broker would answer first (one request per
            # connection at a time, a fetch waiting up to fetch_max_wait_ms for records).
            if self.settings.broker_kind != "tansu":
                self._ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S)[1]
                              for tp in start}
            # Where each partition's reading stands: the next offset to read, None when it started at the end.
            self._next = {tp.partition: self._resolve(consumer, tp) for tp in start}
            consumer.assign(start)
        except Exception:
            consumer.close()
            raise
        return consumer

    def _start_offsets(self, consumer: confluent_kafka.Consumer) -> list[confluent_kafka.TopicPartition]:
        """Every partition at the first record inside the lookback (or at the end when none is)."""
        topic = self.settings.results_topic
        deadline = time.monotonic() + 60
        partitions: Iterable[int] = ()
        while not partitions and not self._stop.is_set():
            found = consumer.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics.get(topic)
            partitions = sorted(found.partitions) if found is not None and found.error is None else ()
            if not partitions:
                if time.monotonic() > deadline:
                    raise confluent_kafka.KafkaException(f"results topic {topic!r} not found")
                time.sleep(0.5)
        since_ms = int((time.time() - self.settings.results_lookback_s) * 1000)
        wanted = [confluent_kafka.TopicPartition(topic, p, since_ms) for p in partitions]
        try:  # offsets_for_times skips history outside the lookback; offset -1 = no record that new: the end
            found = consumer.offsets_for_times(wanted, timeout=REQUEST_TIMEOUT_S)
            return [tp if tp.error is None else
                    confluent_kafka.TopicPartition(topic, tp.partition, confluent_kafka.OFFSET_BEGINNING)
                    for tp in found]
        except confluent_kafka.KafkaException as exc:  # brokers that cannot answer: the earliest offsets
            logger.info("offsets_for_times unsupported (%s); reading results from the beginning", exc)
            return [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions]

    @staticmethod
    def _resolve(consumer: confluent_kafka.Consumer, tp: confluent_kafka.TopicPartition) -> int | None:
        if tp.offset == confluent_kafka.OFFSET_END:
            return None
        if tp.offset == confluent_kafka.OFFSET_BEGINNING:
            return consumer.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT_S)[0]
        return tp.offset

    def _at_end(self, consumer: confluent_kafka.Consumer) -> bool:
        """Read to the ends the partitions had when reading began. On Tansu, whose ListOffsets(LATEST) can answer
        below a partition's end while the high-water mark its fetch responses carry is right, to that mark."""
        ends = self._ends
        if self.settings.broker_kind == "tansu":
            topic = self.settings.results_topic
            fetched = fetched_ends(consumer, [confluent_kafka.TopicPartition(topic, p) for p in self._next])
            ends = {tp.partition: end for tp, end in fetched.items()}
        # A partition that started at the end (None) is read to it; one whose end is unknown (absent or negative)
        # is not.
        return all(next_offset is None or 0 <= ends.get(p, -1) <= next_offset for p, next_offset in self._next.items())

    def _deliver(self, records: Iterable[ConsumedRecord]) -> None:
        for record in records:
            self._next[record.partition] = record.offset + 1
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
                    self._deliver(next_records(consumer))
                    if not self.caught_up.is_set() and self._at_end(consumer):
                        self.caught_up.set()
                        logger.info("results cache rebuilt from %d messages", self.messages)
            except Exception as exc:
                logger.warning("results reader error (%s); reconnecting", exc)
            finally:
                consumer.close()
