"""One training loop for every script that trains: the baseline, pruning fine-tune, distillation.

After torchvision's ``references/classification/train.py``: ``train_one_epoch`` and ``evaluate`` per
epoch, a rolling ``checkpoint.pth`` holding ``{model, optimizer, lr_scheduler, epoch, args}``,
``--resume`` continuing at ``epoch + 1``, and the best weights kept by validation accuracy.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelops.errors import UsageError
from modelops.evaluate import evaluate
from modelops.results import write_results

logger = logging.getLogger(__name__)

# (model, batch) -> (loss, logits, targets). Distillation supplies its own to add the teacher's term.
StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
CHECKPOINT_NAME = "checkpoint.pth"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "step", "none")


def add_training_args(parser: argparse.ArgumentParser, *, epochs: int = 10, lr: float = 0.05) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    group.add_argument("--lr", type=float, default=lr, help=f"initial learning rate (default: {lr})")
    group.add_argument("--opt", default="sgd", choices=OPTIMIZERS, help="optimizer (default: sgd)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default: 5e-4)")
    group.add_argument("--lr-scheduler", default="cosine", choices=SCHEDULERS, help="LR schedule (default: cosine)")
    group.add_argument("--lr-step-size", type=int, default=5,
                       help="epochs per step for --lr-scheduler step (default: 5)")
    group.add_argument("--lr-gamma", type=float, default=0.1, help="decay for --lr-scheduler step (default: 0.1)")
    group.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default: 0.0)")
    group.add_argument("--patience", type=int, default=None,
                       help="stop after this many epochs without a better validation accuracy (default: off)")
    group.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with AVX512-BF16/AMX) (default: off)")
    group.add_argument("--no-augment", action="store_true", help="train without augmentation (default: augment)")
    group.add_argument("--resume", default=None, help="checkpoint.pth to continue from (default: start fresh)")


@dataclass(frozen=True)
class TrainingConfig:
    """What :func:`fit` reads: the training flags of :func:`add_training_args` (torchvision reference names) and
    the device. Scripts build it once from their flags with :func:`modelops.cli.training_config`.

    Args:
        epochs: epochs to train, counting those a resumed checkpoint already ran (default: 10).
        lr: initial learning rate (default: 0.05).
        opt: ``sgd`` (Nesterov) or ``adamw`` (default: sgd).
        momentum: SGD momentum (default: 0.9).
        weight_decay: weight decay (default: 5e-4).
        lr_scheduler: ``cosine``, ``step`` or ``none`` (default: cosine).
        lr_step_size, lr_gamma: epochs per step and decay of the ``step`` schedule (default: 5, 0.1).
        label_smoothing: of the default cross-entropy step (default: 0.0).
        patience: stop after this many epochs without a better validation accuracy (default: None, off).
        bf16: bf16 autocast (default: False).
        resume: a ``checkpoint.pth`` to continue from (default: None, start fresh).
        device: where to train (default: cpu).
        flags: the run's parsed flags, saved as each checkpoint's ``args`` beside these fields (torchvision keeps
            the whole command line with a checkpoint) (default: none).
    """

    epochs: int = 10
    lr: float = 0.05
    opt: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_scheduler: str = "cosine"
    lr_step_size: int = 5
    lr_gamma: float = 0.1
    label_smoothing: float = 0.0
    patience: int | None = None
    bf16: bool = False
    resume: str | None = None
    device: str = "cpu"
    # A record only, never read as a setting: left out of equality and hashing.
    flags: dict[str, Any] = field(default_factory=dict, compare=False)

    def record(self) -> dict[str, Any]:
        """The run's flags and these fields as primitives only, so checkpoints load with ``weights_only=True``."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "flags"}
        return {k: v if isinstance(v, int | float | str | bool | type(None)) else str(v)
                for k, v in {**self.flags, **settings}.items()}


def check_training_config(config: TrainingConfig) -> None:
    if config.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {config.epochs}")
    if config.lr <= 0:
        raise UsageError(f"--lr must be > 0, got {config.lr}")
    if config.resume and not Path(config.resume).is_file():
        raise UsageError(f"--resume checkpoint {config.resume} does not exist")


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.opt == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=True)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if config.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def cross_entropy_step(label_smoothing: float = 0.0) -> StepFn:
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, targets = batch[0], batch[1]
        logits = model(images)
        return criterion(logits, targets), logits, targets

    return step


def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, step_fn: StepFn, *,
    epoch: int, bf16: bool = False, device: str = "cpu", progress: bool = True, desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss and the training top-1 in percent (``train_loss``,
    ``train_top1_pct``)."""
    from tqdm import tqdm

    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f"{desc} epoch {epoch}", disable=not progress, leave=False)
    for batch in bar:
        batch = [t.to(device) if isinstance(t, torch.Tensor) else t for t in batch]
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss, logits, targets = step_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(targets)
        total_loss += float(loss.detach()) * n
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.1f}")
    return {"train_loss": total_loss / max(seen, 1), "train_top1_pct": 100 * correct / max(seen, 1)}


@dataclass
class FitResult:
    # One row per epoch (epoch, lr, train_loss, train_top1_pct, val_top1_pct, epoch_s); the best val_top1_pct and
    # its epoch. The checkpoint keeps the name best_accuracy, so checkpoints written before still resume.
    history: list[dict[str, float]] = field(default_factory=list)
    best_accuracy: float = float("-inf")
    best_epoch: int = -1
    stopped_early: bool = False


def resume(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
           result: FitResult, best_state: dict) -> tuple[int, dict]:
    """Load a ``checkpoint.pth`` into model, optimizer, scheduler and ``result``; the epoch to start at and the
    best weights so far."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UsageError(f"--resume {path} does not match this model: {str(exc)[:200]}") from exc
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["lr_scheduler"])
    start_epoch = checkpoint["epoch"] + 1
    result.history = list(checkpoint.get("history", []))
    result.best_accuracy = checkpoint.get("best_accuracy", float("-inf"))
    result.best_epoch = checkpoint.get("best_epoch", -1)
    logger.info("Resumed from %s at epoch %d", path, start_epoch)
    return start_epoch, checkpoint.get("best_state") or best_state


def save_checkpoint(output_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint.pth`` atomically (a stopped run never leaves a half-written one)."""
    tmp = output_dir / (CHECKPOINT_NAME + ".partial")
    torch.save(checkpoint, tmp)
    tmp.replace(output_dir / CHECKPOINT_NAME)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainingConfig,
    *,
    output_dir: str | Path,
    step_fn: StepFn | None = None,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train with validation every epoch; keep the best weights in ``model`` at the end.

    Writes ``output_dir/checkpoint.pth`` after every epoch (resume with ``config.resume``) and
    ``output_dir/metrics.csv`` with one row per epoch. An interrupt (Ctrl-C) keeps the last
    finished epoch's checkpoint and re-raises.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = config.device
    model.to(device)
    step_fn = step_fn or cross_entropy_step(config.label_smoothing)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    start_epoch = 0
    if config.resume:
        start_epoch, best_state = resume(config.resume, model, optimizer, scheduler, result, best_state)

    patience = config.patience
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, float] = {"epoch": epoch, "lr": lr}
        row.update(train_one_epoch(model, train_loader, optimizer, step_fn, epoch=epoch,
                                   bf16=config.bf16, device=device, progress=progress, desc=desc))
        scheduler.step()
        row["val_top1_pct"] = evaluate(model, val_loader)["accuracy"]
        row["epoch_s"] = round(time.perf_counter() - started, 2)
        result.history.append(row)
        if row["val_top1_pct"] > result.best_accuracy:
            result.best_accuracy, result.best_epoch = row["val_top1_pct"], epoch
            best_state = copy.deepcopy(model.state_dict())
        logger.info("%s epoch %d: loss %.4f train acc %.2f%% val acc %.2f%% (best %.2f%% @%d) %.1fs", desc, epoch,
                    row["train_loss"], row["train_top1_pct"], row["val_top1_pct"], result.best_accuracy,
                    result.best_epoch, row["epoch_s"])
        save_checkpoint(output_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch, "args": config.record(), "history": result.history,
            "best_accuracy": result.best_accuracy, "best_epoch": result.best_epoch, "best_state": best_state,
        })
        write_results(output_dir / "metrics.csv", result.history)
        if patience is not None and epoch - result.best_epoch >= patience:
            logger.info("No validation gain for %d epochs: stopping early", patience)
            result.stopped_early = True
            break
    model.load_state_dict(best_state)
    return result
