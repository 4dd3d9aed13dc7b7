"""OpenVINO: int8 by NNCF post-training quantization of the fp32 ONNX file, or the fp32 file run in bf16.

The artifact is an ONNX file either way (QDQ int8 for ``static``, the fp32 graph for ``bf16``); its manifest
asks the shared loader to run it on OpenVINO (``runtime: {"engine": "openvino"}``, plus
``"precision": "bf16"`` for bf16), which compiles it for the host's VNNI/AMX/AVX512-BF16 units. NNCF is
used where it is installed (its quantizer inserts fewer, better placed QDQ pairs for OpenVINO and applies
bias correction); without it, ONNX Runtime's QDQ quantizer writes the file, which OpenVINO runs just the same.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.logs import adopt
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.onnxruntime_backend import (
    OnnxRuntimeQuantizer,
    onnx_input_name,
    onnx_nodes_for_modules,
    onnx_quantized_layers,
    quantize_onnx,
)

logger = logging.getLogger(__name__)


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_nncf(prepared_onnx: Path, out: Path, config: QuantConfig, calibration: Sequence[torch.Tensor]) -> None:
    """NNCF static int8 of an fp32 ONNX file (symmetric, per-channel weights, fast bias correction)."""
    import nncf
    import onnx

    adopt("nncf")  # NNCF prints through its own handler, set up at its import: its notes go to the log instead
    if not calibration:
        raise UsageError("Calibration needs at least one batch of real data; got none")
    ignored = onnx_nodes_for_modules(prepared_onnx, config.keep_float)
    input_name = onnx_input_name(prepared_onnx)
    quantized = nncf.quantize(
        onnx.load(str(prepared_onnx)),
        nncf.Dataset(list(calibration), lambda batch: {input_name: batch.detach().float().numpy()}),
        # NNCF's subset_size counts the items the dataset yields: here batches, not images.
        subset_size=len(calibration), preset=nncf.QuantizationPreset.PERFORMANCE,
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    onnx.save(quantized, str(out))


class OpenVinoQuantizer(OnnxRuntimeQuantizer):
    """The ``openvino`` backend: exports the fp32 model once (as ONNX Runtime's does), then writes int8 (NNCF) or
    bf16 ONNX files. Takes the arguments of :class:`OnnxRuntimeQuantizer`."""

    def __init__(self, model: nn.Module | None, example: torch.Tensor, work_dir: Path,
                 onnx_path: Path | None = None) -> None:
        import openvino  # noqa: F401  (fail here, before any work, where the runtime is missing)

        super().__init__(model, example, work_dir, onnx_path=onnx_path)

    def build(self, config: QuantConfig, calibration: Sequence[torch.Tensor], out: Path,
              train_step: Callable | None = None) -> list[str]:
        if config.method not in ("static", "bf16"):
            raise UsageError(f"The openvino backend does static int8 or bf16, not {config.method}")
        prepared = self.prepared()
        if config.method == "bf16":
            shutil.copyfile(prepared, out)
            return []
        if nncf_available():
            quantize_nncf(prepared, out, config, calibration)
            return onnx_quantized_layers(out)
        logger.info("nncf is not installed: ONNX Runtime's quantizer writes the QDQ file OpenVINO runs")
        return quantize_onnx(prepared, out, config, calibration)

    def fp32_artifact(self) -> Path | None:
        return None
