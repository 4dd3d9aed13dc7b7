"""sizing_proof.py on the local control plane: the reconciler makes the worker processes and the consumer group
follow the Deployment's replicas, and a short proof run of a sizing made by size_deployment.py (PR4 measuring a
tiny model) answers every request and reports the predicted count from the sizing's own inputs and a verdict."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from modelops.artifact import Manifest
from modelops.cli import run_cli
from modelops.saving import save_artifact
from PR1_horizontal_pod_autoscaling import size_deployment, sizing_proof
from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.cluster.proof_report import analyse, write_outputs
from PR1_horizontal_pod_autoscaling.cluster.worker_reconciler import WORKER, WorkerReconciler, group_members
from PR2_async_inference.benchmarks.bench_e2e import photo_payloads
from PR2_async_inference.local_stack import Stack, start_stack, stop_stack
from PR2_async_inference.registry import write_registry
from tests.conftest import tiny_classifier

pytestmark = pytest.mark.slow
SIDE = 16
GROUP = "inference-workers"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_artifact(tiny_classifier(SIDE), path, Manifest(num_classes=10, input_shape=[3, SIDE, SIDE],
                                                        labels=[str(i) for i in range(10)]), fmt="torchscript")
    return path


@pytest.fixture(scope="module")
def sizing_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """size_deployment.py as a user runs it: PR4 measures the tiny model on one thread."""
    out = tmp_path_factory.mktemp("sizing")
    args = size_deployment.get_args_parser().parse_args([
        "--model", str(tiny_model), "--threads", "1", "--p95-ms", "500", "--peak-rps", "20", "--base-rps", "5",
        "--output-dir", str(out)])
    size_deployment.main(args)
    return out


@pytest.fixture(scope="module")
def stack(tiny_model: Path, sizing_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Apache Kafka and the API with no worker, the sizing's batching and threads: workers come from the
    reconciler."""
    folder = tmp_path_factory.mktemp("proof_stack")
    registry = write_registry(folder / "model_registry.yaml", {sizing_proof.MODEL: {"artifact": tiny_model}})
    overrides = sizing_proof.stack_overrides(sizing_proof.load_sizing(sizing_dir))
    stack = start_stack(registry, workers=0, log_dir=folder / "logs", broker="kafka", **overrides)
    try:
        yield stack
    finally:
        stop_stack(stack)


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not after {timeout_s:.0f} s")


def test_reconciler_makes_the_consumer_group_follow_the_replicas(local_cluster: ControlPlane, stack: Stack,
                                                                  sizing_dir: Path) -> None:
    namespace = "reconciler-test"
    *_, deployment, _ = sizing_proof.sized_objects(local_cluster, sizing_dir, bootstrap=stack.bootstrap,
                                                   group=GROUP, topic="inference-requests")
    local_cluster.kubectl("create", "namespace", namespace, check=False)
    local_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(deployment))
    cap = 3
    with WorkerReconciler(local_cluster, namespace, stack, cap=cap) as reconciler:
        # Scaled by hand (no autoscaler in this namespace): each count in turn, one above the cap.
        for replicas in (2, cap + 1, 1):
            local_cluster.kubectl("scale", "deployment", WORKER, "-n", namespace, f"--replicas={replicas}")
            expected = min(replicas, cap)
            wait_until(lambda expected=expected: reconciler.live() == expected
                       and group_members(stack.bootstrap, GROUP) == expected, 180,
                       f"{expected} workers in the consumer group")
            assert len(stack.workers) == expected
        reconciler.check()
        actions = [event["action"].split()[0] for event in reconciler.event_rows()]
    # Started 1 (the sized minimum), then 2, then the cap; stopped down to 1; nothing died on its own.
    assert actions.count("start") == cap and actions.count("stop") == cap - 1
    assert stack.workers == []  # leaving the block stopped every worker it started


def test_a_short_proof_run_reports_the_prediction_and_a_verdict(local_cluster: ControlPlane, stack: Stack,
                                                                 sizing_dir: Path, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    sizing = json.loads((sizing_dir / "sizing.json").read_text())
    rate, duration = 10.0, 30.0
    shape = next(m for m in httpx.get(f"{stack.api_url}/models", timeout=10).json()
                 if m["name"] == sizing_proof.MODEL)["input_shape"]
    run = sizing_proof.run_proof(local_cluster, stack, sizing_dir, sizing, photo_payloads(shape, count=4),
                                 rate_rps=rate, duration_s=duration, namespace="sizing-proof-test",
                                 scale_down_window_s=15)
    result = analyse(run, sizing, sizing_dir=sizing_dir, model=tiny_model)
    paths = write_outputs(result, run, tmp_path / "proof")
    # The prediction is size_deployment's formula on the sizing's own measured inputs.
    per_replica = sizing["samples_per_s"] * (1 - sizing["headroom"])
    need = max(1, math.ceil(rate / per_replica))
    assert result["computed"]["predicted_replicas"] == max(sizing["min_replicas"], min(sizing["max_replicas"], need))
    assert result["computed"]["lag_threshold"] == sizing["lag_threshold"]
    # Every request of the bounded run was sent and answered.
    sent = math.ceil(rate * duration)
    assert result["measured"]["requests_sent"] == sent
    assert result["measured"]["statuses"] == {"succeeded": sent}
    assert result["measured"]["latency_ms_p95_settled"] is not None
    # The processes followed the Deployment through the settled period (the reconciler, sampled).
    assert result["measured"]["live_workers_settled"]["mode"] == result["measured"]["replicas_settled"]["mode"]
    assert set(result["verdict"]) == {"replicas_within_one_of_predicted", "p95_within_objective", "passed"}
    assert all(isinstance(value, bool) for value in result["verdict"].values())
    written = json.loads(paths["json"].read_text())
    assert written["verdict"] == result["verdict"] and written["timeline"]
    assert "measured" in paths["md"].read_text() and "computed" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0
    assert stack.workers == []


def test_bad_input_exits_2_with_one_line(sizing_dir: Path, tiny_model: Path, tmp_path: Path, capsys) -> None:
    parser = sizing_proof.get_args_parser()
    common = ["--model", str(tiny_model), "--output-dir", str(tmp_path)]
    assert run_cli(sizing_proof.main, parser, ["--sizing-dir", str(tmp_path / "none"), *common]) == 2
    assert run_cli(sizing_proof.main, parser, ["--sizing-dir", str(sizing_dir), "--duration-s",
                                               str(sizing_proof.MAX_DURATION_S + 1), *common]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "sizing.json" in errors[0] and "--duration-s" in errors[1]
