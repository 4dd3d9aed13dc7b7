"""One pruning run's steps: measure the original, prune (to ``--amount`` or a latency target) with optional
fine-tuning, and time the result. ``model_pruning.main`` calls them in order with the run's :class:`PruningConfig`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modelops.artifact import Manifest, load_artifact
from modelops.data import DatasetSplits, make_loader
from modelops.errors import UsageError
from modelops.models import count_macs, count_parameters
from modelops.training import StepFn, cross_entropy_step
from PR3_model_optimization.pruning.config import PruningConfig
from PR3_model_optimization.pruning.fine_tune import fine_tune_pruned, teacher_fine_tune_step, test_accuracy
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


def make_pruner(config: PruningConfig, model: nn.Module, input_shape: list[int]):
    """The structured pruner (built before any data work so a model with nothing to prune fails at once)."""
    if config.pruning_method != "structured":
        return None
    n_steps = max(1, round(config.max_amount / config.amount_step)) if config.targeted else config.steps
    return build_structured_pruner(
        model, input_shape, amount=config.max_amount if config.targeted else config.amount, steps=n_steps,
        importance=config.importance, round_to=config.round_to)


def start_run(config: PruningConfig, model: nn.Module, manifest: Manifest, data: DatasetSplits) -> PruningRun:
    """Copy the original and measure it on ``data`` (the splits it was trained on) before pruning starts."""
    original = copy.deepcopy(model).eval()
    original_fn: Variant = (original, True) if manifest.runtime.memory_format == "channels_last" \
        else original
    return PruningRun(model=model, manifest=manifest, original=original, original_fn=original_fn, data=data,
                      params_before=count_parameters(model), macs_before=count_macs(model, manifest.input_shape),
                      accuracy_before=test_accuracy(original, data, config.eval_limit))


def fine_tune_step_fn(config: PruningConfig, manifest: Manifest) -> StepFn | None:
    """The fine-tuning step: cross-entropy, plus the teacher's soft targets with ``--distill-from``."""
    if not config.fine_tune:
        return None
    label_smoothing = config.training.label_smoothing
    if not config.distill_from:
        return cross_entropy_step(label_smoothing)
    teacher = load_artifact(config.distill_from, config.load)
    if teacher.num_classes != manifest.num_classes:
        raise UsageError(f"--distill-from {config.distill_from} predicts {teacher.num_classes} "
                         f"classes, the model {manifest.num_classes}")
    return teacher_fine_tune_step(teacher, alpha=config.kd_alpha, temperature=config.kd_temperature,
                                  label_smoothing=label_smoothing)


def _fine_tune(run: PruningRun, config: PruningConfig, step_fn: StepFn | None, output_dir: Path,
               desc: str = "fine-tune") -> dict[str, Any]:
    return fine_tune_pruned(run.model, run.data, config.training, batch_size=config.batch_size, seed=config.seed,
                            workers=config.workers, output_dir=output_dir, step_fn=step_fn, desc=desc)


def prune_in_steps(run: PruningRun, config: PruningConfig, pruner, step_fn: StepFn | None) -> float:
    """Prune (to the latency target, or ``--amount`` in ``--steps``), fine-tuning as asked; the amount reached."""
    model, data = run.model, run.data
    grad_loader = make_loader(data.train, min(config.batch_size, 32), shuffle=True, seed=config.seed)
    output_dir = Path(config.output_dir)
    if pruner is not None and config.targeted:
        run.target_rows = prune_to_target(pruner, model, run.original_fn, config, run.input_shape, grad_loader)
        run.accuracy_pruned = test_accuracy(model, data, config.eval_limit)
        if config.fine_tune:
            run.tuning = _fine_tune(run, config, step_fn, output_dir / "fine_tune")
        return run.target_rows[-1]["amount"]
    amount, steps = config.amount, config.steps
    for step in range(1, steps + 1):
        if pruner is not None:
            structured_step(pruner, model, config.importance, grad_loader)
            logger.info("structured step %d/%d: %d -> %d parameters", step, steps, run.params_before,
                        count_parameters(model))
        else:
            done, goal = amount * (step - 1) / steps, amount * step / steps
            # torch's pruning containers count the new amount among the weights still unpruned.
            unstructured_prune(model, (goal - done) / (1 - done), config.pruning_method)
        if step == steps:
            run.accuracy_pruned = test_accuracy(model, data, config.eval_limit)
        if config.fine_tune:
            run.tuning = _fine_tune(run, config, step_fn, output_dir / f"fine_tune_step{step}",
                                    desc=f"fine-tune step {step}/{steps}")
    if pruner is not None and count_parameters(model) == run.params_before:
        raise UsageError(f"--amount {amount} removed no channel (channel counts are rounded to "
                         f"multiples of --round-to {config.round_to}): raise --amount or lower --round-to")
    if pruner is None:
        make_permanent(model)
    return amount


def time_pruned(run: PruningRun, config: PruningConfig) -> tuple[dict[str, float], str]:
    """Median latency of original and pruned (each in its own process, timed in turns) and the memory format
    the pruned one keeps."""
    structured = config.pruning_method == "structured"
    variants: dict[str, Variant] = {"original": run.original_fn, "pruned": run.model}
    if structured and config.memory_format == "auto":
        variants["pruned_channels_last"] = (run.model, True)
    if structured and config.memory_format == "channels_last":
        variants["pruned"] = (run.model, True)
    medians = compare_latency(variants, run.input_shape, batch_size=config.latency_batch_size,
                              rounds=config.latency_rounds, threads=config.threads)
    memory_format = "channels_last" if config.memory_format == "channels_last" else "contiguous"
    cl_gain = medians["pruned"] / medians.get("pruned_channels_last", math.inf)
    if cl_gain >= CHANNELS_LAST_MIN_GAIN:
        memory_format = "channels_last"
        medians["pruned"] = medians["pruned_channels_last"]
    return medians, memory_format
