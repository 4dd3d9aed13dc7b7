"""End-to-end benchmark of the async service beside the same model run on its own, in one bounded run.

    python PR2_async_inference/benchmarks/bench_e2e.py --model models/quantized_model.pt \\
        --requests 160 --concurrency 16 --low-load-requests 30 --output runs/pr2_bench/e2e.md

For each configuration (batching on/off, 1 and 2 workers) it starts a local stack (``--broker``: Apache Kafka by
default, at the clients' default fetch settings; Tansu on request; API and workers on 127.0.0.1), sends an
untimed warm-up until the broker's JIT goes quiet (:func:`warm_up`), then a bounded closed-loop burst of JPEG
photos (``--concurrency`` clients, at most ``--requests`` requests and ``--time-limit-s`` seconds), then a
low-load run (one client), and stops the stack. Clients get their results as ``--client`` says: in the answer
to ``POST /inference?wait=S`` (one call, the default) or by a long-polling GET after the 202 (two calls).
Before each configuration it times the model outside the service (loaded alone in its own process, the project's
timing method: batch ``--batch-size`` throughput and batch-1 latency) so both figures come from the same minutes
of a shared machine. Reported per row, beside the CPU (``cpu``: model, usable cores, ISA flags): e2e throughput
and p50/p95/p99, its ratio to that batched throughput (the ``inproc_`` figures), the p50 the service adds over
that batch-1 latency at low load with the median of each hop of a request's way there (``load_test.HOPS``), and
the CPU milliseconds each process (broker - the JVM on Apache Kafka -, API, workers, this load generator) spent
per request in the loaded run: on one machine they all share its cores.
The workers' CPU outside the forward pass is their CPU minus the forward passes' CPU, read from the workers'
``inference_forward_cpu_seconds_total`` counter; the service overhead is API + broker + workers outside the
forward pass. ``e2e_vs_inproc_cpu_bound`` is the ratio those CPU costs allow on the cores this process may use,
were the cores never idle (:func:`cpu_bound_ratio`): the measured ratio can approach it but cannot pass it, so it
tells the cost per request from how well the pipeline keeps the cores busy.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from modelops.artifact import read_manifest
from modelops.cpu import cpu_info, cpu_summary
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.results import markdown_table, write_results
from PR2_async_inference.load_test import CLIENT_MODES, HOPS, run_load
from PR2_async_inference.local_stack import BROKER_KINDS, Stack, start_stack, stop_stack
from PR2_async_inference.processes import interrupt_on_stop_signals
from PR2_async_inference.registry import write_registry

logger = logging.getLogger(__name__)

CONFIGS = {
    "batching-1w": {"workers": 1, "batching": True},
    "no-batching-1w": {"workers": 1, "batching": False},
    "batching-2w": {"workers": 2, "batching": True},
    "no-batching-2w": {"workers": 2, "batching": False},
}


def in_process(model: Path, batch_size: int, threads: int, iters: int) -> dict[str, float]:
    """The model alone, loaded only in its own process (:func:`modelops.model_process.time_artifacts`): batched
    throughput (samples/s) and batch-1 p50 latency."""
    batch_sizes = list(dict.fromkeys((batch_size, 1)))
    times = time_artifacts({"model": model}, batch_sizes, iters, options=LoadOptions(threads=threads))
    if times.errors:
        raise RuntimeError(f"timing {model} alone failed: {times.errors['model'].splitlines()[0]}")
    batched, single = times.stats("model", batch_size), times.stats("model", 1)
    return {"inproc_samples_per_s": batch_size / (batched["latency_ms_p50"] / 1000),
            "inproc_b1_latency_ms_p50": single["latency_ms_p50"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


#: HotSpot names its JIT compiler threads "C1 CompilerThread0", "C2 CompilerThread0", ... (Linux cuts a thread's
#: name to 15 characters: "C2 CompilerThre").
JIT_THREAD_PREFIXES = ("C1 CompilerThre", "C2 CompilerThre")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time each live thread of a process has used so far, summed by thread name (as Linux
    keeps it, cut to 15 characters). psutil gives the times of a process's threads but not their names."""
    times: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        times[name] = times.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime, stime: proc(5)
    return times


def jit_cpu_seconds(pid: int) -> float:
    """User + system CPU time a JVM's JIT compiler threads have used so far (0 for a process without any, such as
    Tansu, or where /proc has no per-thread names). A broker's JIT compiles its hot paths over its first
    thousands of requests; a long-serving broker has finished, so this tells warm-up from serving."""
    return sum(seconds for name, seconds in thread_cpu_seconds(pid).items() if name.startswith(JIT_THREAD_PREFIXES))


FORWARD_CPU_METRIC = "inference_forward_cpu_seconds_total"


def metric_sum(text: str, name: str) -> float | None:
    """Sum of every sample of a Prometheus series in ``text`` (None when the series is absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name]
    return sum(values) if values else None


def forward_cpu_seconds(stack: Stack) -> float:
    """CPU the workers spent in forward passes so far (their ``inference_forward_cpu_seconds_total``; a worker
    that has run no forward pass yet has no sample of it)."""
    import httpx

    total = 0.0
    for worker in stack.workers:
        text = httpx.get(worker.info["metrics_url"] + "/metrics", timeout=10).text
        total += metric_sum(text, FORWARD_CPU_METRIC) or 0.0
    return total


def cpu_per_request(stack: Stack) -> dict[str, float]:
    """Counters read before and after a run; :func:`cpu_ms_per_request` turns two readings into per request."""
    pids = {"broker": [stack.broker.pid], "api": [stack.api.pid], "workers": [w.pid for w in stack.workers],
            "loadgen": [os.getpid()]}
    reading = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    reading["forward"] = forward_cpu_seconds(stack)
    reading["broker_jit"] = jit_cpu_seconds(stack.broker.pid)
    return reading


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], done: int) -> dict[str, Any]:
    per_req = {name: (after[name] - before[name]) * 1000 / done
               for name in ("broker", "broker_jit", "api", "workers", "loadgen", "forward")}
    outside = per_req["workers"] - per_req["forward"]
    return {
        **{f"cpu_ms_per_req_{name}": round(value, 2) for name, value in per_req.items()},
        "cpu_ms_per_req_workers_outside_forward": round(outside, 2),
        "cpu_ms_per_req_service_overhead": round(per_req["api"] + per_req["broker"] + outside, 2),
    }


def cpu_bound_ratio(cpu_ms: dict[str, Any], inproc_samples_per_s: float, cores: int) -> float:
    """The e2e / in-process throughput ratio that ``cpu_ms`` (from :func:`cpu_ms_per_request`) allows on ``cores``
    cores kept busy: every process here shares them, so at most ``cores * 1000 / (CPU ms per request)`` requests
    per second get through."""
    total = sum(cpu_ms[f"cpu_ms_per_req_{name}"] for name in ("broker", "api", "workers", "loadgen"))
    return cores * 1000 / total / inproc_samples_per_s if total > 0 else float("inf")


def photo_payloads(shape: list[int], count: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """Real photos as a client would send them: random crops of scikit-learn's two bundled JPEG photos
    (china.jpg, flower.jpg), resized to the model's input and JPEG-encoded at quality 90."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    channels, height, width = shape
    payloads = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 2, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        img = Image.fromarray(photo[top : top + side, left : left + side]).resize((width, height))
        buf = io.BytesIO()
        img.convert("L" if channels == 1 else "RGB").save(buf, "JPEG", quality=90)
        payloads.append({"data": base64.b64encode(buf.getvalue()).decode()})
    return payloads


WARMUP_ROUND = 250


def warm_up(stack: Stack, args: argparse.Namespace, common: dict[str, Any]) -> int:
    """Untimed load at the loaded run's concurrency until the stack serves as a long-running one would; returns
    the requests sent. The worker's first batches allocate, and the broker's JVM compiles its hot paths over its
    first few thousand requests, which cost it more CPU than later ones, most of the difference its JIT compiler's
    threads (``docs/measurements/broker_warmup.py`` prints the JIT's share per round). So after
    ``--warmup-requests`` it goes on in rounds of :data:`WARMUP_ROUND` until a round costs the broker's JIT at
    most ``--warmup-jit-ms`` per request, or ``--warmup-max-requests`` are sent (a broker without a JIT, Tansu,
    stops after one round)."""
    run_load(stack.api_url, requests=args.warmup_requests, concurrency=args.concurrency, **common)
    sent = args.warmup_requests
    while sent < args.warmup_max_requests:
        before = jit_cpu_seconds(stack.broker.pid)
        done = run_load(stack.api_url, requests=WARMUP_ROUND, concurrency=args.concurrency, **common)["succeeded"]
        sent += WARMUP_ROUND
        jit_ms = (jit_cpu_seconds(stack.broker.pid) - before) * 1000 / max(1, done)
        logger.info("warm-up: %d requests sent, the broker's JIT %.2f ms per request in the last %d",
                    sent, jit_ms, WARMUP_ROUND)
        if jit_ms <= args.warmup_jit_ms:
            break
    return sent


def run_config(name: str, model: Path, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    config = CONFIGS[name]
    registry = write_registry(log_dir / f"registry-{name}.yaml", {"image_classification": model})
    shape = read_manifest(model).input_shape
    payloads = photo_payloads(shape)
    stack = start_stack(registry, workers=config["workers"], log_dir=log_dir / name, broker=args.broker,
                        max_batch_size=args.batch_size if config["batching"] else 1,
                        max_batch_delay_ms=args.batch_delay_ms if config["batching"] else 0,
                        torch_threads=args.threads, publish_running=args.publish_running,
                        fetch_max_wait_ms=args.fetch_max_wait_ms, runtime_spinning=args.runtime_spinning)
    try:
        common = {"time_limit_s": args.time_limit_s, "payloads": payloads, "client_mode": args.client}
        warmup = warm_up(stack, args, common)
        before = cpu_per_request(stack)
        loaded = run_load(stack.api_url, requests=args.requests, concurrency=args.concurrency,
                          **common)
        cpu_ms = cpu_ms_per_request(before, cpu_per_request(stack), max(1, loaded["succeeded"]))
        low = run_load(stack.api_url, requests=args.low_load_requests, concurrency=1, **common)
    finally:
        stop_stack(stack)
    return {"config": name, "broker": stack.broker_kind, "client": args.client, "workers": config["workers"],
            "max_batch_size": args.batch_size if config["batching"] else 1,
            "e2e_throughput_rps": loaded["throughput_rps"], "e2e_latency_ms_p50": loaded["latency_ms_p50"],
            "e2e_latency_ms_p95": loaded["latency_ms_p95"], "e2e_latency_ms_p99": loaded["latency_ms_p99"],
            "e2e_batch_size_mean": loaded["batch_size_mean"], "succeeded": loaded["succeeded"],
            "errors": loaded["errors"], "warmup_requests": warmup, "low_load_latency_ms_p50": low["latency_ms_p50"],
            **{f"low_load_{hop}_p50": low[f"{hop}_p50"] for hop in HOPS}, **cpu_ms}


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = Path(args.model)
    if read_manifest(model) is None:
        raise UsageError(f"{model} has no manifest ({model}.json); pass a modelops artifact")
    torch.set_num_threads(args.threads)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pr2-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    rows, inproc = [], []
    for name in args.configs:
        inproc.append(in_process(model, args.batch_size, args.threads, args.iters))  # interleaved with e2e runs
        logger.info("in-process: %s", inproc[-1])
        row = run_config(name, model, args, log_dir)
        logger.info("%s: %s", name, row)
        rows.append(row)
    inproc.append(in_process(model, args.batch_size, args.threads, args.iters))
    samples_per_s = statistics.median(r["inproc_samples_per_s"] for r in inproc)
    b1_p50 = statistics.median(r["inproc_b1_latency_ms_p50"] for r in inproc)
    cpu, cores = cpu_summary(), cpu_info()["usable_cores"]
    for row in rows:
        row["cpu"] = cpu
        row["inproc_samples_per_s"] = round(samples_per_s, 1)
        row["e2e_vs_inproc_throughput"] = round(row["e2e_throughput_rps"] / samples_per_s, 3)
        row["e2e_vs_inproc_cpu_bound"] = round(cpu_bound_ratio(row, samples_per_s, cores), 3)
        row["inproc_b1_latency_ms_p50"] = round(b1_p50, 2)
        low = row["low_load_latency_ms_p50"]
        row["added_latency_ms_p50"] = round(low - b1_p50, 2) if low is not None else None
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="E2E throughput/latency of the async service vs in-process.",
                                     add_help=add_help)
    parser.add_argument("--model", required=True, help="artifact to serve (e.g. models/quantized_model.pt)")
    parser.add_argument("--configs", nargs="+", default=["batching-1w", "no-batching-1w", "batching-2w"],
                        choices=sorted(CONFIGS), help="configurations to run (default: batching-1w "
                        "no-batching-1w batching-2w)")
    parser.add_argument("--requests", type=int, default=160, help="requests per loaded run (default: 160)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the loaded run (default: 16)")
    parser.add_argument("--warmup-requests", type=int, default=2000,
                        help="untimed requests before each loaded run, at least (default: 2000)")
    parser.add_argument("--warmup-jit-ms", type=float, default=0.1,
                        help=f"then more, in rounds of {WARMUP_ROUND}, until a round costs the broker's JIT "
                        "compiler at most this much CPU per request (default: 0.1 ms)")
    parser.add_argument("--warmup-max-requests", type=int, default=8000,
                        help="untimed requests before each loaded run, at most (default: 8000)")
    parser.add_argument("--low-load-requests", type=int, default=30,
                        help="requests of the one-client run (default: 30)")
    parser.add_argument("--time-limit-s", type=float, default=60.0, help="time limit per run (default: 60)")
    parser.add_argument("-b", "--batch-size", type=int, default=16, help="max batch size (default: 16)")
    parser.add_argument("--batch-delay-ms", type=float, default=5.0, help="max batching delay (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads per model (default: 2)")
    parser.add_argument("--broker", choices=BROKER_KINDS, default="kafka",
                        help="kafka: Apache Kafka (needs Java); tansu; auto: Kafka when Java is there "
                        "(default: kafka)")
    parser.add_argument("--client", choices=CLIENT_MODES, default="one-call",
                        help="how the load generator's clients get results: one-call (POST ?wait=S answers with "
                        "the final state) or two-call (the 202, then a long-polling GET) (default: one-call)")
    parser.add_argument("--publish-running", action="store_true",
                        help="workers publish a 'running' state per request (INFERENCE_PUBLISH_RUNNING; default: "
                        "off, the service's setting)")
    parser.add_argument("--runtime-spinning", action="store_true",
                        help="workers' ONNX Runtime threads spin-wait between batches, its own default "
                        "(INFERENCE_RUNTIME_SPINNING; default: off, the service's setting)")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=None,
                        help="consumers' fetch wait (default: the settings' 500 ms on Apache Kafka, which answers "
                        "a fetch when data arrives; local_stack's polling interval on Tansu)")
    parser.add_argument("--iters", type=int, default=20, help="in-process timed iterations (default: 20)")
    parser.add_argument("--log-dir", default=None, help="process logs (default: a temp dir)")
    parser.add_argument("--output", default=None, help="write the table (.md/.csv/.json) here (default: none)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("requests", "warmup_requests", "concurrency", "low_load_requests", "batch_size", "threads",
                 "iters"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    interrupt_on_stop_signals()  # SIGTERM, like Ctrl-C, stops the stack being measured
    rows = run_benchmark(args)
    if args.output:
        write_results(args.output, rows)
    print(markdown_table(rows))
    print(json.dumps(rows))
    return {"rows": rows}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
