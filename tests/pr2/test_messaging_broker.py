"""The messaging clients against the session's real broker: consumer lag as the worker computes it for the
broker kind the suite runs on (``INFERENCE_BROKER_KIND``), and the "read to the end" check of adaptive batching."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer, TopicPartition

from PR2_async_inference.local_stack import Proc
from PR2_async_inference.messaging.admin import ensure_topics
from PR2_async_inference.messaging.clients import consumer_lag, end_offsets, fetched_to_end, make_producer
from PR2_async_inference.settings import Settings


def test_consumer_lag_is_end_offset_minus_position(broker: Proc):
    prefix = f"lag-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=broker.info["bootstrap"], requests_topic=f"{prefix}-requests",
                        results_topic=f"{prefix}-results", dlq_topic=f"{prefix}-dlq", requests_partitions=1,
                        results_partitions=1)
    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        for i in range(5):
            producer.send(settings.requests_topic, key=b"k", value=b"v%d" % i).get(timeout=30)
    finally:
        producer.close(10)
    tp = TopicPartition(settings.requests_topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker.info["bootstrap"], enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        polled: list = []
        for _ in range(50):  # bounded: a few seconds at most
            polled += consumer.poll(timeout_ms=200, max_records=2 - len(polled)).get(tp, [])
            if len(polled) == 2:
                break
        assert [r.offset for r in polled] == [0, 1]
        assert end_offsets(consumer, [tp], settings.broker_kind) == {tp: 5}
        assert consumer_lag(consumer, settings.broker_kind) == {tp: 3}
        assert not fetched_to_end(consumer)  # 3 records left: the worker keeps filling its batch
        for _ in range(50):
            polled += consumer.poll(timeout_ms=200, max_records=5 - len(polled)).get(tp, [])
            if len(polled) == 5:
                break
        assert [r.offset for r in polled] == [0, 1, 2, 3, 4]
        assert fetched_to_end(consumer)  # all read: a partial batch runs at once (adaptive batching)
    finally:
        consumer.close()


def test_the_hop_benchmark_times_records_through_the_broker(broker: Proc):
    from PR2_async_inference.benchmarks.bench_kafka_hop import measure_hops

    prefix = f"hop-{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=broker.info["bootstrap"], broker_kind=broker.info["kind"],
                        requests_topic=f"{prefix}-requests", results_topic=f"{prefix}-results",
                        dlq_topic=f"{prefix}-dlq", requests_partitions=1, results_partitions=1,
                        fetch_max_wait_ms=100)
    ensure_topics(settings)
    result = measure_hops(settings, broker.pid, size=3 * 32 * 32, warmup=3, messages=5, gap_ms=0)
    assert result["messages"] == 5 and result["size_bytes"] == 3 * 32 * 32
    # A record is delivered after its produce began, and an acknowledged produce takes some time.
    assert result["produce_ack_ms_p50"] > 0 and 0 < result["delivery_ms_p50"] <= result["delivery_ms_p90"]
    # CPU times advance in clock ticks (10 ms): five small records may not move them.
    assert result["broker_cpu_ms_per_record"] >= 0 and result["client_cpu_ms_per_record"] >= 0
