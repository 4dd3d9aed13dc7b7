"""torchvision classification models: build by name, resize heads, rebuild pruned shapes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.tv_compat import torchvision

logger = logging.getLogger(__name__)


def list_classification_archs() -> list[str]:
    """Names of every torchvision classification architecture (resnet18, mobilenet_v3_small, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> str:
    archs = list_classification_archs()
    if arch not in archs:
        close = [a for a in archs if a.startswith(arch[:5])][:8] or archs[:8]
        raise UsageError(
            f"Unknown architecture {arch!r}. Choose a torchvision classification model, e.g. {', '.join(close)}"
        )
    return arch


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final Linear layer (``fc``, ``classifier[-1]``, ``heads.head``, ...) and its qualified name."""
    last: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise UsageError(f"{type(model).__name__} has no Linear classifier layer")
    return last


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def create_model(arch: str, num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """A torchvision classifier with a ``num_classes``-way head.

    Args:
        arch: torchvision model name (see :func:`list_classification_archs`).
        num_classes: size of the classifier output.
        pretrained: start from torchvision's default ImageNet weights (downloads them; needs network)
            and replace the head when ``num_classes`` differs from 1000.
    """
    check_arch(arch)
    if not pretrained:
        return _fit_batchnorm_for_short_runs(torchvision.models.get_model(arch, weights=None, num_classes=num_classes))
    try:
        model = torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise UsageError(
            f"Could not fetch pretrained weights for {arch!r} ({exc}). They are downloaded from the internet; "
            "run online once or drop --pretrained."
        ) from exc
    name, head = classifier_layer(model)
    if head.out_features != num_classes:
        _set_submodule(model, name, nn.Linear(head.in_features, num_classes))
    return model


def _fit_batchnorm_for_short_runs(model: nn.Module) -> nn.Module:
    """Raise batch-norm momentum below PyTorch's 0.1 default back to 0.1.

    torchvision builds MobileNetV3 and EfficientNet with momentum 0.01, tuned for ImageNet runs of hundreds
    of epochs. In the few hundred steps of a run here the running statistics hardly leave their initial
    values, and eval mode then predicts at chance (mobilenet_v3_small on digits: 90% train accuracy, 10% val).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, 0.1)
    return model


def resize_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild conv, batch-norm and linear layers so their shapes match ``state_dict``.

    Structured pruning removes channels, so a pruned model no longer fits the constructor of its
    architecture. The layer shapes are fully determined by the saved tensors, so the stock model
    is resized layer by layer, and a pruned artifact loads as a plain, trainable ``nn.Module``
    without the pruning library or any pickled code.
    """
    for name, module in list(model.named_modules()):
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is None:
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            out_channels = weight.shape[0]
            groups = out_channels if depthwise else module.groups
            new = type(module)(
                weight.shape[1] * groups,
                out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=groups,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if weight.shape[0] == module.num_features:
                continue
            new = type(module)(
                weight.shape[0], eps=module.eps, momentum=module.momentum, affine=module.affine,
                track_running_stats=module.track_running_stats,
            )
        elif isinstance(module, nn.Linear):
            if tuple(weight.shape) == (module.out_features, module.in_features):
                continue
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None)
        elif isinstance(module, nn.LayerNorm):
            if tuple(weight.shape) == tuple(module.normalized_shape):
                continue
            new = nn.LayerNorm(tuple(weight.shape), eps=module.eps, elementwise_affine=module.elementwise_affine)
        else:
            continue
        _set_submodule(model, name, new)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> int:
    """Multiply-accumulates of one forward pass for one sample, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
