"""Where a loaded local stack spends its CPU, thread by thread, and where the API's Python time goes.

    python docs/measurements/stack_profile.py --model runs/timing_pair/resnet18_224_int8.onnx

Starts the stack bench_e2e's ``batching-1w`` starts (Apache Kafka, API, one worker), warms it with ``--warmup``
requests from 16 clients, then sends ``--requests`` more while ``py-spy record --gil`` samples the process named
by ``--spy`` (only the thread holding the GIL: where Python spends CPU, not where it waits). Prints the CPU
milliseconds per request of each process's threads (by name, digits folded: the JVM's ``data-plane-kafka-*``
and JIT compiler threads, librdkafka's ``rdk:*``, Python's own) and the functions that hold the GIL longest,
self and inclusive. The raw py-spy samples go to ``--output``; the processes' logs to a temp folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelops.artifact import read_manifest
from modelops.errors import UsageError
from PR2_async_inference.benchmarks.bench_e2e import photo_payloads, thread_cpu_seconds
from PR2_async_inference.load_test import run_load
from PR2_async_inference.local_stack import start_stack, stop_stack
from PR2_async_inference.processes import interrupt_on_stop_signals
from PR2_async_inference.registry import write_registry


def thread_cpu_by_kind(pid: int) -> collections.Counter:
    """CPU seconds so far of each live thread of ``pid``, by name with trailing digits folded to N (the JVM's
    numbered handler threads, librdkafka's per-broker threads)."""
    out: collections.Counter = collections.Counter()
    for name, seconds in thread_cpu_seconds(pid).items():
        out[re.sub(r"\d+$", "N", name)] += seconds
    return out


def top_functions(raw: Path, count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self, inclusive) shares of py-spy's raw samples, the ``count`` largest of each."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames, n = stack.split(";"), int(samples)
        total += n
        own[frames[-1]] += n
        inclusive.update(dict.fromkeys(set(frames), n))
    return ([(f, n / total) for f, n in own.most_common(count)],
            [(f, n / total) for f, n in inclusive.most_common(count)])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="artifact to serve")
    parser.add_argument("--warmup", type=int, default=4000, help="untimed requests first")
    parser.add_argument("--requests", type=int, default=3000, help="requests of the profiled run")
    parser.add_argument("--spy", choices=("api", "worker", ""), default="api", help="process py-spy samples")
    parser.add_argument("--top", type=int, default=30, help="functions to print")
    parser.add_argument("--output", default="runs/stack_profile/py-spy.txt", help="raw py-spy samples")
    return parser


def main(args: argparse.Namespace) -> None:
    model = Path(args.model)
    if args.warmup < 1 or args.requests < 1:
        raise UsageError("--warmup and --requests must be >= 1")
    manifest = read_manifest(model)
    if manifest is None:
        raise UsageError(f"{model} has no manifest ({model}.json); pass a modelops artifact")
    interrupt_on_stop_signals()  # SIGTERM, like Ctrl-C, stops the stack
    log_dir = Path(tempfile.mkdtemp(prefix="pr2-bench-profile-"))
    registry = write_registry(log_dir / "registry.yaml", {"image_classification": model})
    load = {"time_limit_s": 300, "payloads": photo_payloads(manifest.input_shape),
            "client_mode": "one-call", "concurrency": 16}
    raw = Path(args.output)
    raw.parent.mkdir(parents=True, exist_ok=True)
    stack = start_stack(registry, workers=1, log_dir=log_dir / "stack", broker="kafka", max_batch_size=16,
                        max_batch_delay_ms=5, torch_threads=2)
    try:
        run_load(stack.api_url, requests=args.warmup, **load)
        pids = {"api": stack.api.pid, "broker": stack.broker.pid, "worker": stack.workers[0].pid,
                "loadgen": os.getpid()}
        before = {name: thread_cpu_by_kind(pid) for name, pid in pids.items()}
        spy = None
        if args.spy:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "-r", "250",
                                    "-f", "raw", "-o", str(raw), "-p", str(pids[args.spy])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        result = run_load(stack.api_url, requests=args.requests, **load)
        wall = time.perf_counter() - started
        if spy:
            spy.send_signal(2)  # py-spy writes its samples on SIGINT
            spy.wait(30)
        after = {name: thread_cpu_by_kind(pid) for name, pid in pids.items()}
    finally:
        stop_stack(stack)
    done = max(1, result["succeeded"])
    print(f"{done} requests in {wall:.1f} s ({done / wall:.1f}/s), batches of {result['batch_size_mean']}")
    for name in pids:
        per_thread = {t: (after[name][t] - before[name].get(t, 0.0)) * 1000 / done for t in after[name]}
        shown = sorted(((t, ms) for t, ms in per_thread.items() if ms >= 0.01), key=lambda x: -x[1])
        print(f"{name}: {sum(per_thread.values()):.2f} ms/request: " + ", ".join(f"{t} {ms:.2f}" for t, ms in shown))
    if spy and raw.is_file():
        own, inclusive = top_functions(raw, args.top)
        for title, rows in (("self", own), ("inclusive", inclusive)):
            print(f"--- {args.spy}, GIL held, {title}")
            for function, share in rows:
                print(f"{share * 100:5.1f}% {function[:140]}")


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
