"""Fixtures of the PR2 service tests: one real broker per session on free 127.0.0.1 ports, stopped by pid -
Apache Kafka 3.9.1 (what docker-compose deploys) when Java is there, else Tansu; ``PR2_BROKER=tansu`` (or
``kafka``) picks one. ``tansu_broker`` serves the smoke tests that keep the no-Java path working.
A registry pointing at the digits ResNet-18; helpers to wait for final states."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from PR2_async_inference.local_stack import (
    BROKER_NAMES,
    TANSU_FETCH_MAX_WAIT_MS,
    Proc,
    choose_broker,
    start_broker,
    stop_process,
)
from PR2_async_inference.messaging.admin import ensure_topics
from PR2_async_inference.messaging.messages import FINAL_STATES
from PR2_async_inference.registry import write_registry
from PR2_async_inference.settings import Settings

#: The kind of each broker the fixtures started, by bootstrap address (settings built from an address use it).
_BROKER_KINDS: dict[str, str] = {}


@functools.cache
def session_broker_choice() -> tuple[str, str]:
    """``(kind, why)`` of the session broker: ``PR2_BROKER`` (auto, kafka or tansu; default auto)."""
    return choose_broker(os.environ.get("PR2_BROKER", "auto"))


def pytest_report_header(config: pytest.Config) -> str:
    kind, why = session_broker_choice()
    return f"PR2 broker: {BROKER_NAMES[kind]} ({why})"


@pytest.fixture(scope="session")
def pr2_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pr2_logs")


def _started_broker(kind: str, log_dir: Path, name: str) -> Proc:
    proc = start_broker(kind, log_dir, name=name)
    _BROKER_KINDS[proc.info["bootstrap"]] = kind
    return proc


@pytest.fixture(scope="session")
def broker(pr2_logs: Path) -> Iterator[Proc]:
    """The session broker (see :func:`session_broker_choice`); ``INFERENCE_BROKER_KIND`` names it to the clients
    the tests build from the environment."""
    kind, _ = session_broker_choice()
    proc = _started_broker(kind, pr2_logs, "session-broker")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("INFERENCE_BROKER_KIND", kind)
            yield proc
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def tansu_broker(broker: Proc, pr2_logs: Path) -> Iterator[Proc]:
    """Tansu with in-memory storage for the smoke subset: the session broker when that is Tansu."""
    if broker.info["kind"] == "tansu":
        yield broker
        return
    proc = _started_broker("tansu", pr2_logs, "tansu-broker")
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
    return write_registry(tmp_path_factory.mktemp("pr2_registry") / "model_registry.yaml", {
        "image_classification": {"artifact": pr2_model, "max_batch_size": 8, "max_batch_delay_ms": 100},
    })


def broker_kind_of(broker: Proc | str) -> str:
    """The kind of a started broker, or of the fixtures' broker at a bootstrap address (Apache Kafka if none)."""
    if isinstance(broker, Proc):
        return broker.info["kind"]
    return _BROKER_KINDS.get(broker, "kafka")


def suite_settings(broker: Proc | str, prefix: str, registry: Path | None = None, **overrides: Any) -> Settings:
    """Settings with topics and group of their own, so suites sharing the broker never see each other's data;
    ``broker`` is a started broker or its bootstrap address. On Tansu the fetch wait is its polling interval.
    Without ``registry`` the settings' default registry stays (tests of the messaging layer load no model)."""
    kind = broker_kind_of(broker)
    bootstrap = broker.info["bootstrap"] if isinstance(broker, Proc) else broker
    if kind == "tansu":
        overrides.setdefault("fetch_max_wait_ms", TANSU_FETCH_MAX_WAIT_MS)
    return Settings(
        kafka_bootstrap_servers=bootstrap, broker_kind=kind, requests_topic=f"{prefix}-requests",
        results_topic=f"{prefix}-results", dlq_topic=f"{prefix}-dlq", worker_group=f"{prefix}-workers",
        **({"model_registry": registry} if registry is not None else {}), **overrides
    )


def topic_overrides(prefix: str) -> dict[str, str]:
    """Topic and group settings of a suite, for :func:`service_env` (which adds the broker's own)."""
    return {"requests_topic": f"{prefix}-requests", "results_topic": f"{prefix}-results",
            "dlq_topic": f"{prefix}-dlq", "worker_group": f"{prefix}-workers"}


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
