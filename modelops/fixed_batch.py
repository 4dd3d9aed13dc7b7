"""ExportedPrograms whose batch size is fixed: found, and run on any batch that is a multiple of it.

``torch.export.export(model, (torch.randn(1, 3, 224, 224),))`` without ``dynamic_shapes`` fixes the batch size
at 1, and the program then refuses any other batch with a guard error. The loader runs such a program on a
larger batch one slice at a time (:class:`FixedBatchModule`), so it can still be evaluated, benchmarked and
served; its figures at batch 16 are then those of 16 calls at batch 1, which is what that file does.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.model_probe import exported_user_input_shape

logger = logging.getLogger(__name__)


def exported_batch_size(exported: torch.export.ExportedProgram) -> int | None:
    """The batch size the program's first user input fixes, or None when it is dynamic (or unknown)."""
    shape = exported_user_input_shape(exported)
    if not shape:
        return None
    return shape[0] if isinstance(shape[0], int) else None


class FixedBatchModule(nn.Module):
    """``module`` run on slices of ``batch_size`` samples, the outputs concatenated.

    A batch whose size is not a multiple of ``batch_size`` is bad input: it says so.
    """

    def __init__(self, module: nn.Module, batch_size: int, source: object) -> None:
        super().__init__()
        self.module = module
        self.batch_size = batch_size
        self.source = source

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[0]
        if size == self.batch_size:
            return self.module(batch)
        if size % self.batch_size:
            raise UsageError(f"{self.source} was exported with a fixed batch size of {self.batch_size} and cannot "
                             f"run a batch of {size}; use batch sizes that are multiples of {self.batch_size}, or "
                             "export it with a dynamic batch (dynamic_shapes={0: torch.export.Dim('batch')})")
        return torch.cat([self.module(part) for part in batch.split(self.batch_size)])


def run_any_batch(module: nn.Module, exported: torch.export.ExportedProgram, source: object) -> nn.Module:
    """``module`` (the program's module) as it is when its batch is dynamic, else wrapped to run slices."""
    fixed = exported_batch_size(exported)
    if fixed is None:
        return module
    logger.warning("%s was exported with a fixed batch size of %d: a larger batch runs in slices of %d (export "
                   "it with a dynamic batch to run batches in one call)", source, fixed, fixed)
    return FixedBatchModule(module, fixed, source)
