"""Prove a sizing on the local cluster: the sized autoscaler, a fixed request rate, and the replicas and p95 it gives.

    python PR1_horizontal_pod_autoscaling/size_deployment.py --model runs/timing_pair/resnet18_224_int8.onnx \\
        --threads 1 --p95-ms 1000 --peak-rps 50 --base-rps 20 --output-dir runs/sizing_proof/sizing
    python PR1_horizontal_pod_autoscaling/sizing_proof.py --sizing-dir runs/sizing_proof/sizing \\
        --model runs/timing_pair/resnet18_224_int8.onnx --output-dir runs/sizing_proof
    # -> runs/sizing_proof/proof.json, proof.md, proof.png, requests.csv, timeline.csv

It starts the local control plane (``local_cluster.py``) and PR2's local stack on Apache Kafka with no worker and
the sizing's batching and threads, renders the sizing's overlay (``kubectl kustomize DIR``) and applies its worker
Deployment (at minReplicas) and ScaledObject (the sizing's replica bounds and lagThreshold, the Kafka trigger
pointed at the local broker, no Prometheus trigger) into a namespace of its own. A :class:`WorkerReconciler` then
plays the kubelet: it keeps as many worker processes running as the Deployment's replicas, so KEDA's HPA changes
the real consumer group. After a warm-up it sends ``--rate`` requests per second (an open loop) for
``--duration-s`` seconds and records every request's latency and, once a second, the lag, KEDA's metric, the HPA's
desired replicas, the Deployment's replicas and the live workers. ``cluster/proof_report.py`` compares the
replicas over the last third of the run with the count the sizing predicts for that rate, and the p95 of the
requests sent then with the objective.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelops.errors import UsageError
from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.cluster.open_loop import MAX_REQUESTS, rows, send_at_rate
from PR1_horizontal_pod_autoscaling.cluster.proof_report import load_average
from PR1_horizontal_pod_autoscaling.cluster.scaling import ScalingSettings, Timeline
from PR1_horizontal_pod_autoscaling.cluster.worker_reconciler import WORKER, WorkerReconciler, group_members
from PR2_async_inference.local_stack import Stack

logger = logging.getLogger(__name__)
MAX_DURATION_S = 180.0
MODEL = "model"  # the model's name in the registry the stack serves


def load_sizing(sizing_dir: Path) -> dict[str, Any]:
    """The numbers ``size_deployment.py`` wrote to ``DIR/sizing.json``; UsageError when the folder has none."""
    path = sizing_dir / "sizing.json"
    if not path.is_file() or not (sizing_dir / "kustomization.yaml").is_file():
        raise UsageError(f"--sizing-dir {sizing_dir}: no sizing.json and kustomization.yaml there; write them with "
                         "python PR1_horizontal_pod_autoscaling/size_deployment.py --output-dir DIR")
    return json.loads(path.read_text())


def sized_objects(plane: ControlPlane, sizing_dir: Path, *, bootstrap: str, group: str, topic: str,
                  scale_down_window_s: int | None = None) -> list[dict[str, Any]]:
    """The worker's ConfigMaps, Deployment and ScaledObject of the sizing's overlay, in that order, as
    ``kubectl kustomize`` renders them, with the ScaledObject's Kafka trigger pointed at the local broker and its
    Prometheus trigger dropped (the local cluster has no kube-prometheus-stack); ``scale_down_window_s`` replaces
    the HPA's scale-down window. The ConfigMaps are there because KEDA reads the scale target's environment
    (``envFrom``) before it makes the HPA, and refuses one whose ConfigMap is missing."""
    rendered = plane.kubectl("kustomize", str(sizing_dir)).stdout
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(rendered) if d}
    deployment, scaled = copy.deepcopy(docs[f"Deployment/{WORKER}"]), copy.deepcopy(docs[f"ScaledObject/{WORKER}"])
    kafka = next(t for t in scaled["spec"]["triggers"] if t["type"] == "kafka")
    kafka["metadata"].update(bootstrapServers=bootstrap, consumerGroup=group, topic=topic)
    scaled["spec"]["triggers"] = [kafka]
    if scale_down_window_s is not None:
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        behavior["scaleDown"]["stabilizationWindowSeconds"] = scale_down_window_s
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"]
    names = [ref["configMapRef"]["name"] for ref in container.get("envFrom", []) if "configMapRef" in ref]
    return [*(docs[f"ConfigMap/{name}"] for name in names), deployment, scaled]


class Sampler:
    """Samples the timeline and the live and ready workers once a second in a thread."""

    def __init__(self, timeline: Timeline, reconciler: WorkerReconciler):
        self.timeline, self.reconciler = timeline, reconciler
        self.samples: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proof-sampler", daemon=True)

    def sample(self) -> None:
        sample = self.timeline.sample()
        stack = self.reconciler.stack
        members = group_members(stack.bootstrap, stack.env.get("INFERENCE_WORKER_GROUP", "inference-workers"))
        self.samples.append({**asdict(sample), "live_workers": self.reconciler.live(),
                             "ready_workers": self.reconciler.ready(), "group_members": members})

    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            try:
                self.sample()
            except BaseException as exc:  # the caller raises it after the load
                self.error = exc
                return
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def warm_up(stack: Stack, reconciler: WorkerReconciler, timeline: Timeline, payload: dict[str, Any],
            min_replicas: int, requests: int, timeout_s: float) -> None:
    """Until the minimum's workers are ready, a few answered requests have committed the group's offsets (KEDA
    reads the lag from them), and KEDA's HPA exists and holds the Deployment at the minimum."""
    from PR1_horizontal_pod_autoscaling.autoscaling_timeline import send_burst, wait_answered

    deadline = time.monotonic() + timeout_s
    while reconciler.ready() < min_replicas:
        reconciler.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{min_replicas} worker(s) not ready after {timeout_s:.0f} s; see {stack.log_dir}")
        time.sleep(0.5)
    ids = send_burst(stack.api_url, MODEL, payload, requests)
    answered = wait_answered(stack.api_url, ids, timeout_s)
    if answered.get("succeeded") != requests:
        raise RuntimeError(f"warm-up requests not all answered: {answered}")
    timeline.phase = "warm-up"
    timeline.wait_for(lambda s: s.hpa_desired == min_replicas and s.replicas == min_replicas, timeout_s,
                      "KEDA's HPA at the minimum")


def run_proof(plane: ControlPlane, stack: Stack, sizing_dir: Path, sizing: dict[str, Any],
              payloads: list[dict[str, Any]], *, rate_rps: float, duration_s: float, namespace: str = "sizing-proof",
              scale_down_window_s: int | None = None, worker_cap: int | None = None,
              result_timeout_s: float = 60.0, setup_timeout_s: float = 180.0) -> dict[str, Any]:
    """Apply the sized objects, reconcile workers, warm up, send the fixed rate; returns everything recorded
    (times in seconds since the objects were applied; the load starts at ``load_start_s``)."""
    if math.ceil(round(rate_rps * duration_s, 6)) > MAX_REQUESTS:
        raise UsageError(f"{rate_rps:g} requests/s for {duration_s:g} s is more than {MAX_REQUESTS} requests")
    group = stack.env.get("INFERENCE_WORKER_GROUP", "inference-workers")
    topic = stack.env.get("INFERENCE_REQUESTS_TOPIC", "inference-requests")
    objects = sized_objects(plane, sizing_dir, bootstrap=stack.bootstrap, group=group, topic=topic,
                            scale_down_window_s=scale_down_window_s)
    spec = objects[-1]["spec"]
    minimum, maximum = int(spec["minReplicaCount"]), int(spec["maxReplicaCount"])
    threshold = int(spec["triggers"][0]["metadata"]["lagThreshold"])
    plane.kubectl("create", "namespace", namespace, check=False)
    origin = time.monotonic()
    for obj in objects:
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    settings = ScalingSettings(lag_threshold=threshold, min_replicas=minimum)
    timeline = Timeline(plane, namespace, stack.bootstrap, group, topic, settings, maximum)
    timeline.started = origin
    reconciler = WorkerReconciler(plane, namespace, stack, cap=worker_cap or maximum, origin=origin)
    load_before = load_average()
    with reconciler:
        warm_up(stack, reconciler, timeline, payloads[0], minimum, sizing["max_batch_size"], setup_timeout_s)
        warm = [{**row, "live_workers": None, "ready_workers": None, "group_members": None}
                for row in timeline.rows()]
        sampler = Sampler(timeline, reconciler)
        timeline.phase = "load"
        load_origin = time.monotonic()
        with sampler:
            records = send_at_rate(stack.api_url, rate_rps, duration_s,
                                   [{"model_name": MODEL, **p} for p in payloads], origin=load_origin,
                                   result_timeout_s=result_timeout_s)
        load_after = load_average()
        reconciler.check()
        if sampler.error is not None:
            raise RuntimeError(f"sampling failed: {sampler.error}") from sampler.error
        events = reconciler.event_rows()
    load_start_s = round(load_origin - origin, 3)
    requests = rows(records)
    for row in requests:  # one clock for every record: seconds since the objects were applied
        for key in ("scheduled_s", "sent_s", "done_s"):
            row[key] = None if row[key] is None else round(row[key] + load_start_s, 4)
    return {
        "rate_rps": rate_rps, "duration_s": duration_s, "load_start_s": load_start_s, "namespace": namespace,
        "hpa_sync_s": plane.hpa_sync_s, "lag_threshold": threshold, "min_replicas": minimum,
        "max_replicas": maximum, "worker_cap": worker_cap or maximum,
        "scale_down_window_s": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"].get(
            "stabilizationWindowSeconds"),
        "scale_up": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"],
        "broker": stack.broker_kind, "requests": requests, "timeline": warm + sampler.samples,
        "reconciler_events": events, "load_average": [load_before, load_after],
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--sizing-dir", required=True, help="what size_deployment.py wrote (sizing.json, "
                        "kustomization.yaml)")
    parser.add_argument("--model", required=True, help="the artifact that was sized; the workers serve it")
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: the sizing's peak)")
    parser.add_argument("--duration-s", type=float, default=90.0,
                        help=f"seconds of load, at most {MAX_DURATION_S:g} (default: 90)")
    parser.add_argument("--scale-down-window", type=int, default=None, metavar="SECONDS",
                        help="replace the HPA's scale-down stabilization window (default: the overlay's, from "
                        "keda-scaledobject.yaml)")
    parser.add_argument("--hpa-sync-period", type=int, default=5, metavar="SECONDS",
                        help="the HPA controller's sync period (default: 5; Kubernetes' own is 15)")
    parser.add_argument("--output-dir", default="runs/sizing_proof", help="default: runs/sizing_proof")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def check_args(args: argparse.Namespace, sizing: dict[str, Any]) -> float:
    """The rate to send (UsageError naming the flag when a value is out of range)."""
    rate = sizing["peak_rps"] if args.rate is None else args.rate
    if rate <= 0:
        raise UsageError(f"--rate must be > 0, got {rate:g}")
    if not 0 < args.duration_s <= MAX_DURATION_S:
        raise UsageError(f"--duration-s must be in (0, {MAX_DURATION_S:g}], got {args.duration_s:g}")
    if math.ceil(round(rate * args.duration_s, 6)) > MAX_REQUESTS:
        raise UsageError(f"--rate {rate:g} x --duration-s {args.duration_s:g} is more than {MAX_REQUESTS} requests")
    if args.scale_down_window is not None and args.scale_down_window < 0:
        raise UsageError(f"--scale-down-window must be >= 0, got {args.scale_down_window}")
    if args.hpa_sync_period < 1:
        raise UsageError(f"--hpa-sync-period must be >= 1 second, got {args.hpa_sync_period}")
    return rate


def stack_overrides(sizing: dict[str, Any]) -> dict[str, Any]:
    """The worker settings the sizing measured with: its batching and, where it says, its threads."""
    overrides = {"max_batch_size": sizing["max_batch_size"], "max_batch_delay_ms": sizing["max_batch_delay_ms"]}
    if sizing.get("cpu"):
        overrides["torch_threads"] = int(sizing["cpu"])
    return overrides


def main(args: argparse.Namespace) -> dict[str, Any]:
    from PR1_horizontal_pod_autoscaling.cluster.proof_report import analyse, write_outputs
    from PR1_horizontal_pod_autoscaling.local_cluster import start_local_cluster, stop_local_cluster
    from PR2_async_inference.benchmarks.bench_e2e import photo_payloads
    from PR2_async_inference.local_stack import start_stack, stop_stack
    from PR2_async_inference.processes import interrupt_on_stop_signals
    from PR2_async_inference.registry import write_registry

    sizing_dir, model, out_dir = Path(args.sizing_dir), Path(args.model), Path(args.output_dir)
    sizing = load_sizing(sizing_dir)
    rate = check_args(args, sizing)
    if not model.is_file():
        raise UsageError(f"--model {model}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = write_registry(out_dir / "model_registry.yaml", {MODEL: {"artifact": model}})
    interrupt_on_stop_signals()
    plane = start_local_cluster(out_dir / "cluster", hpa_sync_s=args.hpa_sync_period)
    try:
        stack = start_stack(registry, workers=0, log_dir=out_dir / "stack", broker="kafka", **stack_overrides(sizing))
        try:
            models = httpx.get(f"{stack.api_url}/models", timeout=10).json()
            shape = next(m for m in models if m["name"] == MODEL)["input_shape"]
            run = run_proof(plane, stack, sizing_dir, sizing, photo_payloads(shape), rate_rps=rate,
                            duration_s=args.duration_s, scale_down_window_s=args.scale_down_window)
        finally:
            stop_stack(stack)
    finally:
        stop_local_cluster(plane)
    result = analyse(run, sizing, sizing_dir=sizing_dir, model=model)
    paths = write_outputs(result, run, out_dir)
    print(paths["md"].read_text())
    print(json.dumps({"verdict": result["verdict"], **{k: str(v) for k, v in paths.items()}}))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
