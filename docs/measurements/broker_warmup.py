"""How many requests the local stack's broker needs before its CPU per request settles: the warm-up behind
``bench_e2e.py --warmup-requests``.

    python docs/measurements/broker_warmup.py --model runs/timing_pair/resnet18_224_int8.onnx --rounds 10

Starts one local stack (Apache Kafka by default, one batching worker, the service's settings) and sends
``--rounds`` consecutive loaded runs of ``--requests`` JPEG photos from 16 clients, printing after each the CPU
that the broker (and, apart, its JIT compiler threads), the API and the worker outside its forward pass spent
per request in that run (as bench_e2e counts them). A JVM interprets its code at first and compiles the hot
paths as they run, so the broker's figure falls over the first rounds and then holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from modelops.artifact import read_manifest
from modelops.errors import UsageError
from PR2_async_inference.benchmarks.bench_e2e import cpu_ms_per_request, cpu_per_request, photo_payloads
from PR2_async_inference.load_test import run_load
from PR2_async_inference.local_stack import BROKER_KINDS, start_stack, stop_stack
from PR2_async_inference.processes import interrupt_on_stop_signals
from PR2_async_inference.registry import write_registry


def warmup_curve(model: Path, rounds: int, requests: int, broker: str, log_dir: Path) -> list[dict[str, Any]]:
    """One row per round: requests served so far, throughput, and CPU ms per request of each process."""
    registry = write_registry(log_dir / "registry.yaml", {"image_classification": model})
    payloads = photo_payloads(read_manifest(model).input_shape)
    stack = start_stack(registry, workers=1, log_dir=log_dir / "stack", broker=broker, max_batch_size=16,
                        max_batch_delay_ms=5, torch_threads=2)
    rows, served = [], 0
    try:
        for _ in range(rounds):
            before = cpu_per_request(stack)
            load = run_load(stack.api_url, requests=requests, concurrency=16, time_limit_s=120, payloads=payloads)
            cpu = cpu_ms_per_request(before, cpu_per_request(stack), max(1, load["succeeded"]))
            served += load["succeeded"]
            rows.append({"served": served, "throughput_rps": load["throughput_rps"], **cpu})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_stack(stack)
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The local broker's CPU per request over consecutive runs.",
                                     add_help=add_help)
    parser.add_argument("--model", required=True, help="artifact to serve (e.g. runs/timing_pair/*.onnx)")
    parser.add_argument("--rounds", type=int, default=10, help="consecutive loaded runs (default: 10)")
    parser.add_argument("--requests", type=int, default=240, help="requests per run (default: 240)")
    parser.add_argument("--broker", choices=BROKER_KINDS, default="kafka", help="broker (default: kafka)")
    parser.add_argument("--log-dir", default=None, help="process logs (default: a temp dir)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < 1 or args.requests < 1:
        raise UsageError("--rounds and --requests must be >= 1")
    if read_manifest(Path(args.model)) is None:
        raise UsageError(f"{args.model} has no manifest ({args.model}.json); pass a modelops artifact")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="broker-warmup-"))
    interrupt_on_stop_signals()  # SIGTERM, like Ctrl-C, stops the stack
    return {"rows": warmup_curve(Path(args.model), args.rounds, args.requests, args.broker, log_dir)}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
