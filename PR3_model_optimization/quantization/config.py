"""What one quantization trial is: :class:`QuantConfig` and the closed sets its fields choose from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from modelops.errors import UsageError
from PR3_model_optimization.quantization.backends import BACKENDS

METHODS = ("static", "dynamic", "qat", "bf16")
# bf16 needs no calibration: the float model runs with bf16 arithmetic (AVX512-BF16 / AMX-BF16).
BF16_BACKENDS = ("openvino", "pt2e")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("quint8", "qint8")


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise refuse it, naming the allowed set."""
    if value not in choices:
        raise UsageError(f"Unknown {name} {value!r}. Choose one of: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class QuantConfig:
    """One way to quantize a model (a trial in the accuracy-aware search).

    Args:
        backend: a name from :data:`~PR3_model_optimization.quantization.backends.BACKENDS`
            (default: onnxruntime).
        method: ``static``, ``dynamic``, ``qat`` or ``bf16`` (default: static).
        per_channel: one weight scale per output channel instead of one per tensor (default: True;
            the PT2E x86 quantizer is always per-channel).
        calibration_method: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime only; default: minmax).
        calibration_batches: how many batches of real data calibrate the activation ranges (default: 10).
        activation_type: ``quint8`` or ``qint8`` activations (ONNX Runtime only; default: quint8).
        keep_float: module names left in fp32 (e.g. the first conv and the classifier).
    """

    backend: str = "onnxruntime"
    method: str = "static"
    per_channel: bool = True
    calibration_method: str = "minmax"
    calibration_batches: int = 10
    activation_type: str = "quint8"
    keep_float: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_choice("quantization method", self.method, METHODS)
        check_choice("calibration method", self.calibration_method, CALIBRATION_METHODS)
        check_choice("activation type", self.activation_type, ACTIVATION_TYPES)
        if self.method == "qat" and self.backend != "pt2e":
            raise UsageError(
                "QAT fine-tunes a PT2E fake-quant graph: use --backend pt2e (or leave --backend unset)")
        if self.method == "bf16" and self.backend not in BF16_BACKENDS:
            raise UsageError(f"bf16 runs on {' or '.join(BF16_BACKENDS)}, not {self.backend} (it has no bf16 CPU "
                             "kernels): use --backend auto, openvino or pt2e")
        if self.backend == "pt2e" and not self.per_channel:
            raise UsageError("The PT2E x86 quantizer only offers per-channel weights")

    @property
    def label(self) -> str:
        if self.method == "bf16":
            return f"{self.backend} bf16"
        parts = [self.backend, self.method, "per-channel" if self.per_channel else "per-tensor"]
        if self.method == "static":
            if self.backend == "onnxruntime":
                parts += [self.calibration_method, f"act-{self.activation_type}"]
            parts.append(f"calib-{self.calibration_batches}")
        if self.keep_float:
            parts.append("float:" + "+".join(self.keep_float))
        return " ".join(parts)

    def transform(self) -> dict:
        """The manifest's ``transform`` entry for a model made with this config."""
        info = {"kind": "quantization", **asdict(self), "keep_float": list(self.keep_float),
                "dtype": "bf16" if self.method == "bf16" else "int8"}
        if self.backend == "pt2e":
            info.pop("calibration_method")
            info.pop("activation_type")
        return info

    def with_(self, **changes) -> QuantConfig:
        return replace(self, **changes)
