"""The floor of one Kafka hop for the service's client, on an otherwise idle local broker, in one bounded run.

    python PR2_async_inference/benchmarks/bench_kafka_hop.py --warmup 2000 --messages 200

It starts a broker on 127.0.0.1 (``--broker``: Apache Kafka by default), creates a one-partition topic, and sends
records of a request's size (``--size``: 150528 bytes, a 224x224 RGB image as uint8 pixels) one at a time with the
service's producer (:class:`messaging.producer.Producer`: librdkafka, acks=all, idempotent, no linger), while two
consumers in other threads of the same process read them with the service's fetch wait: a librdkafka one, the
client of the service's consumers (worker and API), and a kafka-python one for comparison. Per record it
reports the produce acknowledgement and the delivery to each consumer (send -> the consumer holding the record),
and the CPU the broker and this process (the producer and both consumers) spent per record. Records are
``--gap-ms`` apart, as at low load, after ``--warmup`` untimed ones that let the broker's JVM compile its hot
paths.

What it shows: the latency a request pays per hop before any of the service's own work, i.e. two of them on
its way (requests topic -> worker, results topic -> API).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import confluent_kafka
from kafka import KafkaConsumer, TopicPartition

from modelops.errors import UsageError
from PR2_async_inference.benchmarks.bench_e2e import cpu_seconds
from PR2_async_inference.local_stack import BROKER_KINDS, TANSU_FETCH_MAX_WAIT_MS, choose_broker, start_broker
from PR2_async_inference.messaging.admin import ensure_topics
from PR2_async_inference.messaging.clients import consumer_config
from PR2_async_inference.messaging.producer import make_producer
from PR2_async_inference.processes import interrupt_on_stop_signals, stop_process
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

TOPIC = "hop-bench"
#: The consumer clients timed: librdkafka, the client of the service's consumers, and kafka-python beside it.
CONSUMER_CLIENTS = ("kafka-python", "librdkafka")


class DeliveryClock:
    """A consumer thread that notes when each record key arrives (perf_counter seconds)."""

    def __init__(self, settings: Settings, client: str) -> None:
        self.arrived: dict[bytes, float] = {}
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._settings = settings
        run = self._run_kafka_python if client == "kafka-python" else self._run_librdkafka
        self._thread = threading.Thread(target=run, name=f"hop-{client}", daemon=True)

    def __enter__(self) -> DeliveryClock:
        self._thread.start()
        if not self.ready.wait(60):
            raise TimeoutError("the consumer did not get its partition within 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run_kafka_python(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self._settings.kafka_bootstrap_servers, group_id=None,
                                 fetch_max_wait_ms=self._settings.fetch_max_wait_ms,
                                 max_partition_fetch_bytes=8 * 1024 * 1024)
        tp = TopicPartition(self._settings.requests_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
        self.ready.set()
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=200).values():
                    now = time.perf_counter()
                    for record in records:
                        self.arrived[record.key] = now
        finally:
            consumer.close()

    def _run_librdkafka(self) -> None:
        topic = self._settings.requests_topic
        consumer = confluent_kafka.Consumer(consumer_config(self._settings, "hop-bench", "hop-bench"))
        _, end = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0), timeout=30)
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, end)])
        self.ready.set()
        try:
            while not self._stop.is_set():
                record = consumer.poll(0.2)
                if record is not None and record.error() is None:
                    self.arrived[record.key()] = time.perf_counter()
        finally:
            consumer.close()

    def wait_for(self, key: bytes, timeout_s: float = 10.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while key not in self.arrived:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"record {key!r} not delivered within {timeout_s} s")
            time.sleep(0.0002)
        return self.arrived[key]


def measure_hops(settings: Settings, broker_pid: int, *, size: int, warmup: int, messages: int,
                 gap_ms: float) -> dict[str, Any]:
    """Send ``warmup`` untimed records back to back, then ``messages`` timed ones ``gap_ms`` apart, onto
    partition 0 of ``settings.requests_topic`` (which must exist) of the broker whose process is ``broker_pid``."""
    topic = settings.requests_topic
    producer = make_producer(settings, client_id="hop-bench")
    payload = os.urandom(size)
    acks: list[float] = []
    deliveries: dict[str, list[float]] = {client: [] for client in CONSUMER_CLIENTS}
    try:
        with contextlib.ExitStack() as stack:
            clocks = {client: stack.enter_context(DeliveryClock(settings, client)) for client in CONSUMER_CLIENTS}
            for i in range(warmup):
                producer.send(topic, key=b"w%d" % i, value=payload, partition=0).result(30)
            before = cpu_seconds(broker_pid), cpu_seconds(os.getpid())
            for i in range(messages):
                key = b"m%d" % i
                sent = time.perf_counter()
                producer.send(topic, key=key, value=payload, partition=0).result(30)
                acks.append((time.perf_counter() - sent) * 1000)
                for client, clock in clocks.items():
                    deliveries[client].append((clock.wait_for(key) - sent) * 1000)
                time.sleep(gap_ms / 1000)
            after = cpu_seconds(broker_pid), cpu_seconds(os.getpid())
    finally:
        producer.close(5)
    return {
        "broker": settings.broker_kind, "size_bytes": size, "warmup": warmup, "messages": messages,
        "produce_ack_ms_p50": round(statistics.median(acks), 2),
        **{f"delivery_ms_p50_{client}": round(statistics.median(times), 2) for client, times in deliveries.items()},
        **{f"delivery_ms_p90_{client}": round(statistics.quantiles(times, n=10)[-1], 2)
           for client, times in deliveries.items()},
        "broker_cpu_ms_per_record": round((after[0] - before[0]) * 1000 / messages, 2),
        "client_cpu_ms_per_record": round((after[1] - before[1]) * 1000 / messages, 2),
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Latency of one Kafka hop for the service's client, idle broker.",
                                     add_help=add_help)
    parser.add_argument("--broker", choices=BROKER_KINDS, default="kafka",
                        help="kafka: Apache Kafka (needs Java); tansu; auto (default: kafka)")
    parser.add_argument("--size", type=int, default=3 * 224 * 224,
                        help="record value bytes (default: 150528, a 224x224 RGB image as uint8)")
    parser.add_argument("--warmup", type=int, default=2000, help="untimed records first (default: 2000)")
    parser.add_argument("--messages", type=int, default=200, help="timed records (default: 200)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between timed records (default: 20)")
    parser.add_argument("--log-dir", default=None, help="broker log and data (default: a temp dir)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("size", "messages"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.gap_ms < 0:
        raise UsageError("--warmup and --gap-ms must be >= 0")
    kind, why = choose_broker(args.broker)
    logger.info("broker: %s (%s)", kind, why)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="kafka-hop-"))
    interrupt_on_stop_signals()  # SIGTERM, like Ctrl-C, stops the broker
    broker = start_broker(kind, log_dir)
    try:
        # The service's fetch wait on this broker (local_stack sets Tansu's, which polls rather than waits).
        fetch_wait = TANSU_FETCH_MAX_WAIT_MS if kind == "tansu" else Settings().fetch_max_wait_ms
        settings = Settings(kafka_bootstrap_servers=broker.info["bootstrap"], broker_kind=kind,
                            requests_topic=TOPIC, requests_partitions=1, fetch_max_wait_ms=fetch_wait)
        ensure_topics(settings)
        result = measure_hops(settings, broker.pid, size=args.size, warmup=args.warmup, messages=args.messages,
                              gap_ms=args.gap_ms)
    finally:
        stop_process(broker)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
