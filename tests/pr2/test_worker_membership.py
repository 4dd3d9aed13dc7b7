"""The worker's group membership against the session broker: a consumer is live only once joined with no rejoin
pending, a member left waiting to rejoin counts as stalled after the limit, a worker replaces a stalled consumer
with one that joins the group and gets the partitions, and a rebalance that finds requests buffered drops them
without losing any."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kafka import KafkaProducer

from PR2_async_inference.messaging.clients import LoggingRebalanceListener, make_worker_consumer
from PR2_async_inference.model_worker import ModelWorker
from PR2_async_inference.worker.membership import MembershipWatch, member_is_live
from tests.pr2.conftest import make_topics, suite_settings

pytestmark = pytest.mark.slow


def poll_until(consumer, condition, timeout_s: float = 60.0) -> bool:
    """Poll ``consumer`` (200 ms at a time) until ``condition()`` holds or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
        if condition():
            return True
    return False


def test_a_member_waiting_to_rejoin_is_not_live_and_stalls_after_the_limit(broker, pr2_registry):
    settings = suite_settings(broker, f"watch-{uuid.uuid4().hex[:6]}", pr2_registry)
    make_topics(settings)
    consumer = make_worker_consumer(settings, LoggingRebalanceListener(), client_id="watch-test")
    watch = MembershipWatch(settings.session_timeout_ms)
    try:
        assert not member_is_live(consumer, settings.session_timeout_ms)  # not joined yet
        assert poll_until(consumer, lambda: member_is_live(consumer, settings.session_timeout_ms))
        assert consumer.assignment()
        assert not watch.stalled(consumer)
        # What the stuck members show: a rejoin requested and never completed (no poll drives it here).
        consumer._coordinator.request_rejoin()
        assert not member_is_live(consumer, settings.session_timeout_ms)
        assert not watch.stalled(consumer)  # within the limit
        watch.live_at -= watch.limit_s + 1
        assert watch.stalled(consumer)
        assert "not live for" in watch.describe(consumer)
    finally:
        consumer.close()


def test_the_worker_replaces_a_stalled_consumer_with_one_that_joins(broker, pr2_registry):
    settings = suite_settings(broker, f"replace-{uuid.uuid4().hex[:6]}", pr2_registry)
    make_topics(settings)
    worker = ModelWorker(settings, worker_id="replace-test")
    worker.connect()
    try:
        stalled = worker.consumer
        assert poll_until(stalled, lambda: bool(stalled.assignment()))
        worker._replace_consumer()
        assert worker.consumer is not stalled and worker.membership.replacements == 1
        assert not worker.assigned.is_set()
        fresh = worker.consumer
        joined = lambda: member_is_live(fresh, settings.session_timeout_ms) and bool(fresh.assignment())  # noqa: E731
        assert poll_until(fresh, joined)
        assert worker.assigned.is_set()
    finally:
        worker.close()


def test_a_rebalance_drops_the_buffer_and_partitions_kept_are_read_again_from_the_first_dropped_record(
    broker, pr2_registry
):
    settings = suite_settings(broker, f"revoke-{uuid.uuid4().hex[:6]}", pr2_registry)
    make_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    partitions = sorted(producer.partitions_for(settings.requests_topic))
    per_partition = 3
    for p in partitions:
        for i in range(per_partition):
            producer.send(settings.requests_topic, value=f"{p}-{i}".encode(), partition=p)
    producer.flush(30)
    producer.close()
    worker = ModelWorker(settings, worker_id="revoke-test")
    worker.connect()
    other = None
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 60  # the worker's loop without its flush: records stay buffered
        while len(worker._buffer) < per_partition * len(partitions) and time.monotonic() < deadline:
            for records in worker.consumer.poll(timeout_ms=200).values():
                worker._buffer.extend(records)
        assert len(worker._buffer) == per_partition * len(partitions)
        # A second member joins: the worker's partitions are revoked while it holds all of them unanswered.
        other = make_worker_consumer(settings, LoggingRebalanceListener(), client_id="revoke-other")

        def keep_polling() -> None:
            while not stop.is_set():
                other.poll(timeout_ms=200)

        joiner = threading.Thread(target=keep_polling)
        joiner.start()
        read_again: dict[int, list[int]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for tp, records in worker.consumer.poll(timeout_ms=200).items():
                read_again.setdefault(tp.partition, []).extend(r.offset for r in records)
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
