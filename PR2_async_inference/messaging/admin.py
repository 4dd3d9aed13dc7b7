"""The service's three topics (names and partition counts in :mod:`PR2_async_inference.settings`): creating them,
waiting until the broker lists them, and a readiness probe for the broker."""

from __future__ import annotations

import logging
import socket
import time

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)


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


def wait_for_broker(settings: Settings, deadline: float) -> None:
    """Return once a bootstrap server accepts a TCP connection; ConnectionError naming the servers and what to do
    when none does by ``deadline`` (monotonic). Checked before any kafka-python client is made: those retry on
    their own schedule, past the caller's timeout, and log every refused connection."""
    while not broker_reachable(settings, timeout_s=min(1.0, max(0.1, deadline - time.monotonic()))):
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"no Kafka broker answers at {settings.kafka_bootstrap_servers}: start one (make compose-up, or "
                "PR2_async_inference/local_stack.py) or point INFERENCE_KAFKA_BOOTSTRAP_SERVERS at yours")
        time.sleep(0.2)


def topic_specs(settings: Settings) -> dict[str, int]:
    return {
        settings.requests_topic: settings.requests_partitions,
        settings.results_topic: settings.results_partitions,
        settings.dlq_topic: settings.dlq_partitions,
    }


def connect_admin(settings: Settings, deadline: float) -> KafkaAdminClient:
    """An admin client, retried every 0.5 s until the broker answers or ``deadline`` (monotonic) passes."""
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap_list(settings),
                client_id="inference-admin",
                request_timeout_ms=10_000,
            )
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise
            logger.info("broker not ready yet (%s); retrying", exc)
            time.sleep(0.5)


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create the three topics with their partition counts; existing topics are left as they are.

    Returns {topic: partitions} as the broker reports them after creation.
    """
    deadline = time.monotonic() + timeout_s
    wait_for_broker(settings, deadline)
    admin = connect_admin(settings, deadline)
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
    wait_for_broker(settings, time.monotonic() + timeout_s)
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
