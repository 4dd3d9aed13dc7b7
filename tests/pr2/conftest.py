"""Fixtures of the PR2 service tests: one real Kafka-protocol broker (Tansu) per session on a free 127.0.0.1
port, stopped by pid; a registry pointing at the digits ResNet-18; helpers to wait for final states."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from PR2_async_inference.kafka_queue_service import FINAL_STATES, ensure_topics
from PR2_async_inference.local_stack import Proc, start_broker, stop_process
from PR2_async_inference.settings import Settings


@pytest.fixture(scope="session")
def pr2_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pr2_logs")


@pytest.fixture(scope="session")
def broker(pr2_logs: Path) -> Iterator[Proc]:
    """Tansu on 127.0.0.1 with in-memory storage, for the whole session."""
    proc = start_broker(pr2_logs, name="session-broker")
    try:
        yield proc
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def pr2_model(request: pytest.FixtureRequest) -> Path:
    """The digits ResNet-18 of tests/conftest.py; PR2_TEST_ARTIFACT=<artifact> reuses a prebuilt one
    (any 3x32x32 artifact with a manifest) to iterate on the service without retraining."""
    prebuilt = os.environ.get("PR2_TEST_ARTIFACT")
    if prebuilt:
        return Path(prebuilt)
    return request.getfixturevalue("digits_resnet18")


@pytest.fixture(scope="session")
def pr2_registry(pr2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """image_classification -> the digits ResNet-18; a long batching delay so bursts form real batches."""
    path = tmp_path_factory.mktemp("pr2_registry") / "model_registry.yaml"
    path.write_text(
        "default_model: image_classification\n"
        "models:\n"
        "  image_classification:\n"
        f"    artifact: {pr2_model}\n"
        "    max_batch_size: 8\n"
        "    max_batch_delay_ms: 100\n"
    )
    return path


# On Tansu the fetch wait is a polling interval; 50 ms keeps the idle CPU of the test processes low.
TEST_FETCH_MAX_WAIT_MS = 50


def suite_settings(bootstrap: str, prefix: str, registry: Path, **overrides: Any) -> Settings:
    """Settings with topics and group of their own, so suites sharing the broker never see each other's data."""
    overrides.setdefault("fetch_max_wait_ms", TEST_FETCH_MAX_WAIT_MS)
    return Settings(
        kafka_bootstrap_servers=bootstrap, requests_topic=f"{prefix}-requests", results_topic=f"{prefix}-results",
        dlq_topic=f"{prefix}-dlq", worker_group=f"{prefix}-workers", model_registry=registry, **overrides
    )


def topic_overrides(prefix: str) -> dict[str, str]:
    return {"requests_topic": f"{prefix}-requests", "results_topic": f"{prefix}-results",
            "dlq_topic": f"{prefix}-dlq", "worker_group": f"{prefix}-workers",
            "fetch_max_wait_ms": str(TEST_FETCH_MAX_WAIT_MS)}


def make_topics(settings: Settings) -> None:
    ensure_topics(settings)


def wait_final(client: httpx.Client, ids: list[str], timeout_s: float = 120.0) -> dict[str, dict]:
    """Poll GET /inference/{id} until every id is in a final state; returns {id: body}."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for request_id in ids:
            if request_id in done:
                continue
            response = client.get(f"/inference/{request_id}")
            if response.status_code == 200 and response.json()["status"] in FINAL_STATES:
                done[request_id] = response.json()
        if len(done) == len(ids):
            return done
        time.sleep(0.25)
    missing = [i for i in ids if i not in done]
    raise AssertionError(f"{len(missing)} of {len(ids)} requests not final after {timeout_s} s: {missing[:5]}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series' samples matching ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
