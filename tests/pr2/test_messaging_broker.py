"""The messaging clients against the session's real broker: consumer lag as the worker computes it for the
broker kind the suite runs on (``INFERENCE_BROKER_KIND``), and the "read to the end" check of adaptive batching."""

from __future__ import annotations

import time
import uuid

import confluent_kafka
import pytest

from PR2_async_inference.local_stack import Proc
from PR2_async_inference.messaging.clients import (
    consumer_config,
    consumer_lag,
    end_offsets,
    fetched_to_end,
    make_offsets_admin,
    next_records,
)
from PR2_async_inference.messaging.messages import StatusMessage
from PR2_async_inference.messaging.producer import (
    MAX_RECORD_BYTES,
    ProduceError,
    make_producer,
    send_status,
    wait_all,
)
from PR2_async_inference.messaging.results_reader import ResultsReader
from PR2_async_inference.settings import Settings
from tests.pr2.conftest import make_topics, suite_settings


def _topics(broker: Proc, prefix: str) -> Settings:
    """Topics of their own on the session broker: one requests partition, two results partitions."""
    settings = suite_settings(broker, prefix, requests_partitions=1, results_partitions=2, fetch_max_wait_ms=100)
    make_topics(settings)
    return settings


def test_consumer_lag_is_end_offset_minus_position(broker: Proc):
    prefix = f"lag-{uuid.uuid4().hex[:8]}"
    settings = _topics(broker, prefix)
    producer = make_producer(settings)
    try:
        wait_all([producer.send(settings.requests_topic, key=b"k", value=b"v%d" % i) for i in range(5)])
    finally:
        producer.close(10)
    tp = confluent_kafka.TopicPartition(settings.requests_topic, 0)
    consumer = confluent_kafka.Consumer(consumer_config(settings, "lag-test", f"{prefix}-group"))
    try:
        consumer.assign([confluent_kafka.TopicPartition(settings.requests_topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        polled: list = []
        for _ in range(50):  # bounded: a few seconds at most
            polled += next_records(consumer, max_records=2 - len(polled), timeout_s=0.2)
            if len(polled) == 2:
                break
        assert [r.offset for r in polled] == [0, 1]
        admin = make_offsets_admin(settings, "lag-test-offsets")  # asked by ListOffsets (the fetched mark on Tansu)
        assert end_offsets(consumer, [tp], settings.broker_kind, admin) == {tp: 5}
        assert consumer_lag(consumer, settings.broker_kind, admin) == {tp: 3}
        assert consumer_lag(consumer, settings.broker_kind) == {tp: 3}  # from the last fetch's high-water mark
        assert not fetched_to_end(consumer)  # 3 records left: the worker keeps filling its batch
        for _ in range(50):
            polled += next_records(consumer, max_records=5 - len(polled), timeout_s=0.2)
            if len(polled) == 5:
                break
        assert [r.offset for r in polled] == [0, 1, 2, 3, 4]
        assert fetched_to_end(consumer)  # all read: a partial batch runs at once (adaptive batching)
    finally:
        consumer.close()


def test_the_hop_benchmark_times_records_through_the_broker(broker: Proc):
    from PR2_async_inference.benchmarks.bench_kafka_hop import measure_hops

    settings = _topics(broker, f"hop-{uuid.uuid4().hex[:8]}")
    result = measure_hops(settings, broker.pid, size=3 * 32 * 32, warmup=3, messages=5, gap_ms=0)
    assert result["messages"] == 5 and result["size_bytes"] == 3 * 32 * 32
    # A record is delivered after its produce began, and an acknowledged produce takes some time.
    assert result["produce_ack_ms_p50"] > 0
    for client in ("kafka-python", "librdkafka"):  # the service's consumer client and the one beside it
        assert 0 < result[f"delivery_ms_p50_{client}"] <= result[f"delivery_ms_p90_{client}"]
    # CPU times advance in clock ticks (10 ms): five small records may not move them.
    assert result["broker_cpu_ms_per_record"] >= 0 and result["client_cpu_ms_per_record"] >= 0


def test_the_benchmarks_jit_reading_counts_only_a_jvms_compiler_threads(broker: Proc):
    """bench_e2e warms a stack up until the broker's JIT compiler threads go quiet; it reads their CPU apart."""
    import os

    from PR2_async_inference.benchmarks.bench_e2e import cpu_seconds, jit_cpu_seconds

    jit = jit_cpu_seconds(broker.pid)
    if broker.info["kind"] == "kafka":  # a JVM that has started compiles its start-up paths
        assert 0 < jit < cpu_seconds(broker.pid)
    else:  # Tansu is compiled ahead of time
        assert jit == 0
    assert jit_cpu_seconds(os.getpid()) == 0


def test_the_producer_acknowledges_records_and_fails_one_too_large(broker: Proc):
    settings = _topics(broker, f"prod-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings)
    try:
        first = producer.send(settings.requests_topic, key=b"a", value=b"1", headers=[("h", b"x")]).result(30)
        second = producer.send(settings.requests_topic, key=b"b", value=b"2").result(30)
        assert (first.topic, first.partition, first.offset) == (settings.requests_topic, 0, 0)
        assert second.offset == 1
        too_large = producer.send(settings.requests_topic, key=b"c", value=b"x" * (MAX_RECORD_BYTES + 1))
        with pytest.raises(ProduceError, match=settings.requests_topic):
            too_large.result(30)
    finally:
        producer.close(10)


def test_the_results_reader_reads_every_partition_and_says_when_it_has_caught_up(broker: Proc):
    settings = _topics(broker, f"read-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings)
    sent = [StatusMessage(request_id=f"r{i}", model_name="m", status="queued", created_at=time.time())
            for i in range(6)]
    try:
        wait_all([send_status(producer, settings, s) for s in sent])
        # A record that is not a StatusMessage is skipped and does not keep the reader from catching up.
        producer.send(settings.results_topic, key=b"bad", value=b"not json", partition=1).result(30)
    finally:
        producer.close(10)
    seen: list[StatusMessage] = []
    reader = ResultsReader(settings, seen.append).start()
    try:
        assert reader.caught_up.wait(30), "the reader never caught up"
        assert sorted(s.request_id for s in seen) == [s.request_id for s in sent]
        assert reader.messages == 6
    finally:
        reader.stop()


# A read that waited for a full batch would sit out next_records' 1-hour timeout below: the test's own time limit
# fails it instead (no timing is asserted).
@pytest.mark.timeout(300)
def test_next_records_hands_over_what_is_ready_without_waiting_for_a_full_read(broker: Proc):
    settings = _topics(broker, f"next-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings)
    try:
        producer.send(settings.results_topic, key=b"k", value=b"v", partition=0).result(30)
    finally:
        producer.close(10)
    consumer = confluent_kafka.Consumer(consumer_config(settings, "next-test", "next-test"))
    try:
        consumer.assign([confluent_kafka.TopicPartition(settings.results_topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        records = next_records(consumer, timeout_s=3600)  # one record is ready: it comes back without the rest
        assert [(r.key, r.value) for r in records] == [(b"k", b"v")]
        assert next_records(consumer, timeout_s=0.5) == []
    finally:
        consumer.close()
