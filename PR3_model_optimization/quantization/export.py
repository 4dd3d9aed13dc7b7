"""``torch.export`` with a dynamic batch dimension: the graph PT2E int8 and bf16 both start from."""

from __future__ import annotations

import torch
from torch import nn

_BATCH = {0: torch.export.Dim("batch", min=1, max=4096)}


def export_batch_dynamic(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` with a dynamic batch dimension (an example of batch 1 is widened to 2)."""
    # strict=True: the non-strict tracer keeps in-place add_/relu_ and the x86 quantizer then fails with
    # "Input partition has more than one output node".
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    return torch.export.export(model, (example,), dynamic_shapes=(_BATCH,), strict=True)
