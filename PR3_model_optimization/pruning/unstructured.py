"""Unstructured pruning: zero the smallest-|w| weights (L1) across all layers or per layer, keep dense tensors.

Dense CPU kernels multiply zeros as fast as any other number, so this is NOT faster;
:func:`compress_in_place` stores the weights deflate-compressed so the zeros at least cost no disk space.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch.nn.utils.prune as torch_prune
from torch import nn

from modelops.errors import UsageError
from modelops.models import count_parameters

UNSTRUCTURED = ("global", "layerwise")
UNSTRUCTURED_NOTE = (
    "unstructured pruning zeroes weights but keeps dense tensors: dense CPU kernels run no faster and "
    "the plain file is no smaller (use --compress for a smaller file)"
)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers with a weight: what unstructured pruning may zero."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and getattr(m, "weight", None) is not None]


def unstructured_prune(model: nn.Module, amount: float, method: str = "global") -> nn.Module:
    """Zero the ``amount`` smallest-|w| weights; masks stay attached until :func:`make_permanent`.

    Applied again to an already pruned model, ``amount`` counts among the weights still unpruned
    (torch's pruning containers compose), which is what iterative pruning needs.

    Args:
        model: modified in place.
        amount: fraction in (0, 1).
        method: ``global`` (one threshold across all layers) or ``layerwise`` (the same fraction per layer).
    """
    layers = prunable_layers(model)
    if not layers:
        raise UsageError(f"{type(model).__name__} has no Conv or Linear weights: nothing to prune")
    if method == "global":
        torch_prune.global_unstructured([(m, "weight") for _, m in layers],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
    elif method == "layerwise":
        for _, module in layers:
            torch_prune.l1_unstructured(module, "weight", amount=amount)
    else:
        raise UsageError(f"Unknown unstructured method {method!r}. Choose one of: {', '.join(UNSTRUCTURED)}")
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` every mask, leaving plain ``weight`` parameters holding the zeros."""
    for module in model.modules():
        if torch_prune.is_pruned(module):
            hooks = [h for h in module._forward_pre_hooks.values()
                     if isinstance(h, torch_prune.BasePruningMethod)]
            for hook in hooks:
                torch_prune.remove(module, hook._tensor_name)
    return model


def sparsity_report(model: nn.Module) -> tuple[float, float, dict[str, float]]:
    """(zero fraction of prunable weights, zero fraction of all parameters, per-layer zero fraction)."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in prunable_layers(model):
        weight = module.weight.detach()
        n_zero = int((weight == 0).sum())
        per_layer[name] = round(n_zero / weight.numel(), 4)
        zeros += n_zero
        total += weight.numel()
    all_zero = sum(int((p.detach() == 0).sum()) for p in model.parameters())
    all_total = count_parameters(model)
    return zeros / max(total, 1), all_zero / max(all_total, 1), per_layer


def compress_in_place(path: Path) -> None:
    """Rewrite a ``torch.save`` zip with deflate: zeroed weights shrink; ``torch.load`` reads it unchanged."""
    tmp = path.with_name(path.name + ".deflate")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                          compresslevel=6) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    tmp.replace(path)
