"""The worker as a consumer-group member against the session broker: it joins and gets every partition, an empty
partition counts as read to its end (adaptive batching) and a backlog not fetched yet counts as lag, and a
rebalance that finds requests buffered drops them without losing any."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from PR2_async_inference.messaging.clients import (
    consumer_lag,
    fetched_to_end,
    make_offsets_admin,
    make_worker_consumer,
    next_records,
)
from PR2_async_inference.messaging.producer import make_producer, wait_all
from PR2_async_inference.model_worker import ModelWorker
from tests.pr2.conftest import make_topics, suite_settings

pytestmark = pytest.mark.slow


def fill(settings, per_partition: dict[int, int]) -> None:
    """Produce ``n`` small records onto each requests partition ``p`` of ``per_partition``."""
    producer = make_producer(settings)
    try:
        wait_all([producer.send(settings.requests_topic, value=f"{p}-{i}".encode(), partition=p)
                  for p, n in per_partition.items() for i in range(n)])
    finally:
        producer.close(10)


def test_a_member_with_an_empty_partition_reads_to_the_end_and_counts_unfetched_backlog_as_lag(broker, pr2_registry):
    settings = suite_settings(broker, f"ends-{uuid.uuid4().hex[:6]}", pr2_registry, requests_partitions=2)
    make_topics(settings)
    fill(settings, {0: 3})  # partition 1 stays empty
    assigned = threading.Event()
    admin = make_offsets_admin(settings, "ends-test-offsets")  # the worker's lag gauge asks through one
    consumer = make_worker_consumer(settings, client_id="ends-test", on_assign=lambda _: assigned.set())
    try:
        read = []
        deadline = time.monotonic() + 60
        while len(read) < 3 and time.monotonic() < deadline:
            read += next_records(consumer, max_records=100, timeout_s=0.2)
        assert assigned.is_set() and sorted((r.partition, r.offset) for r in read) == [(0, 0), (0, 1), (0, 2)]
        # Partition 1 never handed over a record; it still counts as read to its end (0).
        assert fetched_to_end(consumer)
        lag = consumer_lag(consumer, settings.broker_kind, admin)
        assert {tp.partition: n for tp, n in lag.items()} == {0: 0, 1: 0}
    finally:
        consumer.close()
    # A new member of the same group that has fetched nothing yet: the backlog behind the (absent) commit is lag.
    fill(settings, {1: 2})
    consumer = make_worker_consumer(settings, client_id="ends-test-2", on_assign=lambda _: assigned.set())
    assigned.clear()
    try:
        handed = {0: 0, 1: 0}  # records the joining polls hand over move the position past them
        deadline = time.monotonic() + 60
        while not assigned.is_set() and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                handed[message.partition()] += 1
        assert assigned.is_set()
        lag = {tp.partition: n for tp, n in consumer_lag(consumer, settings.broker_kind, admin).items()}
        expected = {0: 3 - handed[0], 1: 2 - handed[1]}  # nothing committed: all of it, less what was read
        if settings.broker_kind == "tansu":  # ends come from fetch responses there: one not fetched yet is unknown
            assert lag.items() <= expected.items()
        else:
            assert lag == expected
    finally:
        consumer.close()


def test_a_rebalance_drops_the_buffer_and_partitions_kept_are_read_again_from_the_first_dropped_record(
    broker, pr2_registry
):
    settings = suite_settings(broker, f"revoke-{uuid.uuid4().hex[:6]}", pr2_registry)
    make_topics(settings)
    partitions = list(range(settings.requests_partitions))
    per_partition = 3
    fill(settings, dict.fromkeys(partitions, per_partition))
    worker = ModelWorker(settings, worker_id="revoke-test")
    worker.connect()
    other = None
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60  # the worker's loop without its flush: records stay buffered
        while len(worker._buffer) < per_partition * len(partitions) and time.monotonic() < deadline:
            polled = next_records(worker.consumer, max_records=100, timeout_s=0.2)
            worker._buffer.extend(polled)
        assert len(worker._buffer) == per_partition * len(partitions)
        assert worker.assigned.is_set()
        # A second member joins: the worker's partitions are revoked while it holds all of them unanswered.
        other = make_worker_consumer(settings, client_id="revoke-other")

        def keep_polling() -> None:
            while not stop.is_set():
                next_records(other, max_records=100, timeout_s=0.2)

        joiner = threading.Thread(target=keep_polling)
        joiner.start()
        read_again: dict[int, list[int]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for r in next_records(worker.consumer, max_records=100, timeout_s=0.2):
                read_again.setdefault(r.partition, []).append(r.offset)
            kept = {tp.partition for tp in worker.consumer.assignment()}
            if 0 < len(kept) < len(partitions) and all(len(read_again.get(p, [])) >= per_partition for p in kept):
                break
        assert not worker._buffer
        kept = {tp.partition for tp in worker.consumer.assignment()}
        assert 0 < len(kept) < len(partitions)
        assert {p: sorted(read_again.get(p, []))[:per_partition] for p in kept} == {
            p: list(range(per_partition)) for p in kept}
    finally:
        stop.set()
        worker.close()
        if other is not None:
            joiner.join(10)
            other.close()
