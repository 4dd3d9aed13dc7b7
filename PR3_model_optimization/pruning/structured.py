"""Structured pruning with torch-pruning: remove whole channels, following the dependency graph across residual
connections so every coupled layer shrinks together. The result is physically smaller and faster on ordinary
dense kernels, and reloads as a plain torchvision module (``modelops.models.resize_to_state_dict``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from modelops.errors import UsageError
from modelops.models import classifier_layer

IMPORTANCES = ("l1", "l2", "bn", "taylor")
# Batches whose gradients feed the Taylor importance.
TAYLOR_BATCHES = 4


def build_importance(name: str):
    """torch-pruning's channel-group scorer for ``--importance``."""
    import torch_pruning as tp

    if name in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UsageError(f"Unknown importance {name!r}. Choose one of: {', '.join(IMPORTANCES)}")


def build_structured_pruner(
    model: nn.Module, input_shape: list[int], *, amount: float, steps: int = 1, importance: str = "l1",
    round_to: int = 8,
):
    """A torch-pruning ``BasePruner`` that reaches ``amount`` of channels in ``steps`` calls of ``step()``.

    The classifier layer is ignored so the model keeps its number of classes. Raises
    :class:`UsageError` when the model has no channel group that may be pruned.
    """
    import torch_pruning as tp

    ignored = []
    with contextlib.suppress(UsageError):  # no Linear head: every layer is fair game
        ignored.append(classifier_layer(model)[1])
    was_training = model.training
    model.eval()  # tracing in eval mode leaves BatchNorm running statistics alone
    pruner = tp.pruner.BasePruner(
        model, torch.zeros(1, *input_shape), importance=build_importance(importance), pruning_ratio=amount,
        iterative_steps=steps, ignored_layers=ignored, round_to=round_to,
    )
    model.train(was_training)
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                           root_module_types=pruner.root_module_types))
    if not groups:
        raise UsageError(f"{type(model).__name__} has no prunable channels (only its classifier, which is "
                         "kept): nothing to prune structurally")
    return pruner


def accumulate_taylor_gradients(model: nn.Module, loader, batches: int = TAYLOR_BATCHES) -> None:
    """Fill ``.grad`` from a few training batches: Taylor importance scores channels by |w * dL/dw|."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        if i >= batches:
            break
        F.cross_entropy(model(images), targets).backward()


def structured_step(pruner, model: nn.Module, importance: str, grad_loader=None) -> None:
    """One pruning step; Taylor importance needs fresh gradients first."""
    if importance == "taylor":
        if grad_loader is None:
            raise UsageError("--importance taylor needs training data for gradients")
        accumulate_taylor_gradients(model, grad_loader)
    pruner.step()
    model.zero_grad(set_to_none=True)
