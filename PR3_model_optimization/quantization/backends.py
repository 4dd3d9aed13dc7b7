"""The backend registry: every int8 backend the quantization script can use, by name.

A backend is a quantizer class (built once per fp32 model, then asked for one int8 artifact per trial) plus
what the shared loader needs to run its output: the artifact format, the file suffix, the manifest's runtime
hints and, for a runtime the loader does not have, that runtime. Adding a backend is one :class:`Backend`
given to :func:`register_backend` (the built-in ones are the entries of :data:`REGISTRY`) and a module with its
quantizer: the ``--backend`` choices (:func:`backend_names`), :class:`~PR3_model_optimization.quantization.
config.QuantConfig`'s checks, ``auto``'s candidates, the accuracy-aware search and the loader all read it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from modelops.artifact import register_runtime, unregister_runtime
from modelops.manifest import RuntimeHints
from modelops.predictor import Runtime

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

    def package(self, artifact: Path, config: QuantConfig) -> dict | None:
        """Compile the published ``artifact`` ahead of time for serving; its manifest's ``runtime.aoti`` entry, or
        None where this backend has no such step (or it failed, logged)."""
        ...


def keep_float_trials(config: QuantConfig, sensitive: Sequence[str]) -> list[QuantConfig]:
    """A backend's search trials when it names none: its candidate, and the same with every layer in int8."""
    return [config, config.with_(keep_float=())]


def onnxruntime_trials(ort: QuantConfig, sensitive: Sequence[str]) -> list[QuantConfig]:
    """ONNX Runtime's search trials: its candidate, then one option changed at a time."""
    return [
        ort, ort.with_(activation_type="qint8" if ort.activation_type == "quint8" else "quint8"),
        ort.with_(keep_float=()), ort.with_(keep_float=tuple(sensitive)),
        ort.with_(per_channel=not ort.per_channel), ort.with_(calibration_method="percentile"),
        ort.with_(calibration_method="entropy"), ort.with_(calibration_batches=ort.calibration_batches * 3),
    ]


@dataclass(frozen=True)
class Backend:
    """One registry entry.

    Args:
        name: the ``--backend`` value.
        format: the artifact format the shared loader reads (``onnx``, ``exported_program``).
        suffix: file suffix of its artifacts.
        quantizer: ``module:Class`` of its :class:`Quantizer`, imported on first use (its runtime may be absent).
        methods: the quantization methods it makes (``static``, ``dynamic``, ``qat``, ``bf16``).
        runtime: the manifest's runtime hints for the loader (e.g. ``RuntimeHints(compile=True)``).
        method_runtime: extra hints for one method (e.g. ``{"bf16": RuntimeHints(precision="bf16")}``).
        loader: the runtime that runs its artifacts where the loader has none (``runtime.engine`` names it):
            registered with the loader by :func:`register_backend`.
        requires: the module its runtime needs; where it does not import, the backend is unavailable.
        starts_from: the inputs its quantizer starts from: ``eager`` (a module), ``onnx`` (an fp32 ONNX file: ONNX
            and TorchScript inputs), ``exported_program`` (an fp32 ``.pt2``; a backend that also starts from
            ``onnx`` is given the program's ONNX export).
        fixed: the :class:`QuantConfig` options its quantizer has no choice of: its candidates keep their
            defaults and its manifests leave them out.
        per_tensor: whether it offers one weight scale per tensor (every backend offers per-channel scales).
        labelled: options its trial labels name (those only its quantizer honours).
        trials: its trials in the accuracy-aware search, from its candidate and the sensitive layers.
    """

    name: str
    format: str
    suffix: str
    quantizer: str
    methods: tuple[str, ...] = ("static",)
    runtime: RuntimeHints = field(default_factory=RuntimeHints)
    method_runtime: dict[str, RuntimeHints] = field(default_factory=dict)
    loader: Runtime | None = None
    requires: str = ""
    starts_from: tuple[str, ...] = ("eager",)
    fixed: tuple[str, ...] = ()
    per_tensor: bool = True
    labelled: tuple[str, ...] = ()
    trials: Callable[[QuantConfig, Sequence[str]], list[QuantConfig]] = keep_float_trials

    def runtime_for(self, method: str) -> RuntimeHints:
        """The manifest's ``runtime`` hints for an artifact made with ``method``."""
        return self.runtime.merged(self.method_runtime.get(method, RuntimeHints()))

    def config_from(self, base: QuantConfig) -> QuantConfig:
        """``base`` (the user's settings) as this backend's configuration: the options it has no choice of reset."""
        defaults = {f.name: f.default for f in fields(base) if f.name in self.fixed}
        if not self.per_tensor:
            defaults["per_channel"] = True
        return replace(base, backend=self.name, **defaults)

    def takes_every_option(self) -> bool:
        """Whether every user option reaches its quantizer (then a configuration made for it loses none)."""
        return self.per_tensor and not self.fixed

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
                methods=("static", "dynamic"), starts_from=("eager", "onnx", "exported_program"),
                labelled=("calibration_method", "activation_type"), trials=onnxruntime_trials),
        # PT2E int8 is fast only after inductor compiles it with weight freezing: the loader is told to.
        Backend("pt2e", "exported_program", ".pt2",
                "PR3_model_optimization.quantization.pt2e_backend:Pt2eQuantizer",
                methods=("static", "dynamic", "qat", "bf16"), runtime=RuntimeHints(compile=True),
                requires="torchao", starts_from=("eager", "exported_program"),
                fixed=("calibration_method", "activation_type"), per_tensor=False),
        # OpenVINO runs the ONNX file itself (int8 QDQ from NNCF, or fp32 executed in bf16).
        Backend("openvino", "onnx", ".onnx", "PR3_model_optimization.quantization.openvino_backend:OpenVinoQuantizer",
                methods=("static", "bf16"), runtime=RuntimeHints(engine="openvino"),
                method_runtime={"bf16": RuntimeHints(precision="bf16")}, requires="openvino",
                starts_from=("eager", "onnx", "exported_program")),
    )
}


def backend_names() -> tuple[str, ...]:
    """Every registered backend's name, in registry order (the ``--backend`` choices besides ``auto``)."""
    return tuple(REGISTRY)


def backends_for(method: str) -> tuple[str, ...]:
    """The registered backends that make ``method``, in registry order."""
    return tuple(name for name, backend in REGISTRY.items() if method in backend.methods)


def base_backend(method: str) -> str:
    """The backend a run's base configuration is made for: the first that makes ``method`` and takes every
    option, so that the user's settings reach each backend's :meth:`Backend.config_from`."""
    makers = backends_for(method)
    return next((name for name in makers if REGISTRY[name].takes_every_option()), makers[0])


def method_refusal(method: str, backend: str) -> str:
    """The one-line reason ``backend`` refuses ``method``, naming the backends that make it."""
    makers = " or ".join(backends_for(method))
    return (f"--quantization-method {method} runs on {makers}, not {backend}: use --backend {makers} "
            "(or leave --backend unset)")


def register_backend(backend: Backend) -> None:
    """Add ``backend`` to :data:`REGISTRY` (and its runtime, if it brings one, to the loader's table)."""
    if backend.name in REGISTRY:
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    if backend.loader is not None:
        register_runtime(backend.loader)
    REGISTRY[backend.name] = backend


def unregister_backend(name: str) -> None:
    """Remove the backend ``name`` (and the runtime it brought) from the registries."""
    backend = REGISTRY.pop(name, None)
    if backend is not None and backend.loader is not None:
        unregister_runtime(backend.loader.name)
