"""size_deployment.py: the sizing arithmetic checked against the same PR4 figures by hand, the overlay built by
kubectl kustomize and dry-run on the local control plane, the measuring path through PR4 and a registry entry,
and an objective below the model's own batch-1 latency refused with exit code 2."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from modelops.artifact import Manifest
from modelops.cli import run_cli
from modelops.saving import save_artifact
from PR1_horizontal_pod_autoscaling import size_deployment
from PR2_async_inference.registry import write_registry
from PR4_model_benchmarking import benchmark_models
from tests.conftest import tiny_classifier

SIDE = 16
DELAY_MS = 5.0
MAX_BATCH = 16
HEADROOM = 0.25


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 10-class net of a few hundred parameters, as TorchScript with its manifest."""
    net = tiny_classifier(SIDE)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_artifact(net, path, Manifest(num_classes=10, input_shape=[3, SIDE, SIDE], labels=[str(i) for i in range(10)]),
                  fmt="torchscript")
    return path


@pytest.fixture(scope="module")
def pr4_report(tiny_model, tmp_path_factory) -> Path:
    """PR4 run for real on the tiny model: batch sizes 1, 4 and 16, LoadGen single-stream, offline and server,
    each model in its own process (so the report has its peak memory)."""
    out = tmp_path_factory.mktemp("pr4")
    args = benchmark_models.get_args_parser().parse_args([
        "--models", f"tiny:{tiny_model}", "--iters", "5", "--warmup", "1", "--batch-sizes", f"1,4,{MAX_BATCH}",
        "--threads", "1", "--min-duration-ms", "100", "--server-search-runs", "1", "--latency-bound-ms", "200",
        "--scenarios", "single-stream,offline,server", "--offline-batch-size", str(MAX_BATCH),
        "--output-dir", str(out), "--report-format", "json", "--no-progress"])
    return Path(benchmark_models.run_benchmark(args)["reports"]["json"])


@pytest.fixture
def batching(monkeypatch):
    """PR2's batching settings, as the worker reads them from its environment."""
    monkeypatch.setenv("INFERENCE_MAX_BATCH_SIZE", str(MAX_BATCH))
    monkeypatch.setenv("INFERENCE_MAX_BATCH_DELAY_MS", str(DELAY_MS))


def _argv(model: str, out: Path, p95_ms: float, base: float, peak: float, *extra: str) -> list[str]:
    return ["--model", model, "--p95-ms", str(p95_ms), "--base-rps", str(base), "--peak-rps", str(peak),
            "--headroom", str(HEADROOM), "--output-dir", str(out), *extra]


def _rendered(plane, overlay: Path) -> dict[str, dict]:
    result = plane.kubectl("kustomize", str(overlay))
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(result.stdout) if d}


@pytest.mark.slow
def test_sizing_arithmetic_and_the_overlay_on_the_local_control_plane(pr4_report, batching, local_cluster, tmp_path,
                                                                       capsys):
    report = json.loads(pr4_report.read_text())
    (row,) = report["models"]
    batches = {b["batch_size"]: b for b in report["per_batch"]}
    # By hand from the report: every timed batch size fits a 50 ms objective with a 5 ms batching delay, so the
    # one with the most samples/s is planned; LoadGen's offline run at that size replaces it when lower.
    p95 = 50.0
    assert all(DELAY_MS + b["latency_ms_p95"] < p95 for b in batches.values())
    best = max(batches.values(), key=lambda b: b["samples_per_s"])
    rate = best["samples_per_s"]
    if row["offline_batch_size"] == best["batch_size"]:
        rate = min(rate, row["offline_samples_per_s"])
    budget_ms = p95 - DELAY_MS - best["latency_ms_p95"]
    lag = max(1, math.floor(rate * budget_ms / 1000))
    usable = rate * (1 - HEADROOM)
    base, peak = 1.5 * usable, 7.5 * usable  # 2 replicas at base; 8 at peak, above the 6 partitions
    memory = math.ceil(row["peak_rss_mb"] * (1 + HEADROOM) / 64) * 64

    out = tmp_path / "overlay"
    args = size_deployment.get_args_parser().parse_args(_argv("tiny", out, p95, base, peak, "--report",
                                                              str(pr4_report)))
    sizing = size_deployment.main(args)
    printed = capsys.readouterr().out
    assert (sizing.batch_size, sizing.samples_per_s, sizing.lag_threshold) == (best["batch_size"], rate, lag)
    assert math.isclose(sizing.queue_budget_ms, budget_ms)
    assert (sizing.replicas_base, sizing.replicas_peak) == (2, 8)
    assert (sizing.min_replicas, sizing.max_replicas) == (2, 6)
    assert (sizing.cpu, sizing.memory_mi) == ("1", memory)
    assert "warning: peak needs 8 replicas but the requests topic has 6 partitions" in printed
    assert f"= {lag} queued requests per replica" in printed
    assert f"{memory}Mi" in (out / "sizing.md").read_text()

    objects = _rendered(local_cluster, out)
    hpa = objects["HorizontalPodAutoscaler/inference-worker"]["spec"]
    (lag_metric,) = [m for m in hpa["metrics"] if m["type"] == "Pods"]
    assert (hpa["minReplicas"], hpa["maxReplicas"], lag_metric["pods"]["target"]["averageValue"]) == (2, 6, str(lag))
    scaled = objects["ScaledObject/inference-worker"]["spec"]
    (kafka,) = [t for t in scaled["triggers"] if t["type"] == "kafka"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"], kafka["metadata"]["lagThreshold"]) == (2, 6, str(lag))
    worker = objects["Deployment/inference-worker"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert worker["spec"]["replicas"] == 2
    assert container["resources"]["requests"] == {"cpu": "1", "memory": f"{memory}Mi"}
    assert {"name": "INFERENCE_TORCH_THREADS", "value": "1"} in container["env"]
    # The rest of PR1's kustomization is untouched: the API's HPA and the adapter rules are still there.
    api_hpa = next(d for d in yaml.safe_load_all((size_deployment.PR1 / "hpa.yaml").read_text())
                   if d["metadata"]["name"] == "inference-api")
    assert objects["HorizontalPodAutoscaler/inference-api"]["spec"] == api_hpa["spec"]
    local_cluster.kubectl("create", "namespace", "monitoring", check=False)
    result = local_cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-k", str(out), check=False)
    assert result.returncode == 0, result.stderr
    # created, or configured where an earlier test of the session applied the README's commands
    assert re.search(r"scaledobject.keda.sh/inference-worker (created|configured|unchanged) \(server dry run\)",
                     result.stdout), result.stdout


def test_an_objective_below_the_batch1_latency_exits_2(pr4_report, batching, tmp_path, capsys):
    row = json.loads(pr4_report.read_text())["models"][0]
    p95 = row["single_stream_latency_ms_p90"] / 2
    code = run_cli(size_deployment.main, size_deployment.get_args_parser(),
                   _argv("tiny", tmp_path, p95, 1, 10, "--report", str(pr4_report)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "the objective cannot be met" in err and "below the model's own batch-1 latency" in err
    assert not (tmp_path / "kustomization.yaml").exists()


def test_a_batching_delay_that_leaves_no_queueing_time_exits_2(pr4_report, tmp_path, capsys, monkeypatch):
    row = json.loads(pr4_report.read_text())["models"][0]
    monkeypatch.setenv("INFERENCE_MAX_BATCH_DELAY_MS", str(1000))
    code = run_cli(size_deployment.main, size_deployment.get_args_parser(),
                   _argv("tiny", tmp_path, row["single_stream_latency_ms_p90"] * 2, 1, 10, "--report",
                         str(pr4_report)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be met under load: max_batch_delay_ms 1000" in err


@pytest.mark.slow
def test_measures_through_pr4_with_the_registrys_batching(tiny_model, tmp_path, capsys):
    registry = write_registry(tmp_path / "registry.yaml", {"small": {"artifact": tiny_model, "max_batch_size": 4,
                                                                     "max_batch_delay_ms": 2}})
    out = tmp_path / "sizing"
    args = size_deployment.get_args_parser().parse_args(_argv("small", out, 100, 1, 2, "--registry", str(registry),
                                                              "--threads", "1"))
    sizing = size_deployment.main(args)
    report = json.loads((out / "pr4" / "benchmark.json").read_text())
    assert sorted(b["batch_size"] for b in report["per_batch"]) == [1, 2, 4]
    assert report["models"][0]["offline_batch_size"] == 4
    assert (sizing.max_batch_size, sizing.max_batch_delay_ms, sizing.cpu) == (4, 2.0, "1")
    assert sizing.source == str(out / "pr4" / "benchmark.json")
    assert (out / "kustomization.yaml").is_file() and "registry" in capsys.readouterr().out
