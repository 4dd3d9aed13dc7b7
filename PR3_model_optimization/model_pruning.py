"""Prune a model artifact: structured (whole channels removed: smaller and faster) or unstructured.

- ``--pruning-method structured`` removes whole channels with torch-pruning (:mod:`.pruning.structured`);
  the saved model is physically smaller, runs faster on ordinary dense kernels and reloads as a plain
  torchvision module.
- ``--pruning-method global | layerwise`` zeroes the smallest weights (L1 magnitude) across all layers or
  per layer (:mod:`.pruning.unstructured`). Dense CPU kernels multiply zeros as fast as any other number,
  so this is NOT faster; ``--compress`` stores the weights deflate-compressed so the zeros cost no disk space.
- ``--target-speedup`` / ``--target-latency-ms`` prune structurally in small increments until the
  latency MEASURED on this machine meets the target (:mod:`.pruning.latency`).

    python PR3_model_optimization/model_pruning.py --model models/resnet50.pt --pruning-method structured \\
        --amount 0.3 --fine-tune --save-path models/pruned_model.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from torch import nn

from modelops.artifact import Manifest, RuntimeHints, file_size_mb, load_module, save_artifact
from modelops.artifact import write_manifest as write_artifact_manifest
from modelops.cli import (
    check_positive,
    common_parser,
    load_model_dataset,
    load_options,
    run_cli,
    set_help,
    training_config,
)
from modelops.data import DatasetSplits
from modelops.errors import UsageError
from modelops.models import count_macs, count_parameters
from modelops.results import write_results
from modelops.training import add_training_args, check_training_config
from PR3_model_optimization.pruning.config import PruningConfig
from PR3_model_optimization.pruning.fine_tune import test_accuracy
from PR3_model_optimization.pruning.latency import MEMORY_FORMATS
from PR3_model_optimization.pruning.run import (
    PruningRun,
    fine_tune_step_fn,
    make_pruner,
    prune_in_steps,
    start_run,
    time_pruned,
)
from PR3_model_optimization.pruning.structured import IMPORTANCES
from PR3_model_optimization.pruning.unstructured import (
    UNSTRUCTURED,
    UNSTRUCTURED_NOTE,
    compress_in_place,
    prunable_layers,
    sparsity_report,
)

logger = logging.getLogger(__name__)

METHODS = ("structured", *UNSTRUCTURED)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prune a model artifact (structured channels with torch-pruning, or unstructured L1), "
                    "optionally fine-tune it, and save it as a new artifact with its manifest.",
        parents=[common_parser()], add_help=add_help,
    )
    # A model should be fine-tuned and scored on the data it was trained on, not on the generic default.
    parser.set_defaults(dataset=None)
    set_help(parser, "dataset", "digits | cifar10 | imagefolder:PATH | fake "
                                "(default: the model manifest's dataset, else digits)")
    group = parser.add_argument_group("pruning")
    group.add_argument("--model", required=True,
                       help="state_dict (or trusted pickle) model artifact to prune (required)")
    group.add_argument("--pruning-method", default="structured", choices=METHODS,
                       help="structured: remove channels (smaller, faster); global / layerwise: zero the "
                            "smallest weights across all layers / in each layer (not faster) "
                            "(default: structured)")
    group.add_argument("--amount", type=float, default=0.3,
                       help="fraction to prune, in (0, 1): channels for structured, weights otherwise "
                            "(default: 0.3)")
    group.add_argument("--importance", default="l1", choices=IMPORTANCES,
                       help="structured channel ranking: l1 / l2 group magnitude, bn (BatchNorm scale), "
                            "taylor (first-order, uses a few training batches) (default: l1)")
    group.add_argument("--steps", type=int, default=1,
                       help="prune in this many equal steps, fine-tuning --epochs after each with --fine-tune "
                            "(default: 1)")
    group.add_argument("--round-to", type=int, default=8,
                       help="keep structured channel counts multiples of this, for SIMD-friendly kernels "
                            "(default: 8)")
    group.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                       help="store weights deflate-compressed in the .pt zip so zeroed weights take no disk "
                            "space; loads unchanged with torch.load "
                            "(default: on for global/layerwise, off for structured)")
    group.add_argument("--memory-format", default="auto", choices=MEMORY_FORMATS,
                       help="runtime layout hint written to the manifest; auto measures both and keeps "
                            "channels_last only when it is faster (default: auto)")
    group.add_argument("--save-path", default="models/pruned_model.pt",
                       help="output artifact (default: models/pruned_model.pt)")
    group.add_argument("--output-dir", default="runs/prune",
                       help="fine-tuning checkpoints, metrics.csv, layer_sparsity.csv, results.json "
                            "(default: runs/prune)")
    add_target_args(parser)
    add_timing_args(parser)
    add_fine_tune_args(parser)
    add_training_args(parser, epochs=3, lr=0.01)
    return parser


def add_target_args(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("latency target (structured only; replaces --amount)")
    exclusive = target.add_mutually_exclusive_group()
    exclusive.add_argument("--target-speedup", type=float, default=None,
                           help="prune until the measured speed-up over the original reaches this "
                                "(default: off)")
    exclusive.add_argument("--target-latency-ms", type=float, default=None,
                           help="prune until the measured median latency is at most this (default: off)")
    target.add_argument("--amount-step", type=float, default=0.05,
                        help="channel fraction added per increment (default: 0.05)")
    target.add_argument("--max-amount", type=float, default=0.8,
                        help="stop pruning at this fraction (default: 0.8)")


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    timing = parser.add_argument_group("latency measurement")
    timing.add_argument("--latency-batch-size", type=int, default=1,
                        help="batch for latency checks (default: 1)")
    timing.add_argument("--latency-rounds", type=int, default=10,
                        help="interleaved timed rounds per comparison, after 3 warm-up calls (default: 10)")


def add_fine_tune_args(parser: argparse.ArgumentParser) -> None:
    tune = parser.add_argument_group("fine-tuning")
    tune.add_argument("--fine-tune", action="store_true",
                      help="train the pruned model on the dataset's train split, keeping the best by "
                           "validation accuracy (default: off)")
    tune.add_argument("--distill-from", default=None,
                      help="teacher artifact (usually the unpruned --model) for knowledge distillation while "
                           "fine-tuning (default: off)")
    tune.add_argument("--kd-alpha", type=float, default=0.5,
                      help="weight of the distillation term; (1 - alpha) weights the label loss "
                           "(default: 0.5)")
    tune.add_argument("--kd-temperature", type=float, default=4.0,
                      help="softmax temperature for distillation (default: 4.0)")
    tune.add_argument("--eval-limit", type=int, default=None,
                      help="score accuracy on only the first N test samples (quick runs) (default: all)")


def check_args(args: argparse.Namespace) -> None:
    """Reject bad values with a message that names them (exit 2), before any work starts."""
    targeted = args.target_speedup is not None or args.target_latency_ms is not None
    if not 0 < args.amount < 1:
        raise UsageError(f"--amount must be a fraction in (0, 1), got {args.amount}")
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.round_to < 1:
        raise UsageError(f"--round-to must be at least 1, got {args.round_to}")
    if args.pruning_method in UNSTRUCTURED and args.importance != "l1":
        raise UsageError(f"--importance {args.importance} applies to structured pruning; unstructured "
                         f"{args.pruning_method} pruning ranks weights by |w| (l1)")
    if targeted:
        if args.pruning_method != "structured":
            raise UsageError(f"--target-speedup/--target-latency-ms need --pruning-method structured: "
                             f"{args.pruning_method} pruning keeps dense tensors and gets no faster")
        if args.steps > 1:
            raise UsageError("--steps does not combine with a latency target (the target picks the steps)")
        check_positive("--target-speedup", args.target_speedup)
        check_positive("--target-latency-ms", args.target_latency_ms)
        if not 0 < args.amount_step < 1 or not 0 < args.max_amount < 1:
            raise UsageError(f"--amount-step and --max-amount must be fractions in (0, 1), "
                             f"got {args.amount_step} and {args.max_amount}")
    if args.latency_batch_size < 1 or args.latency_rounds < 1:
        raise UsageError("--latency-batch-size and --latency-rounds must be at least 1")
    if not 0 <= args.kd_alpha <= 1:
        raise UsageError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
    check_positive("--kd-temperature", args.kd_temperature)
    if args.distill_from and not args.fine_tune:
        raise UsageError("--distill-from is used while fine-tuning: add --fine-tune")
    if args.resume and args.steps > 1:
        raise UsageError("--resume continues one fine-tuning run; it does not combine with --steps > 1")
    if args.fine_tune:
        check_training_config(training_config(args))


def pruning_config(args: argparse.Namespace) -> PruningConfig:
    """The typed settings the pruning phases take, built once from the flags."""
    return PruningConfig(
        pruning_method=args.pruning_method, amount=args.amount, importance=args.importance, steps=args.steps,
        round_to=args.round_to, memory_format=args.memory_format, target_speedup=args.target_speedup,
        target_latency_ms=args.target_latency_ms, amount_step=args.amount_step, max_amount=args.max_amount,
        latency_batch_size=args.latency_batch_size, latency_rounds=args.latency_rounds, threads=args.threads,
        fine_tune=args.fine_tune, distill_from=args.distill_from, kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature, eval_limit=args.eval_limit, batch_size=args.batch_size, seed=args.seed,
        workers=args.workers, output_dir=args.output_dir, training=training_config(args), load=load_options(args))


def load_model(args: argparse.Namespace) -> tuple[nn.Module, Manifest]:
    """The model to prune, refused early when it has nothing to prune or would be overwritten."""
    model, manifest = load_module(args.model, load_options(args))
    if args.pruning_method in UNSTRUCTURED and not prunable_layers(model):
        raise UsageError(f"{args.model}: {type(model).__name__} has no Conv or Linear weights: "
                         "nothing to prune")
    if Path(args.save_path).resolve() == Path(args.model).resolve():
        raise UsageError(f"--save-path {args.save_path} would overwrite the --model being pruned; "
                         "choose another path")
    return model, manifest


def load_data(args: argparse.Namespace, manifest: Manifest) -> DatasetSplits:
    """The splits the model was trained on: ``--dataset``, else its manifest's, checked against its classes."""
    name = args.dataset or manifest.dataset or "digits"
    data = load_model_dataset(args, manifest, dataset=name)  # fake data takes the model's classes and size
    if manifest.num_classes and data.num_classes != manifest.num_classes:
        raise UsageError(f"{args.model} predicts {manifest.num_classes} classes but dataset {name!r} has "
                         f"{data.num_classes}: pass the --dataset it was trained on")
    return data


def pruning_transform(args: argparse.Namespace, run: PruningRun, amount: float, compress: bool) -> dict[str, Any]:
    """The manifest's ``transform`` entry of the pruned model."""
    structured = args.pruning_method == "structured"
    return {"kind": "pruning", "method": args.pruning_method, "amount": round(amount, 4),
            "importance": args.importance if structured else "l1",
            "steps": len(run.target_rows) or args.steps,
            "round_to": args.round_to if structured else None,
            "fine_tune_epochs": args.epochs if args.fine_tune else 0,
            "distill_from": args.distill_from, "compressed": compress,
            "target_speedup": args.target_speedup, "target_latency_ms": args.target_latency_ms}


def save_pruned(run: PruningRun, args: argparse.Namespace, transform: dict[str, Any], metrics: dict[str, Any],
                memory_format: str) -> Manifest:
    """Write the pruned artifact and its manifest (deflate-compressed when ``transform`` says so)."""
    save_path = Path(args.save_path)
    child = run.manifest.derive(parent_path=args.model, transform=transform, metrics=metrics,
                                split_seed=run.data.split_seed)
    if memory_format == "channels_last":
        child.runtime = RuntimeHints(memory_format="channels_last")
    fmt = "state_dict" if run.manifest.arch else "pickle"
    saved = save_artifact(run.model, save_path, child, fmt=fmt)
    if transform["compressed"]:
        compress_in_place(save_path)
        saved.metrics.pop("size_mb", None)
        saved = write_artifact_manifest(save_path, saved, fmt=fmt)
    return saved


def summarize(run: PruningRun, args: argparse.Namespace, config: PruningConfig, saved: Manifest,
              metrics: dict[str, Any], medians: dict[str, float], memory_format: str,
              transform: dict[str, Any]) -> dict[str, Any]:
    """The flat summary ``main`` prints and returns."""
    params, macs, accuracy = metrics["params"], metrics["macs"], metrics["accuracy"]
    latency_after, size_before = medians["pruned"], file_size_mb(args.model)
    save_path = Path(args.save_path)
    summary: dict[str, Any] = {
        "save_path": str(save_path), "manifest": f"{save_path}.json", "method": args.pruning_method,
        "amount": transform["amount"], "importance": transform["importance"], "params": params,
        "params_before": run.params_before, "params_m": round(params / 1e6, 3),
        "params_ratio": round(params / run.params_before, 4), "macs": macs, "macs_before": run.macs_before,
        "macs_ratio": round(macs / max(run.macs_before, 1), 4), "sparsity": metrics["sparsity"],
        "size_mb": saved.size_mb, "size_mb_before": round(size_before, 4),
        "size_ratio": round(saved.size_mb / size_before, 4) if size_before else None,
        # Test-split top-1 (percent) of the original, of the pruned model before fine-tuning, and of the result.
        "top1_pct_before": run.accuracy_before, "top1_pct_pruned": run.accuracy_pruned, "top1_pct": accuracy,
        "top1_drop_pts": round(run.accuracy_before - accuracy, 4),
        "latency_ms_p50_before": medians["original"], "latency_ms_p50": latency_after,
        # At latency_batch_size (a flag, so not in the key).
        "speedup_x": round(medians["original"] / latency_after, 3) if latency_after else math.nan,
        "latency_batch_size": args.latency_batch_size, "memory_format": memory_format,
        "compressed": transform["compressed"], **run.tuning,
    }
    if args.pruning_method in UNSTRUCTURED:
        summary["note"] = UNSTRUCTURED_NOTE
    if run.target_rows:
        summary["target_steps"] = len(run.target_rows)
        summary["target_met"] = bool(config.target_met(run.target_rows[-1]))
    return summary


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    model, manifest = load_model(args)
    config = pruning_config(args)
    pruner = make_pruner(config, model, list(manifest.input_shape))
    run = start_run(config, model, manifest, load_data(args, manifest))
    amount = prune_in_steps(run, config, pruner, fine_tune_step_fn(config, manifest))
    model.eval()

    weight_sparsity, param_sparsity, per_layer = sparsity_report(model)
    medians, memory_format = time_pruned(run, config)
    compress = args.compress if args.compress is not None else args.pruning_method in UNSTRUCTURED
    transform = pruning_transform(args, run, amount, compress)
    metrics = {"accuracy": test_accuracy(model, run.data, args.eval_limit), "accuracy_before": run.accuracy_before,
               "accuracy_pruned": run.accuracy_pruned, "params": count_parameters(model),
               "params_before": run.params_before, "macs": count_macs(model, run.input_shape),
               "macs_before": run.macs_before, "sparsity": round(weight_sparsity, 4),
               "param_sparsity": round(param_sparsity, 4), "layer_sparsity": per_layer,
               "latency_ms_p50": medians["pruned"], "latency_ms_p50_before": medians["original"],
               "latency_batch_size": args.latency_batch_size, **run.tuning}
    saved = save_pruned(run, args, transform, metrics, memory_format)
    summary = summarize(run, args, config, saved, metrics, medians, memory_format, transform)
    _write_reports(Path(args.output_dir), summary, per_layer, run.target_rows)
    print(json.dumps(summary, indent=2))
    return summary


def _write_reports(output_dir: Path, summary: dict[str, Any], per_layer: dict[str, float],
                   target_rows: list[dict[str, Any]]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_results(output_dir / "results.json", summary)
    write_results(output_dir / "layer_sparsity.csv",
                  [{"layer": k, "sparsity": v} for k, v in per_layer.items()])
    if target_rows:
        write_results(output_dir / "target_steps.csv", target_rows)
    if summary["method"] in UNSTRUCTURED:
        logger.info("sparsity per layer (%s):\n%s", output_dir / "layer_sparsity.csv",
                    "\n".join(f"  {k:40s} {v:.3f}" for k, v in per_layer.items()))
        logger.warning(UNSTRUCTURED_NOTE)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
