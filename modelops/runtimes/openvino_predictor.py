"""OpenVINO as a runtime for ONNX artifacts: fp32, int8 QDQ and bf16 execution on the CPU.

OpenVINO reads an ONNX file directly (QDQ int8 included) and compiles it for the host's ISA (AVX2,
AVX512-VNNI, AMX). An artifact asks for it with the manifest hint ``runtime: {"engine": "openvino"}``
and optionally ``"precision": "bf16" | "f32"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``; unset, OpenVINO
runs float parts in bf16 where the CPU has bf16 units and in f32 elsewhere).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from modelops.errors import ArtifactError, UsageError

ENGINE = "openvino"
PRECISIONS = ("f32", "bf16")


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_config(threads: int | None = None, precision: str | None = None) -> dict[str, object]:
    """OpenVINO CPU properties: latency hint, intra-op threads and the float precision."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None:
        if precision not in PRECISIONS:
            raise UsageError(f"Unknown OpenVINO precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}")
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


class OpenVinoRunner:
    """An ONNX file compiled by OpenVINO for the CPU; ``runner(batch) -> logits`` like any predictor function.

    Calls are serialised with a lock: one infer request is reused, and its output buffer is copied out.

    Args:
        path: the ONNX file.
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
        precision: ``f32`` or ``bf16`` (default: OpenVINO's choice for the CPU).

    Attributes:
        compile_s: seconds ``compile_model`` took (the cold start, apart from steady-state latency).
        precision: the inference precision OpenVINO reports after compiling.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ArtifactError(f"{path} asks for the OpenVINO runtime, which is not installed "
                                "(pip install openvino)") from exc
        started = time.perf_counter()
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", compile_config(threads, precision))
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot compile {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.compile_s = time.perf_counter() - started
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().float().contiguous().numpy()
        with self._lock:
            outputs = self._request.infer({0: array})
            return torch.from_numpy(outputs[0].copy())


def openvino_runner(path: str | Path, *, threads: int | None = None,
                    precision: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile ``path`` with OpenVINO for the CPU (see :class:`OpenVinoRunner`)."""
    return OpenVinoRunner(path, threads=threads, precision=precision)
