"""Does the benchmark agree with an outside timer? fp32 vs int8 speed-up ratios, measured two ways.

    python PR4_model_benchmarking/benchmarks/check_outside_timer.py                 # ResNet-18 pair at 224x224
    python PR4_model_benchmarking/benchmarks/check_outside_timer.py --back-to-back  # and two benchmark runs

The project's method is PR4's benchmark (each model in its own worker, interleaved turns). The outside timer
is ``plain_loop.py``: each model alone in a fresh process that imports only its runtime, ``time.perf_counter()``
around each call. The ratios (fp32 median over int8 median) should be within ``--tolerance`` of each other at
every batch size; with ``--back-to-back``, two benchmark runs one after the other should be too. Exit code 1
when a pair of ratios does not agree.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from modelops.cli import check_positive, run_cli, usable_cores
from modelops.results import markdown_table
from PR4_model_benchmarking.benchmarks.artifact_pair import add_pair_flags, resolve_pair
from PR4_model_benchmarking.benchmarks.pair_timing import benchmark_ratios, comparison_rows, outside_ratios
from PR4_model_benchmarking.measure import parse_int_list

logger = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    add_pair_flags(parser)
    parser.add_argument("--batch-sizes", default="1,16", help="batch sizes to compare (default: 1,16)")
    parser.add_argument("--iters", type=int, default=30,
                        help="timed calls per model and batch size, both methods (default: 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of the outside loop (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help="largest relative gap between two ratios that still agrees (default: 0.10)")
    parser.add_argument("--back-to-back", action="store_true",
                        help="also compare two benchmark runs one after the other (default: off)")
    parser.add_argument("--output-dir", default="runs/outside_timer", help="benchmark reports "
                        "(default: runs/outside_timer)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    for flag in ("iters", "threads", "tolerance"):
        check_positive(f"--{flag}", getattr(args, flag))
    check_positive("--warmup", args.warmup, allow_zero=True)
    threads = args.threads or usable_cores()
    paths = resolve_pair(args.fp32, args.int8, image_size=args.image_size, work_dir=args.work_dir)
    out = Path(args.output_dir)
    project = benchmark_ratios(paths, batch_sizes, iters=args.iters, threads=threads, output_dir=out / "run1")
    outside = outside_ratios(paths, batch_sizes, samples=args.iters, warmup=args.warmup, threads=threads)
    result: dict[str, Any] = {
        "pair": {k: str(v) for k, v in paths.items()}, "threads": threads, "tolerance": args.tolerance,
        "project": project, "outside": outside,
        "outside_timer": comparison_rows(project, outside, names=("benchmark", "outside"), tolerance=args.tolerance)}
    print(f"fp32 / int8 speed-up ratios, {paths['fp32'].name} vs {paths['int8'].name}, {threads} threads\n")
    print("Benchmark vs outside timer:\n" + markdown_table(result["outside_timer"]))
    if args.back_to_back:
        again = benchmark_ratios(paths, batch_sizes, iters=args.iters, threads=threads, output_dir=out / "run2")
        result["second_run"] = again
        result["back_to_back"] = comparison_rows(project, again, names=("run1", "run2"), tolerance=args.tolerance)
        print("\nTwo benchmark runs back to back:\n" + markdown_table(result["back_to_back"]))
    rows = result["outside_timer"] + result.get("back_to_back", [])
    result["agree"] = all(row["agree"] for row in rows)
    word = "AGREE: every pair of ratios is" if result["agree"] else "DISAGREE: not every pair of ratios is"
    print(f"\n{word} within {args.tolerance:.0%}")
    return result


def check(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`main`, failing (exit code 1) when the ratios disagree."""
    result = main(args)
    if not result["agree"]:
        raise RuntimeError(f"the ratios differ by more than {args.tolerance:.0%}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(check, get_args_parser()))
