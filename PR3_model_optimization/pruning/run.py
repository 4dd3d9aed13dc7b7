"""One pruning run's steps: measure the original, prune (to ``--amount`` or a latency target) with optional
fine-tuning, and time the result. ``model_pruning.main`` calls them in order.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modelops.artifact import Manifest, load_artifact
from modelops.cli import load_model_dataset, load_options
from modelops.data import DatasetSplits, make_loader
from modelops.errors import UsageError
from modelops.models import count_macs, count_parameters
from modelops.training import StepFn, cross_entropy_step
from PR3_model_optimization.pruning.fine_tune import fine_tune, teacher_fine_tune_step, test_accuracy
from PR3_model_optimization.pruning.latency import (
    CHANNELS_LAST_MIN_GAIN,
    Variant,
    compare_latency,
    prune_to_target,
)
from PR3_model_optimization.pruning.structured import build_structured_pruner, structured_step
from PR3_model_optimization.pruning.unstructured import make_permanent, unstructured_prune

logger = logging.getLogger(__name__)


@dataclass
class PruningRun:
    """What one invocation works on: the model being pruned, its untouched original, data and references.

    Args:
        model: the model pruned in place.
        manifest: its manifest.
        original: an untouched eval-mode copy.
        original_fn: the copy as it is timed: ``(copy, True)`` when its manifest hints channels_last.
        data: the dataset splits the model was trained on.
        params_before, macs_before, accuracy_before: the original's figures.
    """

    model: nn.Module
    manifest: Manifest
    original: nn.Module
    original_fn: Variant
    data: DatasetSplits
    params_before: int
    macs_before: int
    accuracy_before: float
    target_rows: list[dict[str, Any]] = field(default_factory=list)
    tuning: dict[str, Any] = field(default_factory=dict)
    accuracy_pruned: float | None = None

    @property
    def input_shape(self) -> list[int]:
        return list(self.manifest.input_shape)


def targeted(args: argparse.Namespace) -> bool:
    return args.target_speedup is not None or args.target_latency_ms is not None


def make_pruner(args: argparse.Namespace, model: nn.Module, input_shape: list[int]):
    """The structured pruner (built before any data work so a model with nothing to prune fails at once)."""
    if args.pruning_method != "structured":
        return None
    n_steps = max(1, round(args.max_amount / args.amount_step)) if targeted(args) else args.steps
    return build_structured_pruner(
        model, input_shape, amount=args.max_amount if targeted(args) else args.amount, steps=n_steps,
        importance=args.importance, round_to=args.round_to)


def _resolve_dataset(args: argparse.Namespace, manifest: Manifest) -> DatasetSplits:
    name = args.dataset or manifest.dataset or "digits"
    data = load_model_dataset(args, manifest, dataset=name)  # fake data takes the model's classes and size
    if manifest.num_classes and data.num_classes != manifest.num_classes:
        raise UsageError(f"{args.model} predicts {manifest.num_classes} classes but dataset {name!r} has "
                         f"{data.num_classes}: pass the --dataset it was trained on")
    return data


def start_run(args: argparse.Namespace, model: nn.Module, manifest: Manifest) -> PruningRun:
    """Copy the original and measure it before pruning starts."""
    original = copy.deepcopy(model).eval()
    original_fn: Variant = (original, True) if manifest.runtime.memory_format == "channels_last" \
        else original
    data = _resolve_dataset(args, manifest)
    return PruningRun(model=model, manifest=manifest, original=original, original_fn=original_fn, data=data,
                      params_before=count_parameters(model), macs_before=count_macs(model, manifest.input_shape),
                      accuracy_before=test_accuracy(original, data, args.eval_limit))


def fine_tune_step_fn(args: argparse.Namespace, manifest: Manifest) -> StepFn | None:
    """The fine-tuning step: cross-entropy, plus the teacher's soft targets with ``--distill-from``."""
    if not args.fine_tune:
        return None
    if not args.distill_from:
        return cross_entropy_step(args.label_smoothing)
    teacher = load_artifact(args.distill_from, load_options(args))
    if teacher.num_classes != manifest.num_classes:
        raise UsageError(f"--distill-from {args.distill_from} predicts {teacher.num_classes} "
                         f"classes, the model {manifest.num_classes}")
    return teacher_fine_tune_step(teacher, alpha=args.kd_alpha, temperature=args.kd_temperature,
                                  label_smoothing=args.label_smoothing)


def prune_in_steps(run: PruningRun, args: argparse.Namespace, pruner, step_fn: StepFn | None) -> float:
    """Prune (to the latency target, or ``--amount`` in ``--steps``), fine-tuning as asked; the amount reached."""
    model, data = run.model, run.data
    grad_loader = make_loader(data.train, min(args.batch_size, 32), shuffle=True, seed=args.seed)
    output_dir = Path(args.output_dir)
    if pruner is not None and targeted(args):
        run.target_rows = prune_to_target(pruner, model, run.original_fn, args, run.input_shape, grad_loader)
        run.accuracy_pruned = test_accuracy(model, data, args.eval_limit)
        if args.fine_tune:
            run.tuning = fine_tune(model, data, args, output_dir=output_dir / "fine_tune", step_fn=step_fn)
        return run.target_rows[-1]["amount"]
    amount = args.amount
    for step in range(1, args.steps + 1):
        if pruner is not None:
            structured_step(pruner, model, args.importance, grad_loader)
            logger.info("structured step %d/%d: %d -> %d parameters", step, args.steps, run.params_before,
                        count_parameters(model))
        else:
            done, goal = amount * (step - 1) / args.steps, amount * step / args.steps
            # torch's pruning containers count the new amount among the weights still unpruned.
            unstructured_prune(model, (goal - done) / (1 - done), args.pruning_method)
        if step == args.steps:
            run.accuracy_pruned = test_accuracy(model, data, args.eval_limit)
        if args.fine_tune:
            run.tuning = fine_tune(model, data, args, output_dir=output_dir / f"fine_tune_step{step}",
                                   step_fn=step_fn, desc=f"fine-tune step {step}/{args.steps}")
    if pruner is not None and count_parameters(model) == run.params_before:
        raise UsageError(f"--amount {amount} removed no channel (channel counts are rounded to "
                         f"multiples of --round-to {args.round_to}): raise --amount or lower --round-to")
    if pruner is None:
        make_permanent(model)
    return amount


def time_pruned(run: PruningRun, args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """Median latency of original and pruned (each in its own process, timed in turns) and the memory format
    the pruned one keeps."""
    structured = args.pruning_method == "structured"
    variants: dict[str, Variant] = {"original": run.original_fn, "pruned": run.model}
    if structured and args.memory_format == "auto":
        variants["pruned_channels_last"] = (run.model, True)
    if structured and args.memory_format == "channels_last":
        variants["pruned"] = (run.model, True)
    medians = compare_latency(variants, run.input_shape, batch_size=args.latency_batch_size,
                              rounds=args.latency_rounds, threads=args.threads)
    memory_format = "channels_last" if args.memory_format == "channels_last" else "contiguous"
    cl_gain = medians["pruned"] / medians.get("pruned_channels_last", math.inf)
    if cl_gain >= CHANNELS_LAST_MIN_GAIN:
        memory_format = "channels_last"
        medians["pruned"] = medians["pruned_channels_last"]
    return medians, memory_format
