"""Autoscaling for real: KEDA's HPA scales the worker Deployment on the lag of a running stack's queue, and the
prometheus-adapter rules return, from a real Prometheus scraping the running API and worker, the series the HPA
names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from PR1_horizontal_pod_autoscaling.autoscaling_timeline import run_scenario, write_outputs
from PR1_horizontal_pod_autoscaling.cluster import adapter_rules
from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.cluster.scaling import ScalingSettings, expected_replicas
from PR2_async_inference.load_test import make_payloads
from PR2_async_inference.local_stack import Stack, start_stack, stop_stack
from PR2_async_inference.processes import stop_process
from PR2_async_inference.registry import write_registry

pytestmark = pytest.mark.slow
PR1 = Path(__file__).resolve().parents[2] / "PR1_horizontal_pod_autoscaling"
MODEL = "image_classification"


@pytest.fixture(scope="module")
def stack(digits_resnet18: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Apache Kafka, the API and one worker serving the digits ResNet-18, as local processes."""
    folder = tmp_path_factory.mktemp("pr1_stack")
    registry = write_registry(folder / "model_registry.yaml", {MODEL: {"artifact": digits_resnet18}})
    stack = start_stack(registry, workers=1, log_dir=folder / "logs", broker="kafka")
    try:
        yield stack
    finally:
        stop_stack(stack)


@pytest.fixture(scope="module")
def payload(stack: Stack) -> dict:
    models = httpx.get(f"{stack.api_url}/models", timeout=10).json()
    shape = next(m for m in models if m["name"] == MODEL)["input_shape"]
    return make_payloads(shape, count=1)[0]


def hpa_metric_names() -> set[str]:
    (hpa,) = [d for d in yaml.safe_load_all((PR1 / "custom-metrics-hpa.yaml").read_text()) if d]
    names = set()
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] in ("Pods", "External"):
            names.add(metric[metric["type"].lower()]["metric"]["name"])
    return names


def test_adapter_rules_return_the_series_the_hpa_names(stack: Stack, payload: dict, tmp_path: Path) -> None:
    worker = stack.workers[0]
    targets = {
        worker.info["metrics_url"].removeprefix("http://"): {"namespace": "default", "pod": "inference-worker-0",
                                                             "service": "inference-worker"},
        stack.api_url.removeprefix("http://"): {"namespace": "default", "pod": "inference-api-0",
                                                "service": "inference-api"},
    }
    prometheus = adapter_rules.start_prometheus(targets, tmp_path / "prometheus")
    try:
        url = prometheus.info["url"]
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            for _ in range(5):  # the worker exports its lag once it owns partitions and has polled
                assert client.post("/inference", json={"model_name": MODEL, **payload}).status_code == 202
        for name in hpa_metric_names():
            adapter_rules.wait_for_series(url, f'{name}{{namespace!=""}}')
        results = adapter_rules.evaluate(url, "default", ["inference-worker-0", "inference-api-0"])
    finally:
        stop_process(prometheus)
    by_metric = {r["metric"]: r for r in results}
    assert set(by_metric) == hpa_metric_names()
    lag = by_metric["inference_consumer_lag"]
    assert lag["kind"] == "rules" and lag["series"] == ["inference_consumer_lag"]
    # One value per pod, labelled with the pod, as custom.metrics.k8s.io answers for a Pods metric.
    assert [v["labels"] for v in lag["values"]] == [{"pod": "inference-worker-0"}]
    age = by_metric["inference_oldest_request_age_seconds"]
    assert age["kind"] == "externalRules" and len(age["values"]) == 1 and age["values"][0]["value"] >= 0


def test_keda_scales_the_worker_on_the_queue_lag(local_cluster: ControlPlane, stack: Stack, payload: dict,
                                                  tmp_path: Path) -> None:
    settings = ScalingSettings(lag_threshold=10, scale_down_window_s=20)
    bursts = (25, 50)
    result = run_scenario(local_cluster, stack, MODEL, payload, namespace="autoscaling-test", bursts=bursts,
                          settings=settings, timeout_s=120)
    maximum = result["settings"]["max_replicas"]
    first, second, drain = result["events"]
    # The HPA formula on the measured lag: ceil(25 / 10) = 3, then ceil(75 / 10) = 8 capped at the maximum 6.
    assert (first["lag"], first["replicas"]) == (25, expected_replicas(25, 10, 1, maximum)) == (25, 3)
    assert (second["lag"], second["replicas"]) == (75, maximum)
    # Nothing consumed while the workers were stopped: the lag the HPA saw is what was sent.
    bursts_samples = [s for s in result["timeline"] if s["phase"].startswith("burst")]
    assert max(s["lag"] for s in bursts_samples) == sum(bursts)
    # Scale-down waits for the stabilization window once the lag no longer calls for more than the minimum. The
    # HPA's last high reading can precede the test's last one by one sync period, plus one more for the
    # controller's own delays on a busy 2-core machine; without the window it would follow within one sync.
    assert drain["replicas"] == settings.min_replicas
    assert drain["seconds_after_lag_over_threshold"] >= settings.scale_down_window_s - 2 * local_cluster.hpa_sync_s
    assert drain["seconds_after_lag_zero"] <= drain["seconds_after_lag_over_threshold"]
    # No request lost: every one sent while the workers were stopped is answered once a worker is back.
    assert result["answered"] == {"succeeded": result["requests"]}
    paths = write_outputs(result, tmp_path / "timeline")
    assert paths["png"].stat().st_size > 0 and "burst 2" in paths["md"].read_text()
