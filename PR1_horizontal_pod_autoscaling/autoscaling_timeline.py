"""Scale the worker Deployment for real: KEDA's HPA on the queue of a running stack, recorded as a timeline.

    python PR1_horizontal_pod_autoscaling/autoscaling_timeline.py                 # a random-weight ResNet-18
    python PR1_horizontal_pod_autoscaling/autoscaling_timeline.py --model models/quantized_model.pt
    # -> runs/autoscaling/timeline.csv, timeline.json, timeline.png, timeline.md

It starts the local control plane (``local_cluster.py``: kube-apiserver, kube-controller-manager, KEDA) and the
local stack on Apache Kafka (``PR2_async_inference/local_stack.py``: broker, API, one worker serving
``--model``), applies ``k8s-deployment.yaml`` and ``keda-scaledobject.yaml`` (pointed at the local broker, with
the short windows of the flags) into a namespace of its own, and then:

1. stops the worker, so the queue grows by exactly what is sent (pods do not run: no kubelet);
2. sends each burst of ``--bursts`` through ``POST /inference`` and waits until the Deployment has the replicas
   the HPA formula gives for the measured lag, ``min(max, ceil(lag / lagThreshold))``;
3. starts a worker, which drains the queue and answers every request, and waits until the replicas are back at
   the minimum after the scale-down window.

Once a second it samples the lag (read from the broker), KEDA's metric as the HPA sees it, the HPA's desired
replicas and the Deployment's replicas. Every run is bounded: ``sum(--bursts)`` requests and ``--timeout``
seconds per phase.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from PR1_horizontal_pod_autoscaling.cluster.control_plane import ControlPlane
from PR1_horizontal_pod_autoscaling.cluster.scaling import (
    ScalingSettings,
    Timeline,
    expected_replicas,
    scaledobject_overlay,
)
from PR1_horizontal_pod_autoscaling.cluster.toolchain import KEDA_VERSION, KUBERNETES_VERSION
from PR2_async_inference.local_stack import Stack
from PR2_async_inference.processes import stop_process

logger = logging.getLogger(__name__)
PR1_DIR = Path(__file__).resolve().parent
MAX_REQUESTS = 1000


def apply_worker_objects(plane: ControlPlane, namespace: str, stack: Stack, settings: ScalingSettings) -> int:
    """The namespace, k8s-deployment.yaml and the ScaledObject overlay; returns the ScaledObject's maximum."""
    import yaml

    plane.kubectl("create", "namespace", namespace, check=False)
    plane.kubectl("apply", "-n", namespace, "-f", str(PR1_DIR / "k8s-deployment.yaml"))
    env = stack.env
    group = env.get("INFERENCE_WORKER_GROUP", "inference-workers")
    topic = env.get("INFERENCE_REQUESTS_TOPIC", "inference-requests")
    scaled = scaledobject_overlay(stack.bootstrap, group, topic, settings)
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(scaled))
    return int(scaled["spec"]["maxReplicaCount"])


def send_burst(api_url: str, model_name: str, payload: dict[str, Any], count: int) -> list[str]:
    """``count`` POST /inference requests; returns their ids (each answered 202)."""
    ids = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for _ in range(count):
            response = client.post("/inference", json={"model_name": model_name, **payload})
            if response.status_code != 202:
                raise RuntimeError(f"POST /inference answered {response.status_code}: {response.text[:200]}")
            ids.append(response.json()["request_id"])
    return ids


def wait_answered(api_url: str, ids: list[str], timeout_s: float) -> dict[str, int]:
    """Poll every request until it is final; returns the count per final status."""
    from PR2_async_inference.messaging.messages import FINAL_STATES

    pending, statuses = set(ids), {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while pending and time.monotonic() < deadline:
            for request_id in list(pending):
                body = client.get(f"/inference/{request_id}").json()
                if body.get("status") in FINAL_STATES:
                    statuses[body["status"]] = statuses.get(body["status"], 0) + 1
                    pending.discard(request_id)
            time.sleep(0.5)
    if pending:
        statuses["unanswered"] = len(pending)
    return statuses


def run_scenario(plane: ControlPlane, stack: Stack, model_name: str, payload: dict[str, Any], *,
                 namespace: str = "autoscaling", bursts: tuple[int, ...] = (35, 60),
                 settings: ScalingSettings = ScalingSettings(), timeout_s: float = 120) -> dict[str, Any]:
    """The scenario of the module docstring on a running cluster and stack; returns the timeline and events."""
    if sum(bursts) > MAX_REQUESTS:
        raise ValueError(f"at most {MAX_REQUESTS} requests in all, got {sum(bursts)}")
    max_replicas = apply_worker_objects(plane, namespace, stack, settings)
    env = stack.env
    timeline = Timeline(plane, namespace, stack.bootstrap, env.get("INFERENCE_WORKER_GROUP", "inference-workers"),
                        env.get("INFERENCE_REQUESTS_TOPIC", "inference-requests"), settings, max_replicas)
    events: list[dict[str, Any]] = []
    # Warm: one answered request commits the group's offsets, and KEDA's HPA exists at the minimum.
    warm = send_burst(stack.api_url, model_name, payload, 1)
    assert wait_answered(stack.api_url, warm, timeout_s).get("succeeded") == 1, "the warm-up request failed"
    timeline.wait_for(lambda s: s.hpa_desired == settings.min_replicas and s.replicas == settings.min_replicas,
                      timeout_s, "KEDA's HPA at the minimum")
    timeline.phase = "workers stopped"
    for worker in list(stack.workers):
        stop_process(worker)
        stack.workers.remove(worker)
    ids: list[str] = []
    for number, count in enumerate(bursts, 1):
        timeline.phase = f"burst {number}"
        sent_at = timeline.sample().t_s
        ids += send_burst(stack.api_url, model_name, payload, count)
        # The lag is exactly what was sent and nothing consumes it: the target is known now.
        sent = len(ids)
        target = expected_replicas(sent, settings.lag_threshold, settings.min_replicas, max_replicas)
        reached = timeline.wait_for(lambda s, target=target, sent=sent: s.replicas == target and s.lag == sent,
                                    timeout_s, f"{target} replicas after burst {number}")
        events.append({"event": f"burst {number}", "requests": count, "lag": reached.lag, "expected": target,
                       "replicas": reached.replicas, "sent_at_s": sent_at, "reached_at_s": reached.t_s,
                       "seconds_to_scale": round(reached.t_s - sent_at, 1),
                       "hpa_syncs_to_scale": round((reached.t_s - sent_at) / plane.hpa_sync_s, 2)})
    timeline.phase = "draining"
    drain_at = timeline.sample().t_s
    stack.add_worker()
    drained = timeline.wait_for(lambda s: s.lag == 0, timeout_s, "queue drained")
    timeline.phase = "scale-down"
    down = timeline.wait_for(lambda s: s.replicas == settings.min_replicas,
                             timeout_s + settings.scale_down_window_s, "back at the minimum")
    # The HPA's recommendation falls to the minimum once the lag is at or under lag_threshold x min_replicas,
    # before it reaches 0: the stabilization window runs from the last sample above that.
    last_over = max(s.t_s for s in timeline.samples if s.t_s <= down.t_s and s.expected > settings.min_replicas)
    events.append({"event": "drain", "worker_started_at_s": drain_at, "lag_zero_at_s": drained.t_s,
                   "replicas": down.replicas, "reached_at_s": down.t_s,
                   "seconds_after_lag_zero": round(down.t_s - drained.t_s, 1),
                   "seconds_after_lag_over_threshold": round(down.t_s - last_over, 1),
                   "scale_down_window_s": settings.scale_down_window_s})
    statuses = wait_answered(stack.api_url, ids, timeout_s)
    return {"settings": {**settings.__dict__, "max_replicas": max_replicas, "hpa_sync_s": plane.hpa_sync_s},
            "events": events, "answered": statuses, "requests": len(ids), "timeline": timeline.rows()}


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """timeline.csv / .json, a plot (timeline.png) and a markdown summary (timeline.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["timeline"]
    paths = {"csv": out_dir / "timeline.csv", "json": out_dir / "timeline.json",
             "png": out_dir / "timeline.png", "md": out_dir / "timeline.md"}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps(result, indent=2))
    fig, (lag_ax, rep_ax) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [r["t_s"] for r in rows]
    lag_ax.plot(t, [r["lag"] for r in rows], label="consumer lag (broker)")
    lag_ax.plot(t, [r["keda_metric"] for r in rows], "--",
                label="KEDA's lag metric as the HPA read it (capped at partitions x lagThreshold)")
    lag_ax.set_ylabel("requests")
    lag_ax.legend(loc="upper left", fontsize="small")
    rep_ax.step(t, [r["expected"] for r in rows], where="post", color="grey", linestyle=":",
                label="formula: min(max, ceil(lag / lagThreshold))")
    rep_ax.step(t, [r["hpa_desired"] for r in rows], where="post", linestyle="--", label="HPA desiredReplicas")
    rep_ax.step(t, [r["replicas"] for r in rows], where="post", linewidth=2, alpha=0.7,
                label="Deployment spec.replicas")
    rep_ax.set_ylabel("replicas")
    rep_ax.set_xlabel("seconds")
    rep_ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"inference-worker scaled by KEDA {KEDA_VERSION} on Kubernetes {KUBERNETES_VERSION}")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=100)
    plt.close(fig)
    lines = ["| event | lag | formula | replicas | seconds | HPA syncs |", "|---|---|---|---|---|---|"]
    for event in result["events"]:
        if event["event"].startswith("burst"):
            lines.append(f"| {event['event']} (+{event['requests']} requests) | {event['lag']} | {event['expected']} "
                         f"| {event['replicas']} | {event['seconds_to_scale']} | {event['hpa_syncs_to_scale']} |")
        else:
            lines.append(f"| queue drained, scale-down | 0 | {result['settings']['min_replicas']} | "
                         f"{event['replicas']} | {event['seconds_after_lag_over_threshold']} after the lag fell to the "
                         f"threshold, {event['seconds_after_lag_zero']} after lag 0 (window "
                         f"{event['scale_down_window_s']}) | - |")
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("--model", default=None,
                        help="the artifact the worker serves, any PR3 output or .pt (default: a random-weight "
                        "ResNet-18 at 32x32: the scenario times the autoscaler, not the model)")
    parser.add_argument("--output-dir", default="runs/autoscaling", help="default: runs/autoscaling")
    parser.add_argument("--bursts", default="35,60",
                        help="requests per burst, comma-separated; the worker is stopped meanwhile (default: 35,60)")
    parser.add_argument("--lag-threshold", type=int, default=ScalingSettings.lag_threshold,
                        help=f"the ScaledObject's lagThreshold (default: {ScalingSettings.lag_threshold})")
    parser.add_argument("--scale-down-window", type=int, default=ScalingSettings.scale_down_window_s,
                        metavar="SECONDS", help="the HPA's scale-down stabilization window "
                        f"(default: {ScalingSettings.scale_down_window_s}; the manifest's is 300)")
    parser.add_argument("--hpa-sync-period", type=int, default=5, metavar="SECONDS",
                        help="the HPA controller's sync period (default: 5; Kubernetes' own is 15)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per phase at most (default: 120)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from modelops.errors import UsageError
    from PR1_horizontal_pod_autoscaling.local_cluster import start_local_cluster, stop_local_cluster
    from PR2_async_inference.local_stack import start_stack, stop_stack
    from PR2_async_inference.processes import interrupt_on_stop_signals
    from PR2_async_inference.registry import write_registry

    try:
        bursts = tuple(int(part) for part in args.bursts.split(","))
    except ValueError:
        raise UsageError(f"--bursts takes comma-separated request counts, e.g. 35,60; got {args.bursts!r}") from None
    if not bursts or min(bursts) < 1 or sum(bursts) > MAX_REQUESTS:
        raise UsageError(f"--bursts: each count >= 1 and at most {MAX_REQUESTS} in all, got {args.bursts!r}")
    if args.lag_threshold < 1:
        raise UsageError(f"--lag-threshold must be >= 1, got {args.lag_threshold}")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from PR1_horizontal_pod_autoscaling.measure_footprint import random_model_artifact

        model = random_model_artifact(out_dir, "resnet18", 32)
    else:
        model = Path(args.model)
        if not model.exists():
            raise UsageError(f"--model {model}: no such file")
    registry = write_registry(out_dir / "model_registry.yaml", {"model": {"artifact": model}})
    settings = ScalingSettings(lag_threshold=args.lag_threshold, scale_down_window_s=args.scale_down_window)
    interrupt_on_stop_signals()
    plane = start_local_cluster(out_dir / "cluster", hpa_sync_s=args.hpa_sync_period)
    try:
        stack = start_stack(registry, log_dir=out_dir / "stack", broker="kafka")
        try:
            shape = httpx.get(f"{stack.api_url}/models", timeout=10).json()
            input_shape = next(m for m in shape if m["name"] == "model")["input_shape"]
            from PR2_async_inference.load_test import make_payloads

            payload = make_payloads(input_shape, count=1)[0]
            result = run_scenario(plane, stack, "model", payload, bursts=bursts, settings=settings,
                                  timeout_s=args.timeout)
        finally:
            stop_stack(stack)
    finally:
        stop_local_cluster(plane)
    paths = write_outputs(result, out_dir)
    print(paths["md"].read_text())
    print(json.dumps({"events": result["events"], "answered": result["answered"],
                      **{k: str(v) for k, v in paths.items()}}))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
