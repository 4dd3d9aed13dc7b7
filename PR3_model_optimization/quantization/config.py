"""What one quantization trial is: :class:`QuantConfig` and the closed sets its fields choose from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from modelops.errors import UsageError
from PR3_model_optimization.quantization.backends import REGISTRY, backend_names, method_refusal

# bf16 needs no calibration: the float model runs with bf16 arithmetic (AVX512-BF16 / AMX-BF16).
METHODS = ("static", "dynamic", "qat", "bf16")
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
        backend: a registered backend's name (:func:`~PR3_model_optimization.quantization.backends.backend_names`;
            default: onnxruntime).
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
        check_choice("backend", self.backend, backend_names())
        check_choice("quantization method", self.method, METHODS)
        check_choice("calibration method", self.calibration_method, CALIBRATION_METHODS)
        check_choice("activation type", self.activation_type, ACTIVATION_TYPES)
        backend = REGISTRY[self.backend]
        if self.method not in backend.methods:
            raise UsageError(method_refusal(self.method, self.backend))
        if not self.per_channel and not backend.per_tensor:
            raise UsageError(f"The {self.backend} backend only offers per-channel weights")

    @property
    def label(self) -> str:
        if self.method == "bf16":
            return f"{self.backend} bf16"
        parts = [self.backend, self.method, "per-channel" if self.per_channel else "per-tensor"]
        if self.method == "static":
            labelled = REGISTRY[self.backend].labelled
            parts += [self.calibration_method] if "calibration_method" in labelled else []
            parts += [f"act-{self.activation_type}"] if "activation_type" in labelled else []
            parts.append(f"calib-{self.calibration_batches}")
        if self.keep_float:
            parts.append("float:" + "+".join(self.keep_float))
        return " ".join(parts)

    def transform(self) -> dict:
        """The manifest's ``transform`` entry for a model made with this config."""
        info = {"kind": "quantization", **asdict(self), "keep_float": list(self.keep_float),
                "dtype": "bf16" if self.method == "bf16" else "int8"}
        for option in REGISTRY[self.backend].fixed:
            info.pop(option)
        return info

    def with_(self, **changes) -> QuantConfig:
        return replace(self, **changes)
