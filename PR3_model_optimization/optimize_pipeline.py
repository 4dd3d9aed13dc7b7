"""Prune, distil and quantize in one command, keeping every intermediate artifact, and compare them all.

    python PR3_model_optimization/optimize_pipeline.py --model models/resnet50.pt --output-dir models/optimized

Stages (each one's artifact is kept in ``--output-dir`` and its summary in ``--output-dir``/stages; a stage
whose summary and artifact exist is reused unless ``--force``, so an interrupted run picks up where it stopped):

1. ``pruned.pt``: structured pruning of ``--amount`` of the channels, fine-tuned (model_pruning.py)
2. ``pruned_distilled.pt``: the pruned model trained further as the student of the original (model_distillation.py)
3. ``combined.onnx``: that model quantized to static int8 by the backend measured fastest on this host within the
   accuracy budget (``--quantization-backend``, default auto; model_quantization.py). The file keeps its name
   whatever the winner's format; its manifest says which, and the loader follows it

plus, for the comparison, each technique alone: ``distilled.pt`` (a smaller architecture distilled from
the original) and ``quantized.onnx`` (the original in int8). Every artifact is then loaded with
``load_artifact`` and measured (test accuracy and size here; latency at batch 1 and ``--large-batch`` with each
artifact loaded only in its own process, all timed in interleaved turns), and the table is printed and written
as JSON, CSV and Markdown. The summary names the best variant: the fastest at ``--large-batch`` within 1.5
accuracy points of the original (:func:`modelops.selection.best_variant`, the rule the main job uses too).
``--no-measure`` skips that measurement (for a caller that benchmarks the artifacts itself, as the main job does):
the table then says what each artifact is, from its manifest alone, and the summary names no best variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from modelops.artifact import load_artifact, read_manifest
from modelops.cli import check_positive, common_parser, load_options, run_cli, split_seed
from modelops.data import load_dataset, make_loader
from modelops.errors import UsageError
from modelops.evaluate import evaluate
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.results import ResultRow, markdown_table, speedup_key, write_results
from modelops.selection import best_variant
from modelops.stages import StageRunner
from modelops.timed_modules import medians_or_raise
from PR3_model_optimization.quantization.auto import AUTO
from PR3_model_optimization.quantization.backends import backend_names

logger = logging.getLogger(__name__)

# Table rows: each technique alone, then the combinations; "pruned_distilled" is the step between.
ROWS = ("original", "distilled", "pruned", "quantized", "pruned_distilled", "combined")
STANDALONE = ("distilled", "quantized")
ARTIFACT_NAMES = {"pruned": "pruned.pt", "pruned_distilled": "pruned_distilled.pt", "combined": "combined.onnx",
                  "distilled": "distilled.pt", "quantized": "quantized.onnx"}
DESCRIPTIONS = {
    "original": "fp32 baseline", "distilled": "smaller architecture distilled from the original",
    "pruned": "structured pruning + fine-tune", "quantized": "original, static int8 (measured-fastest backend)",
    "pruned_distilled": "pruned, then distilled from the original",
    "combined": "pruned + distilled + static int8 (measured-fastest backend)",
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prune -> distil -> quantize a model in one run and compare every stage side by side.",
        parents=[common_parser()], add_help=add_help,
    )
    group = parser.add_argument_group("pipeline")
    group.add_argument("--model", default="models/resnet50.pt", help="original model artifact (state_dict) "
                       "(default: models/resnet50.pt)")
    group.add_argument("--output-dir", default="models/optimized",
                       help="every intermediate artifact, run logs and the results table (default: models/optimized)")
    group.add_argument("--prepare-arch", default=None,
                       help="when --model does not exist, first train this torchvision arch into it with "
                            "prepare_model.py (default: off, --model must exist)")
    group.add_argument("--prepare-epochs", type=int, default=15,
                       help="epochs for --prepare-arch (default: 15)")
    # Harder than model_pruning.py alone: distilling from the original wins back what pruning costs
    # (digits ResNet-50 at 0.5, two steps: pruned -1.39 points, after distillation -0.28).
    group.add_argument("--amount", type=float, default=0.5,
                       help="fraction of channels structured pruning removes; the distillation stage recovers "
                            "the accuracy (default: 0.5)")
    # Two steps at 0.5: with a 98.89% digits teacher one-shot pruning ended -3.06 points after distillation,
    # two steps -0.56 (same epochs per step, same speed-up).
    group.add_argument("--prune-steps", type=int, default=2,
                       help="prune in this many equal steps, fine-tuning --epochs after each (default: 2)")
    group.add_argument("--epochs", type=int, default=10,
                       help="epochs of each training stage: pruning fine-tune and distillation (default: 10)")
    group.add_argument("--lr", type=float, default=0.01,
                       help="learning rate of the fine-tuning stages (pruned, pruned_distilled) (default: 0.01)")
    group.add_argument("--student-arch", default="auto",
                       help="architecture of the stand-alone distilled row (default: auto, see "
                            "model_distillation.py)")
    group.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default: 4.0)")
    group.add_argument("--alpha", type=float, default=0.7, help="distillation soft-target weight (default: 0.7)")
    group.add_argument("--calibration-batches", type=int, default=10,
                       help="int8 calibration batches of real training data (default: 10)")
    group.add_argument("--quantization-backend", default=AUTO, choices=(AUTO, *backend_names()),
                       help="int8 backend of the quantization stages; auto times every installed one here and keeps "
                            "the fastest (default: auto)")
    group.add_argument("--limit", type=int, default=None,
                       help="train the distillation stages on the first N training samples only (default: all)")
    group.add_argument("--no-standalone", action="store_true",
                       help="skip the distilled-only and quantized-only comparison rows (default: build them)")
    group.add_argument("--force", action="store_true",
                       help="rebuild stages whose summary and artifact already exist (default: reuse them)")
    measure = parser.add_argument_group("measuring")
    measure.add_argument("--no-measure", action="store_true",
                         help="build the artifacts and list what each is (format, size, parameters) without "
                              "measuring accuracy or latency, and name no best variant; for a caller that "
                              "benchmarks them itself, as the main job does (default: measure)")
    measure.add_argument("--large-batch", type=int, default=16,
                         help="the larger batch size timed beside batch 1 (default: 16)")
    measure.add_argument("--speed-rounds", type=int, default=30,
                         help="interleaved timing rounds per batch size (default: 30)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 < args.amount < 1:
        raise UsageError(f"--amount must be a fraction in (0, 1), got {args.amount}")
    check_positive("--lr", args.lr)
    check_positive("--calibration-batches", args.calibration_batches)
    check_positive("--limit", args.limit)
    check_positive("--large-batch", args.large_batch)
    check_positive("--speed-rounds", args.speed_rounds)
    check_positive("--prune-steps", args.prune_steps)
    if not Path(args.model).exists() and not args.prepare_arch:
        raise UsageError(f"Model {args.model} does not exist. Create it with: python PR3_model_optimization/"
                         f"prepare_model.py --arch resnet50 --save-path {args.model} (or pass --prepare-arch)")


def _common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
             "--seed", str(args.seed), "--device", args.device]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    if args.trust_pickle:
        flags.append("--trust-pickle")
    return flags


def _exists(path: Path) -> bool:
    return path.is_file() and read_manifest(path) is not None


def prepare_original(args: argparse.Namespace) -> dict[str, Any]:
    from PR3_model_optimization import prepare_model

    flags = ["--arch", args.prepare_arch, "--save-path", args.model, "--epochs", str(args.prepare_epochs),
             "--output-dir", str(Path(args.output_dir) / "runs" / "prepare"), *_common_flags(args)]
    if args.image_size:
        flags += ["--image-size", str(args.image_size)]
    return prepare_model.main(prepare_model.get_args_parser().parse_args(flags))


def prune(args: argparse.Namespace, save_path: Path) -> dict[str, Any]:
    from PR3_model_optimization import model_pruning

    flags = ["--model", args.model, "--pruning-method", "structured", "--amount", str(args.amount), "--fine-tune",
             "--steps", str(args.prune_steps), "--epochs", str(args.epochs), "--lr", str(args.lr),
             "--save-path", str(save_path), "--output-dir", str(Path(args.output_dir) / "runs" / "prune"),
             *_common_flags(args)]
    return model_pruning.main(model_pruning.get_args_parser().parse_args(flags))


def distill(args: argparse.Namespace, save_path: Path, *, student: str | None = None) -> dict[str, Any]:
    from PR3_model_optimization import model_distillation

    flags = ["--teacher", args.model, "--save-path", str(save_path), "--epochs", str(args.epochs),
             "--temperature", str(args.temperature), "--alpha", str(args.alpha),
             "--output-dir", str(Path(args.output_dir) / "runs" / save_path.stem), "--speed-rounds", "0",
             *_common_flags(args)]
    # A pruned student is fine-tuned with SGD at --lr; a fresh one trains from scratch with the script's AdamW.
    flags += (["--student", student, "--opt", "sgd", "--lr", str(args.lr)] if student
              else ["--student-arch", args.student_arch])
    if args.limit:
        flags += ["--limit", str(args.limit)]
    return model_distillation.main(model_distillation.get_args_parser().parse_args(flags))


def quantize(args: argparse.Namespace, model: Path, save_path: Path) -> dict[str, Any]:
    from PR3_model_optimization import model_quantization

    flags = ["--model", str(model), "--quantization-method", "static", "--backend", args.quantization_backend,
             "--save-path", str(save_path), "--calibration-batches", str(args.calibration_batches),
             "--latency-rounds", "5", *_common_flags(args)]
    return model_quantization.main(model_quantization.get_args_parser().parse_args(flags))


def run_stages(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Any]]:
    """Build (or reuse) every artifact; returns their paths and each stage's own summary."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"original": Path(args.model)} | {name: out / file for name, file in ARTIFACT_NAMES.items()}
    if args.no_standalone:
        paths = {k: v for k, v in paths.items() if k not in STANDALONE}
    stages: dict[str, Any] = {}
    if not paths["original"].exists():
        stages["original"] = prepare_original(args)
    runner = StageRunner(out / "stages", force=args.force, ready=_exists)
    plan = [
        ("pruned", lambda: prune(args, paths["pruned"])),
        ("pruned_distilled", lambda: distill(args, paths["pruned_distilled"], student=str(paths["pruned"]))),
        ("combined", lambda: quantize(args, paths["pruned_distilled"], paths["combined"])),
        ("distilled", lambda: distill(args, paths["distilled"])),
        ("quantized", lambda: quantize(args, paths["original"], paths["quantized"])),
    ]
    for name, build in plan:
        if name in paths:
            stages[name] = runner.run(name, build, outputs=[paths[name]])
    return paths, stages


def result_row(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` built as a :class:`ResultRow`, so a figure of the wrong kind fails here, and given back in the
    table's column order (a dump lists the declared keys first)."""
    row = ResultRow(**values).model_dump(exclude_unset=True)
    return {key: row[key] for key in values}


def describe(paths: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """What each artifact is, from its manifest alone (nothing is run): architecture, format, size, parameters."""
    manifests = {name: read_manifest(path) or load_artifact(path, load_options(args)).manifest
                 for name, path in paths.items()}
    size0 = manifests["original"].size_mb
    rows = []
    for name in (n for n in ROWS if n in manifests):
        manifest = manifests[name]
        params = manifest.metrics.get("params")
        if params is None and manifest.parent:  # an int8 file keeps its fp32 parent's parameter count
            parent = read_manifest(manifest.parent["path"]) if Path(manifest.parent["path"]).is_file() else None
            params = parent.metrics.get("params") if parent else None
        rows.append(result_row({
            "model": name, "arch": manifest.arch, "format": manifest.format,
            "size_mb": round(manifest.size_mb, 3), "size_pct_of_original": round(100 * manifest.size_mb / size0, 1),
            "params_m": round(params / 1e6, 3) if params else None,
            "description": DESCRIPTIONS[name], "path": str(paths[name]),
        }))
    return rows


def measure(paths: dict[str, Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`describe`'s rows with test accuracy and latency, each artifact loaded the way a user would (timed
    per process)."""
    options = load_options(args)
    predictors = {name: load_artifact(path, options) for name, path in paths.items()}
    original = predictors["original"]
    data = load_dataset(args.dataset, image_size=original.input_shape[-1], seed=split_seed(args, original.manifest),
                        data_dir=args.data_dir)
    test_loader = make_loader(data.test, 128)
    accuracy = {name: evaluate(p, test_loader)["accuracy"] for name, p in predictors.items()}
    # Each runtime with its own defaults (spinning thread pools included), in its own process, timed in turns.
    batch_sizes = list(dict.fromkeys((1, args.large_batch)))
    times = time_artifacts(paths, batch_sizes, args.speed_rounds,
                           options=LoadOptions(threads=args.threads, trust_pickle=args.trust_pickle))
    latency: dict[str, dict[int, float]] = {name: {} for name in predictors}
    for batch_size in batch_sizes:
        for name, ms in medians_or_raise(times, batch_size).items():
            latency[name][batch_size] = ms

    rows = []
    for row in describe(paths, args):
        name = row["model"]
        last = {key: row.pop(key) for key in ("description", "path")}  # the long columns stay last
        row["top1_pct"] = round(accuracy[name], 2)
        row["top1_change_pts"] = round(accuracy[name] - accuracy["original"], 2)
        for batch_size in (1, args.large_batch):
            row[f"latency_ms_p50_b{batch_size}"] = round(latency[name][batch_size], 3)
            row[speedup_key(batch_size)] = round(latency["original"][batch_size] / latency[name][batch_size], 2)
        rows.append(result_row(row | last))
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    started = time.perf_counter()
    paths, stages = run_stages(args)
    rows = describe(paths, args) if args.no_measure else measure(paths, args)
    out = Path(args.output_dir)
    results = {fmt: str(write_results(out / f"pipeline_results.{suffix}", rows))
               for fmt, suffix in (("json", "json"), ("csv", "csv"), ("markdown", "md"))}
    table = markdown_table([{k: v for k, v in row.items() if k not in ("path", "description")} for row in rows])
    print(table)
    best = None if args.no_measure else best_variant(rows, speed=speedup_key(args.large_batch))
    summary = {"artifacts": {name: str(path) for name, path in paths.items()}, "rows": rows, "results": results,
               "best_variant": best, "measured": not args.no_measure, "stages": stages,
               "threads": args.threads or torch.get_num_threads(),
               "total_s": round(time.perf_counter() - started, 1)}
    write_results(out / "pipeline_summary.json", summary)
    print(json.dumps({"artifacts": summary["artifacts"], "results": results, "total_s": summary["total_s"]},
                     indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
