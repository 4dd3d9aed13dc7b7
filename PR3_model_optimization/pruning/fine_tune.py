"""Fine-tuning a pruned model (optionally with its unpruned original as teacher) and scoring it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelops.data import DatasetSplits, make_loader
from modelops.evaluate import evaluate
from modelops.training import StepFn, TrainingConfig, fit


def teacher_fine_tune_step(teacher: Callable[[torch.Tensor], torch.Tensor], *, alpha: float, temperature: float,
                           label_smoothing: float = 0.0) -> StepFn:
    """``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)`` (Hinton et al.).

    Built from the distillation module shared with ``model_distillation.py``; ``teacher`` is any
    artifact predictor (or module), run without gradients.
    """
    from PR3_model_optimization.distillation import DistillationLoss, TeacherRunner
    from PR3_model_optimization.distillation import distillation_step as kd_step

    loss = DistillationLoss(temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)
    return kd_step(loss, teacher=TeacherRunner(teacher))


def fine_tune_pruned(
    model: nn.Module, data: DatasetSplits, config: TrainingConfig, *, batch_size: int, seed: int, workers: int = 0,
    output_dir: Path, step_fn: StepFn | None = None, desc: str = "fine-tune", progress: bool = True,
) -> dict[str, Any]:
    """``modelops.training.fit`` on the train split, best weights by validation accuracy; a summary dict.

    Args:
        model: the pruned model, trained in place.
        data: the splits it was trained on.
        config: the training settings.
        batch_size, seed, workers: the train loader's batch, shuffle seed and worker processes.
        output_dir: checkpoints and metrics.csv.
        step_fn: the training step (default: cross-entropy with ``config.label_smoothing``).
        desc, progress: the progress bar's label, and whether to show it (default: fine-tune, True).
    """
    train_loader = make_loader(data.train, batch_size, shuffle=True, seed=seed, workers=workers)
    val_loader = make_loader(data.val, 256)
    result = fit(model, train_loader, val_loader, config, output_dir=output_dir, step_fn=step_fn, desc=desc,
                 progress=progress)
    model.eval()
    return {"best_val_top1_pct": result.best_accuracy, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history)}


def test_accuracy(model: Callable[[torch.Tensor], torch.Tensor], data: DatasetSplits,
                  limit: int | None = None) -> float:
    return evaluate(model, make_loader(data.test, 256, limit=limit))["accuracy"]
