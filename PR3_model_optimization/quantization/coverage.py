"""What int8 covers: multiply-accumulates per layer and the share of them a set of layers carries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.models import classifier_layer

# Layer types whose weights int8 can carry; their MACs are (nearly) all of a CNN's or transformer's compute.
MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM, nn.GRU)
DYNAMIC_LAYERS = (nn.Linear, nn.LSTM, nn.GRU)


def _module_macs(module: nn.Module, inputs: tuple, output) -> int:
    """MACs per sample of one Conv/Linear/LSTM/GRU call."""
    out = output[0] if isinstance(output, tuple) else output
    batch = inputs[0].shape[0] if inputs[0].dim() > 1 else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        per_out = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        return out.numel() // batch * per_out
    if isinstance(module, nn.Linear):
        return out.numel() // batch * module.in_features
    # LSTM (4 gates) / GRU (3 gates): gates x hidden x (input + hidden) per step and layer
    gates = 4 if isinstance(module, nn.LSTM) else 3
    steps = inputs[0].shape[1 if module.batch_first else 0] if inputs[0].dim() == 3 else 1
    dirs = 2 if module.bidirectional else 1
    size = module.hidden_size
    first = gates * size * (module.input_size + size)
    rest = gates * size * (size * dirs + size) * (module.num_layers - 1)
    return steps * dirs * (first + rest)


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv/Linear/LSTM/GRU layer, by qualified name."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            macs[name] = macs.get(name, 0) + _module_macs(module, inputs, output)
        return record

    for name, module in model.named_modules():
        if isinstance(module, MAC_LAYERS):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return macs


def mac_fraction(macs: dict[str, int], layers: Iterable[str]) -> float:
    """Share (0..1) of the model's Conv/Linear/LSTM MACs carried by ``layers``."""
    total = sum(macs.values())
    return sum(macs.get(name, 0) for name in set(layers)) / total if total else 0.0


def dynamic_coverage(model: nn.Module, input_shape: Sequence[int]) -> tuple[float, list[str]]:
    """Fraction of MACs that dynamic int8 can touch (Linear/LSTM/GRU layers only) and those layers."""
    macs = layer_macs(model, input_shape)
    names = [name for name, module in model.named_modules()
             if isinstance(module, DYNAMIC_LAYERS) and name in macs]
    return mac_fraction(macs, names), names


def sensitive_layers(model: nn.Module) -> tuple[str, ...]:
    """The layers most often hurt by int8: the first convolution (raw pixels) and the classifier."""
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    try:
        classifier = classifier_layer(model)[0]
    except UsageError:
        classifier = None
    return tuple(name for name in (first_conv, classifier) if name)
