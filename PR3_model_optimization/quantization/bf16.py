"""bf16 inference without calibration: where the CPU has bf16 units, and the torch form of a bf16 model.

A bf16 model keeps the fp32 graph and runs its arithmetic in bfloat16 (8-bit exponent: the same range as
fp32, so no calibration; about 3 significant digits). It pays only on CPUs with bf16 dot-product units:
AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX-BF16 (Sapphire Rapids and later). Elsewhere it is
emulated and slower than fp32, so the quantization script refuses it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from modelops.cpu import cpu_info
from PR3_model_optimization.quantization.export import export_batch_dynamic


def bf16_support() -> tuple[bool, str]:
    """Whether this CPU has bf16 units, and a sentence that names them or says they are missing."""
    info = cpu_info()
    units = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
             if info.get(f"has_{flag}")]
    if units:
        return True, f"{' and '.join(units)} present on {info['cpu_model']}"
    return False, (f"{info['cpu_model']} has neither AVX512-BF16 nor AMX-BF16, so bf16 would be emulated and "
                   "slower than fp32")


class Bf16Model(nn.Module):
    """An fp32-in, fp32-out wrapper whose weights and arithmetic are bfloat16 (what inductor compiles to bf16
    oneDNN kernels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.bfloat16)).float()


def save_bf16_program(model: nn.Module, example: torch.Tensor, out: Path) -> list[str]:
    """Save ``model`` in bf16 as a ``torch.export`` archive with a dynamic batch; nothing is int8, so no layers."""
    program = export_batch_dynamic(Bf16Model(model), example[:2].clone())
    program.example_inputs = None
    torch.export.save(program, str(out))
    return []
