"""The experiment behind the project's timing policy (``modelops.timing.POLICY``).

    python docs/measurements/timing_policy.py            # ResNet-18 fp32 vs int8 at 224x224; writes timing_policy.md
    python docs/measurements/timing_policy.py --smoke    # a minute-long check that the script runs

Times one fp32 / int8 pair (an eager ResNet-18 and its static int8 ONNX copy) with each candidate method:
models in their own worker processes or all in one process; interleaved turns (a pause, an untimed call,
several timed calls) or plain A B alternation; several warm-up counts. Every runtime keeps its default
threading. Each method runs ``--repeats`` times; its fp32/int8 ratio is compared with the outside timer's
(each model alone in a fresh process, ``time.perf_counter()`` around each call), and the spread over repeats
says how repeatable it is. The Markdown written holds every ratio and the method that agrees best.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from modelops.cli import check_positive, run_cli, usable_cores
from modelops.cpu import cpu_info
from modelops.results import markdown_table
from modelops.timing import POLICY
from PR4_model_benchmarking.benchmarks.artifact_pair import add_pair_flags, resolve_pair
from PR4_model_benchmarking.benchmarks.pair_timing import benchmark_ratios, outside_ratios, relative_gap
from PR4_model_benchmarking.measure import parse_int_list
from PR4_model_benchmarking.summary import cpu_class

logger = logging.getLogger(__name__)

ALTERNATE = ("--calls-per-turn", "1", "--untimed-per-turn", "0", "--settle-ms", "0")
POLICY_METHOD = "process-turns"
# name -> (what it is, PR4 benchmark flags); the first is the project's policy (the benchmark's defaults).
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    POLICY_METHOD: ("own process per model, interleaved turns (the policy)", ()),
    "process-alternate": ("own process per model, A B alternation", ALTERNATE),
    "process-no-pause": ("own process per model, turns without the pause", ("--settle-ms", "0")),
    "inprocess-turns": ("one process, interleaved turns", ("--isolation", "none")),
    "inprocess-alternate": ("one process, A B alternation", ("--isolation", "none", *ALTERNATE)),
    "warmup-0": ("own process per model, turns, no warm-up", ("--warmup", "0")),
    "warmup-1": ("own process per model, turns, 1 warm-up call", ("--warmup", "1")),
    "warmup-20": ("own process per model, turns, 20 warm-up calls", ("--warmup", "20")),
}
SMOKE_METHODS = (POLICY_METHOD, "inprocess-turns", "inprocess-alternate")
OUTSIDE = "outside-timer"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    add_pair_flags(parser)
    parser.add_argument("--batch-sizes", default="1,16", help="batch sizes (default: 1,16)")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per model, batch and run (default: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method (default: 3)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(METHODS)} "
                        "(default: all)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    parser.add_argument("--output", default=str(Path(__file__).with_suffix(".md")),
                        help="the Markdown written (default: docs/measurements/timing_policy.md)")
    parser.add_argument("--smoke", action="store_true", help="64x64 inputs, batch 1 and 4, 3 calls, one run of "
                        "three methods, output under runs/ (checks the script, measures nothing) (default: off)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def apply_smoke(args: argparse.Namespace) -> None:
    args.image_size, args.batch_sizes, args.iters, args.repeats = 64, "1,4", 3, 1
    args.methods = args.methods or ",".join(SMOKE_METHODS)
    if args.output == get_args_parser().get_default("output"):
        args.output = "runs/timing_policy_smoke/timing_policy.md"


def chosen_methods(spec: str | None) -> list[str]:
    from PR4_model_benchmarking.measure import parse_choices

    return parse_choices(spec, tuple(METHODS), "--methods") if spec else list(METHODS)


def measure(args: argparse.Namespace, methods: list[str], threads: int) -> dict[str, Any]:
    """Every method ``--repeats`` times, and the outside timer as often; all ratios per batch size."""
    paths = resolve_pair(args.fp32, args.int8, image_size=args.image_size, work_dir=args.work_dir)
    batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    work = Path(args.output).parent / "timing_policy_runs"
    ratios: dict[str, dict[int, list[float]]] = {OUTSIDE: {b: [] for b in batch_sizes}}
    for repeat in range(args.repeats):
        for b, row in outside_ratios(paths, batch_sizes, samples=args.iters, warmup=POLICY.warmup,
                                     threads=threads).items():
            ratios[OUTSIDE][b].append(row["ratio"])
        for name in methods:
            logger.info("repeat %d: %s", repeat + 1, name)
            found = benchmark_ratios(paths, batch_sizes, iters=args.iters, threads=threads,
                                     output_dir=work / f"{name}_r{repeat}", extra=METHODS[name][1])
            for b, row in found.items():
                ratios.setdefault(name, {bb: [] for bb in batch_sizes})[b].append(row["ratio"])
    return {"paths": paths, "batch_sizes": batch_sizes, "ratios": ratios}


def table_rows(ratios: dict[str, dict[int, list[float]]], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """Per method: the median ratio and range at each batch size, the gap of its median ratio to the outside
    timer's (the agreement), and its worst single run's gap (the outside timer's own row shows how far a run of
    the reference itself strays: the noise floor of that column)."""
    reference = {b: statistics.median(ratios[OUTSIDE][b]) for b in batch_sizes}
    rows = []
    for name, per in ratios.items():
        row: dict[str, Any] = {"method": name, "what": METHODS[name][0] if name in METHODS else
                               "each model alone in a fresh process, plain perf_counter loop"}
        for b in batch_sizes:
            row[f"ratio_b{b}"] = round(statistics.median(per[b]), 2)
            row[f"range_b{b}"] = f"{min(per[b]):.2f}-{max(per[b]):.2f}"
        row["median_gap_to_outside_pct"] = round(100 * max(
            relative_gap(statistics.median(per[b]), reference[b]) for b in batch_sizes), 1)
        row["worst_run_gap_to_outside_pct"] = round(100 * max(relative_gap(x, reference[b]) for b in batch_sizes
                                                              for x in per[b]), 1)
        rows.append(row)
    return rows


def write_markdown(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace, threads: int,
                   paths: dict[str, Path], measured_at: _dt.datetime | None = None) -> str:
    env = cpu_info()
    methods = [r for r in rows if r["method"] != OUTSIDE]
    best = min(methods, key=lambda r: r["median_gap_to_outside_pct"])
    policy = next((r for r in methods if r["method"] == POLICY_METHOD), None)
    floor = next(r for r in rows if r["method"] == OUTSIDE)["worst_run_gap_to_outside_pct"]
    measured_at = measured_at or _dt.datetime.now(_dt.timezone.utc)
    lines = [
        "# Timing policy: which way of timing agrees with an outside timer", "",
        f"Measured {measured_at:%Y-%m-%d %H:%M} UTC on {env['cpu_model']} "
        f"({cpu_class(env)}, {env['usable_cores']} usable cores, {threads} threads) with "
        f"`python docs/measurements/timing_policy.py{' --smoke' if args.smoke else ''}`: "
        f"{paths['fp32'].name} vs {paths['int8'].name}, {args.iters} timed calls per model and batch size, "
        f"{args.repeats} run(s) of each method. Ratio = fp32 median latency / int8 median latency. "
        "`median_gap_to_outside_pct`: how far the method's median ratio is from the outside timer's, at the worse "
        "batch size; `worst_run_gap_to_outside_pct`: the same for its single worst run, which the outside timer's "
        "own runs set a floor to.", "",
        markdown_table(rows), "",
        f"Closest to the outside timer: **{best['method']}** (median ratios within "
        f"{best['median_gap_to_outside_pct']}%). The outside timer's own runs stray up to {floor}% from its median.",
    ]
    if policy is not None:
        verdict = "within" if policy["median_gap_to_outside_pct"] <= 10 else "NOT within"
        lines.append(f"The project's policy ({POLICY_METHOD}: warm-up {POLICY.warmup}, {POLICY.calls_per_turn} "
                     f"timed calls per turn after {POLICY.untimed_per_turn} untimed, {POLICY.settle_s * 1e3:g} ms "
                     f"pause): median ratios {verdict} 10% of the outside timer's "
                     f"({policy['median_gap_to_outside_pct']}%); its worst run "
                     f"{policy['worst_run_gap_to_outside_pct']}% from them, the outside timer's worst {floor}%.")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        apply_smoke(args)
    for flag in ("iters", "repeats", "threads"):
        check_positive(f"--{flag}", getattr(args, flag))
    methods = chosen_methods(args.methods)
    threads = args.threads or usable_cores()
    found = measure(args, methods, threads)
    rows = table_rows(found["ratios"], found["batch_sizes"])
    text = write_markdown(Path(args.output), rows, args, threads, found["paths"])
    print(text)
    return {"rows": rows, "output": args.output}


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
