"""Accuracy and agreement of any predictor (or module) on a DataLoader."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader


@torch.inference_mode()
def predict_logits(
    predict: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, *, progress: bool = False, desc: str = "eval"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``predict`` over ``loader``; return (logits, targets) concatenated on CPU."""
    from tqdm import tqdm

    was_training = getattr(predict, "training", False)
    if isinstance(predict, torch.nn.Module):
        predict.eval()
    logits, targets = [], []
    for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
        logits.append(predict(images).float().cpu())
        targets.append(labels)
    if isinstance(predict, torch.nn.Module):
        predict.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(targets) == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == targets).float().mean() * 100)


def top1_agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Percent of samples whose top-1 class equals the reference model's."""
    return float((logits.argmax(dim=1) == reference_logits.argmax(dim=1)).float().mean() * 100)


def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, *, progress: bool = False
) -> dict[str, float]:
    """``{"accuracy": percent, "samples": n}`` of ``predict`` on ``loader``."""
    logits, targets = predict_logits(predict, loader, progress=progress)
    return {"accuracy": round(accuracy(logits, targets), 4), "samples": len(targets)}
