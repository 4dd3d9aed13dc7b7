"""Throughput as deployed: the docker-compose stack, its worker on one core, beside the model in-process on one core.

    python PR2_async_inference/benchmarks/bench_compose.py --model $M --requests 600 --time-limit-s 60

The stack runs from ``docker-compose.yaml`` with an override that pins the worker container to one core
(``cpuset``, one intra-op thread) and Kafka, the topics job, the API and Prometheus to another; this process, the
load generator, runs on that other core too. The model (``--model``, served as ``quantized_model.pt`` from a temp
models folder) is timed in-process on the worker's core with one thread (bench_e2e's :func:`in_process`: its own
process, batch ``-b`` throughput) before and after the stack's run, and the stack gets bench_e2e's warm-up (until
the broker's JIT goes quiet) and then a bounded closed-loop burst of JPEG photos (load_test's :func:`run_load`).
Printed: the stack's throughput, the in-process throughput (median of the two), and their ratio. The worker's own
metrics, read inside its container before and after the burst, split the ratio in two: the model's samples per
second of forward time inside the container (beside in-process: what the container costs the model) and the share
of the burst the worker spent in forward passes (the rest: decoding, Kafka, waiting for input). The load average
before and after says how busy the machine was. The engine and images come as in ``compose_stack.py up`` (local
images by default); the stack is taken down at the end, and an engine started here is stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.artifact import read_manifest
from modelops.cpu import cpu_summary
from modelops.errors import UsageError
from PR2_async_inference import container_engine
from PR2_async_inference.benchmarks.bench_e2e import in_process, metric_sum, photo_payloads, warm_up
from PR2_async_inference.compose_stack import IMAGE_MODES, MODEL_FILE, compose_down, compose_up, container_states
from PR2_async_inference.load_test import CLIENT_MODES, run_load
from PR2_async_inference.processes import free_port, interrupt_on_stop_signals
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

PROJECT = "pr2-bench-compose"

OVERRIDE = """version: "3.9"
services:
  kafka: {{cpuset: "{other}"}}
  topics: {{cpuset: "{other}"}}
  api: {{cpuset: "{other}"}}
  prometheus: {{cpuset: "{other}"}}
  worker:
    cpuset: "{worker}"
    environment:
      INFERENCE_TORCH_THREADS: "1"
"""


@dataclass
class _Broker:
    pid: int


@dataclass
class _StackView:
    """What bench_e2e's warm-up reads of a stack: the API's URL and the broker's pid (the JVM in the Kafka
    container is a process of this host too, so its JIT threads are read from /proc as for a local broker)."""

    api_url: str
    broker: _Broker


def container_pid(project: str, service: str) -> int:
    """The host pid of a service's (only) container's main process."""
    (state,) = [s for s in container_states(project) if s["service"] == service]
    out = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", state["id"]], check=True,
                         capture_output=True, text=True).stdout
    return int(out)


def worker_forward_totals(project: str, metrics_port: int) -> dict[str, float]:
    """Samples, batches and forward seconds the worker has counted so far (its ``inference_batch_size`` and
    ``inference_latency_seconds`` histograms), read from its metrics endpoint inside its container."""
    (state,) = [s for s in container_states(project) if s["service"] == "worker"]
    read = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{metrics_port}/metrics').read().decode())"
    text = subprocess.run(["docker", "exec", state["id"], "python", "-c", read], check=True, capture_output=True,
                          text=True).stdout
    series = {"samples": "inference_batch_size_sum", "batches": "inference_batch_size_count",
              "forward_s": "inference_latency_seconds_sum"}
    return {key: metric_sum(text, name) or 0.0 for key, name in series.items()}


def pinned_in_process(model: Path, core: int, batch_size: int, iters: int) -> float:
    """Samples/s of the model alone at ``batch_size``, one thread, its process on ``core``."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # the timing process inherits it
    try:
        return in_process(model, batch_size, 1, iters)["inproc_samples_per_s"]
    finally:
        os.sched_setaffinity(0, own)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    model = Path(args.model)
    manifest = read_manifest(model)
    if manifest is None:
        raise UsageError(f"{model} has no manifest ({model}.json); pass a modelops artifact")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise UsageError(f"needs two usable cores (one for the worker, one for the rest); this process has {cores}")
    other, worker = cores[0], cores[1]
    work = Path(tempfile.mkdtemp(prefix="pr2-bench-compose-"))
    models = work / "models"
    models.mkdir()
    shutil.copy2(model, models / MODEL_FILE)
    shutil.copy2(f"{model}.json", models / f"{MODEL_FILE}.json")
    override = work / "pinning.yaml"
    override.write_text(OVERRIDE.format(other=other, worker=worker))

    load_before = os.getloadavg()[0]
    engine_state = container_engine.start_engine()
    inproc = [pinned_in_process(model, worker, args.batch_size, args.iters)]
    os.sched_setaffinity(0, {other})  # the load generator shares its core with Kafka and the API
    stack = None
    try:
        stack = compose_up(PROJECT, images=args.images, models_dir=models, api_host="127.0.0.1",
                           api_port=free_port(), prometheus_port=free_port(), kafka_port=free_port(),
                           files=[override])
        payloads = photo_payloads(manifest.input_shape)
        common = {"time_limit_s": args.time_limit_s, "payloads": payloads, "client_mode": args.client}
        view = _StackView(stack.api_url, _Broker(container_pid(PROJECT, "kafka")))
        warmup = warm_up(view, args, common)
        metrics_port = Settings().worker_metrics_port
        before, started = worker_forward_totals(PROJECT, metrics_port), time.perf_counter()
        loaded = run_load(stack.api_url, requests=args.requests, concurrency=args.concurrency, **common)
        wall_s = time.perf_counter() - started
        after = worker_forward_totals(PROJECT, metrics_port)
    finally:
        if stack is not None or container_engine.engine_running():
            compose_down(PROJECT, env=stack.env if stack else None, stop_engine=False)
        os.sched_setaffinity(0, set(cores))
    inproc.append(pinned_in_process(model, worker, args.batch_size, args.iters))
    if engine_state is not None:
        container_engine.stop_engine(engine_state)
    samples_per_s = statistics.median(inproc)
    samples, forward_s = after["samples"] - before["samples"], after["forward_s"] - before["forward_s"]
    batches = after["batches"] - before["batches"]
    return {"cpu": cpu_summary(), "model": str(model), "input_shape": manifest.input_shape,
            "worker_core": worker, "other_core": other, "max_batch_size": Settings().max_batch_size,
            "warmup_requests": warmup, "succeeded": loaded["succeeded"], "errors": loaded["errors"],
            "compose_throughput_rps": loaded["throughput_rps"], "compose_latency_ms_p50": loaded["latency_ms_p50"],
            "compose_batch_size_mean": loaded["batch_size_mean"],
            "inproc_1core_samples_per_s": [round(v, 1) for v in inproc],
            "compose_vs_inproc_throughput": round(loaded["throughput_rps"] / samples_per_s, 3),
            "worker_samples": int(samples), "worker_batch_size_mean": round(samples / batches, 2) if batches else 0.0,
            "worker_model_samples_per_s": round(samples / forward_s, 1) if forward_s else 0.0,
            "worker_model_vs_inproc": round(samples / forward_s / samples_per_s, 3) if forward_s else 0.0,
            "worker_forward_share": round(forward_s / wall_s, 3), "burst_s": round(wall_s, 2),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compose stack (worker on one core) vs in-process on one core.",
                                     add_help=add_help)
    parser.add_argument("--model", required=True, help="artifact to serve (e.g. models/quantized_model.pt)")
    parser.add_argument("--images", choices=IMAGE_MODES, default="local",
                        help="local stand-ins or the registry's images (default: local)")
    parser.add_argument("--requests", type=int, default=600, help="requests of the timed burst (default: 600)")
    parser.add_argument("--concurrency", type=int, default=2 * Settings().max_batch_size,
                        help="closed-loop clients (default: twice the workers' max batch, "
                        f"{2 * Settings().max_batch_size}, so a full batch waits while one runs)")
    parser.add_argument("--time-limit-s", type=float, default=60.0, help="time limit per run (default: 60)")
    parser.add_argument("--warmup-requests", type=int, default=2000,
                        help="untimed requests first, at least (default: 2000)")
    parser.add_argument("--warmup-jit-ms", type=float, default=0.1,
                        help="then more until a round costs the broker's JIT at most this CPU per request "
                        "(default: 0.1 ms)")
    parser.add_argument("--warmup-max-requests", type=int, default=6000,
                        help="untimed requests first, at most (default: 6000)")
    parser.add_argument("-b", "--batch-size", type=int, default=Settings().max_batch_size,
                        help=f"in-process batch size (default: the workers' max, {Settings().max_batch_size})")
    parser.add_argument("--client", choices=CLIENT_MODES, default="one-call", help="see load_test.py "
                        "(default: one-call)")
    parser.add_argument("--iters", type=int, default=20, help="in-process timed iterations (default: 20)")
    parser.add_argument("--output", default=None, help="write the result as JSON here (default: print only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("requests", "concurrency", "warmup_requests", "batch_size", "iters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    interrupt_on_stop_signals()  # SIGTERM, like Ctrl-C, takes the stack down
    result = run_benchmark(args)
    print(json.dumps(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
