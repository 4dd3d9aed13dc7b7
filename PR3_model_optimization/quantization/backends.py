"""The backend registry: every int8 backend the quantization script can use, by name.

A backend is a quantizer class (built once per fp32 model, then asked for one int8 artifact per trial) plus
what the shared loader needs to run its output: the artifact format, the file suffix and the manifest's
runtime hints. Adding a backend is one :class:`Backend` entry in :data:`REGISTRY` and a module with its
quantizer; the ``--backend`` choices, :class:`~PR3_model_optimization.quantization.config.QuantConfig`'s
check and the search all read :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from PR3_model_optimization.quantization.config import QuantConfig


class Quantizer(Protocol):
    """Makes int8 artifacts of one fp32 model; one instance serves every trial of a run."""

    def build(self, config: QuantConfig, calibration: Sequence[torch.Tensor], out: Path,
              train_step: Callable | None = None) -> list[str]:
        """Write the int8 model for ``config`` at ``out``; return the module names that run in int8."""
        ...

    def fp32_artifact(self) -> Path | None:
        """The fp32 model in this backend's runtime (after a build), to split runtime and int8 gains; or None."""
        ...


@dataclass(frozen=True)
class Backend:
    """One registry entry.

    Args:
        name: the ``--backend`` value.
        format: the artifact format the shared loader reads (``onnx``, ``exported_program``).
        suffix: file suffix of its artifacts.
        quantizer: ``module:Class`` of its :class:`Quantizer`, imported on first use (its runtime may be absent).
        runtime: the manifest's ``runtime`` hints for the loader (e.g. ``{"compile": True}``).
        method_runtime: extra hints for one method (e.g. ``{"bf16": {"precision": "bf16"}}``).
        requires: the module its runtime needs; where it does not import, the backend is unavailable.
        starts_from: the inputs its quantizer starts from: ``eager`` (a module), ``onnx`` (an fp32 ONNX file: ONNX
            and TorchScript inputs), ``exported_program`` (an fp32 ``.pt2``; a backend that also starts from
            ``onnx`` is given the program's ONNX export).
    """

    name: str
    format: str
    suffix: str
    quantizer: str
    runtime: dict[str, Any] = field(default_factory=dict)
    method_runtime: dict[str, dict[str, Any]] = field(default_factory=dict)
    requires: str = ""
    starts_from: tuple[str, ...] = ("eager",)

    def runtime_for(self, method: str) -> dict[str, Any]:
        """The manifest's ``runtime`` hints for an artifact made with ``method``."""
        return {**self.runtime, **self.method_runtime.get(method, {})}

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run here (its runtime is not installed), or None."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install {self.requires})"
        return None

    def make_quantizer(self, model: nn.Module | None, example: torch.Tensor, work_dir: Path,
                       onnx_path: Path | None = None,
                       exported: torch.export.ExportedProgram | None = None) -> Quantizer:
        """The quantizer for ``model``, or for the fp32 ONNX file ``onnx_path`` or program ``exported``."""
        module_name, _, class_name = self.quantizer.partition(":")
        quantizer_class = getattr(importlib.import_module(module_name), class_name)
        if onnx_path is None and exported is not None and "onnx" in self.starts_from:
            from modelops.quantization_input import exported_to_onnx

            onnx_path = exported_to_onnx(exported, Path(work_dir) / "exported_fp32.onnx")  # shared by the backends
        if onnx_path is not None:
            return quantizer_class(None, example, work_dir, onnx_path=onnx_path)
        if exported is not None:
            return quantizer_class(None, example, work_dir, exported=exported)
        return quantizer_class(model, example, work_dir)


REGISTRY: dict[str, Backend] = {
    backend.name: backend for backend in (
        Backend("onnxruntime", "onnx", ".onnx",
                "PR3_model_optimization.quantization.onnxruntime_backend:OnnxRuntimeQuantizer",
                starts_from=("eager", "onnx", "exported_program")),
        # PT2E int8 is fast only after inductor compiles it with weight freezing: the loader is told to.
        Backend("pt2e", "exported_program", ".pt2",
                "PR3_model_optimization.quantization.pt2e_backend:Pt2eQuantizer", runtime={"compile": True},
                requires="torchao", starts_from=("eager", "exported_program")),
        # OpenVINO runs the ONNX file itself (int8 QDQ from NNCF, or fp32 executed in bf16).
        Backend("openvino", "onnx", ".onnx", "PR3_model_optimization.quantization.openvino_backend:OpenVinoQuantizer",
                runtime={"engine": "openvino"}, method_runtime={"bf16": {"precision": "bf16"}}, requires="openvino",
                starts_from=("eager", "onnx", "exported_program")),
    )
}
BACKENDS = tuple(REGISTRY)
