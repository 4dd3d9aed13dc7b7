"""Benchmark: distillation and the combined pipeline on digits, against their targets, in one run.

    python PR3_model_optimization/benchmarks/bench_distillation.py --teacher models/resnet50.pt --threads 2

1. ``model_distillation.py`` with its defaults (student picked for the teacher, 10 epochs) and
   ``--baseline-student``, once per training seed (``--seeds``; the split stays the teacher's): the
   student's size, speed-up (batch 1 and 16, each model in its own process, timed in turns with the teacher),
   accuracy against the teacher and against the same student trained without it. Accuracies are means over the
   seeds: the digits test set has 360 images, so a single pair of runs differs by a few images either way.
2. ``optimize_pipeline.py`` with its defaults into the same folder (it reuses the first seed's student):
   original, distilled, pruned, quantized and combined side by side.

Prints both tables with each target and whether it was met; writes ``results.json`` and ``results.md``
in ``--output-dir``. Stages whose summary (``stages/<stage>.json``) and artifact exist are reused (``--force``
rebuilds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelops.cli import common_parser, run_cli
from modelops.cpu import cpu_info
from modelops.errors import UsageError
from modelops.results import markdown_table, write_results
from modelops.stages import StageRunner
from PR3_model_optimization import model_distillation, optimize_pipeline

DISTILL_TARGETS = (("size_ratio", "<=", 0.5), ("speedup_b1_x", ">=", 2.0), ("speedup_b16_x", ">=", 2.0),
                   ("accuracy_delta_pts", ">=", -1.0), ("distillation_gain_pts", ">=", 0.0))
COMBINED_TARGETS = (("size_pct_of_original", "<=", 13.0), ("speedup_b1_x", ">=", 8.0), ("speedup_b16_x", ">=", 10.0),
                    ("top1_change_pts", ">=", -1.5))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_parser()],
                                     add_help=add_help)
    parser.add_argument("--teacher", default="models/resnet50.pt", help="original model (default: models/resnet50.pt)")
    parser.add_argument("--output-dir", default="runs/bench_distillation",
                        help="artifacts and results (default: runs/bench_distillation)")
    parser.add_argument("--epochs", type=int, default=10, help="distillation epochs (default: 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="training seeds of the distilled and the teacher-less student; accuracies and the "
                             "gain are means over them (default: 0 1 2 3 4)")
    parser.add_argument("--pipeline-epochs", type=int, default=10,
                        help="epochs of each pipeline training stage (default: 10)")
    parser.add_argument("--speed-rounds", type=int, default=30, help="interleaved timing rounds (default: 30)")
    parser.add_argument("--force", action="store_true", help="rebuild existing artifacts (default: reuse)")
    return parser


def check(row: dict[str, Any], targets: tuple[tuple[str, str, float], ...]) -> list[dict[str, Any]]:
    out = []
    for key, op, goal in targets:
        value = row.get(key)
        met = value is not None and (value <= goal if op == "<=" else value >= goal)
        out.append({"metric": key, "target": f"{op} {goal}", "measured": value, "met": met})
    return out


def distill_per_seed(args: argparse.Namespace, out: Path, common: list[str]) -> list[dict[str, Any]]:
    """One distilled and one teacher-less student per seed (reused when a run for that seed exists).

    The stages run through :class:`modelops.stages.StageRunner` with the pipeline's summary folder
    (``out/stages``), so the pipeline's "distilled" stage reuses the first seed's student.
    """
    runner = StageRunner(out / "stages", force=args.force, ready=Path.is_file)
    summaries = []
    for i, seed in enumerate(args.seeds):
        name = "distilled" if i == 0 else f"distilled_seed{seed}"
        save_path, run_dir = out / f"{name}.pt", out / "runs" / name
        done = runner.summary_path(name)
        if done.is_file() and json.loads(done.read_text()).get("seed") != seed:
            done.unlink()  # made for another seed: redo it
        # Timed below with every other model, each in its own process: no separate timing here.
        argv = ["--teacher", args.teacher, "--save-path", str(save_path), "--output-dir", str(run_dir),
                "--epochs", str(args.epochs), "--baseline-student", "--speed-rounds", "0", *common,
                "--seed", str(seed)]
        summaries.append(runner.run(
            name, lambda argv=argv: model_distillation.main(model_distillation.get_args_parser().parse_args(argv)),
            outputs=[save_path]))
    return summaries


def seed_table(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("seed", "student_accuracy", "baseline_accuracy", "distillation_gain_pts", "train_s")
    rows = [{k: summary.get(k) for k in keys} for summary in summaries]
    if len(rows) > 1:
        rows.append({"seed": "mean", **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys[1:]}})
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds must be distinct, got {args.seeds}")
    out = Path(args.output_dir)
    common = ["--dataset", args.dataset] + (["--threads", str(args.threads)] if args.threads else [])
    summaries = distill_per_seed(args, out, common)
    seeds = seed_table(summaries)
    pipeline = optimize_pipeline.main(optimize_pipeline.get_args_parser().parse_args([
        "--model", args.teacher, "--output-dir", str(out), "--epochs", str(args.pipeline_epochs),
        "--speed-rounds", str(args.speed_rounds), "--seed", str(args.seeds[0]), *common]
        + (["--force"] if args.force else [])))
    rows = {row["model"]: row for row in pipeline["rows"]}
    combined, student = rows["combined"], rows["distilled"]

    first, mean = summaries[0], seeds[-1]
    distill_row = {k: first.get(k) for k in (
        "teacher_arch", "student_arch", "teacher_accuracy", "teacher_size_mb", "size_mb", "size_ratio")}
    distill_row.update({
        "seeds": len(summaries), "student_accuracy": mean["student_accuracy"],
        "baseline_accuracy": mean["baseline_accuracy"],
        "accuracy_delta_pts": round(mean["student_accuracy"] - first["teacher_accuracy"], 4),
        "distillation_gain_pts": mean["distillation_gain_pts"],
        "worst_seed_gain_pts": min(summary["distillation_gain_pts"] for summary in summaries),
        "teacher_latency_ms_p50_b1": rows["original"]["latency_ms_p50_b1"],
        "student_latency_ms_p50_b1": student["latency_ms_p50_b1"], "speedup_b1_x": student["speedup_b1_x"],
        "teacher_latency_ms_p50_b16": rows["original"]["latency_ms_p50_b16"],
        "student_latency_ms_p50_b16": student["latency_ms_p50_b16"], "speedup_b16_x": student["speedup_b16_x"]})
    checks = {"distillation": check(distill_row, DISTILL_TARGETS), "combined": check(combined, COMBINED_TARGETS)}
    table = [{k: v for k, v in row.items() if k not in ("path", "description")} for row in pipeline["rows"]]
    text = "\n\n".join([
        "## Distillation (teacher vs student vs student without teacher)", markdown_table(distill_row),
        markdown_table(checks["distillation"]),
        "### Per training seed (test top-1, %)", markdown_table(seeds),
        "## Pipeline (original, each technique alone, combined)", markdown_table(table),
        markdown_table(checks["combined"]),
    ])
    print(text)
    info = cpu_info()
    results = {"distillation": distill_row, "seeds": seeds, "pipeline": pipeline["rows"], "checks": checks,
               "threads": pipeline["threads"], "cpu_model": info.get("cpu_model"),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    write_results(out / "results.json", results)
    (out / "results.md").write_text(text + "\n")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
