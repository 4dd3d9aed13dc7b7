"""ONNX Runtime int8: export fp32 ONNX, pre-process it, then quantize statically (QDQ) or dynamically.

``quant_pre_process`` runs shape inference and graph fusions; ``quantize_static`` writes QDQ with per-channel
int8 weights, calibrated on real batches. ONNX Runtime fuses each ``DequantizeLinear -> Conv ->
QuantizeLinear`` into an int8 convolution (VNNI where the CPU has it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from modelops.artifact import ONNX_INPUT_NAME, export_onnx
from modelops.errors import UsageError
from PR3_model_optimization.quantization.config import QuantConfig

INT8_OPS = ("QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeLSTM")


def onnx_module_name(node_name: str) -> str:
    """``/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0`` (TorchScript exporter)."""
    # Each scope segment is an attribute name, except that a container's children appear as
    # "<container attr>.<index>" (``/layer2/layer2.0/downsample/downsample.0/Conv``).
    segments = [p for p in node_name.split("/") if p][:-1]
    name, previous = "", ""
    for segment in segments:
        if previous and segment.startswith(previous + "."):
            name += segment[len(previous):]
        else:
            name = f"{name}.{segment}" if name else segment
        previous = segment
    return name or node_name


def onnx_quantized_layers(path: str | Path) -> list[str]:
    """Module names of the Conv/Gemm/MatMul nodes that run on int8 weights in an ORT-quantized model."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    names = []
    for node in graph.node:
        qdq_weight = node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 \
            and node.input[1] in dequantized
        if node.op_type in INT8_OPS or qdq_weight:
            names.append(onnx_module_name(node.name))
    return list(dict.fromkeys(names))


def onnx_nodes_for_modules(path: str | Path, modules: Iterable[str]) -> list[str]:
    """Names of the ONNX nodes that the given torch modules were exported to."""
    import onnx

    wanted = set(modules)
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
            if onnx_module_name(n.name) in wanted]


def prepare_onnx(model: nn.Module, example: torch.Tensor, work_dir: str | Path) -> Path:
    """Export fp32 ONNX and run ORT's pre-processing (shape inference, BN folding); reused by every trial."""
    from onnxruntime.quantization import quant_pre_process

    work_dir = Path(work_dir)
    fp32 = work_dir / "fp32.onnx"
    prepared = work_dir / "fp32_prep.onnx"
    export_onnx(model, fp32, example)
    quant_pre_process(str(fp32), str(prepared))
    return prepared


def prepare_onnx_file(fp32: str | Path, work_dir: str | Path) -> Path:
    """ORT's pre-processing of an fp32 ONNX file the user gave (or a TorchScript file's export)."""
    from onnxruntime.quantization import quant_pre_process

    prepared = Path(work_dir) / "fp32_prep.onnx"
    quant_pre_process(str(fp32), str(prepared))
    return prepared


@contextlib.contextmanager
def _quiet_root_logger():
    """ORT's quantizer logs one INFO line per tensor on the root logger; keep that out of the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def onnx_input_name(path: str | Path) -> str:
    """The graph's image input: ours is named ``input``; a user's own ONNX file may name it otherwise."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    names = [tensor.name for tensor in graph.input if tensor.name not in initializers]
    return names[0] if names else ONNX_INPUT_NAME


def _calibration_reader(batches: Sequence[torch.Tensor], input_name: str = ONNX_INPUT_NAME):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds the calibration batches to ORT's calibrator one at a time."""

        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch.detach().float().contiguous().numpy()}

    return BatchReader()


def quantize_onnx(
    prepared_onnx: str | Path, out_path: str | Path, config: QuantConfig, calibration: Sequence[torch.Tensor]
) -> list[str]:
    """Quantize a pre-processed fp32 ONNX model to int8 at ``out_path``; return the quantized layers."""
    if config.method == "static" and not calibration:
        raise UsageError("Calibration needs at least one batch of real data; got none")
    excluded = onnx_nodes_for_modules(prepared_onnx, config.keep_float)
    with _quiet_root_logger():
        _run_ort_quantizer(prepared_onnx, out_path, config, calibration, excluded)
    return onnx_quantized_layers(out_path)


def _run_ort_quantizer(prepared_onnx: str | Path, out_path: str | Path, config: QuantConfig,
                       calibration: Sequence[torch.Tensor], excluded: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if config.method == "dynamic":
        quantize_dynamic(str(prepared_onnx), str(out_path), per_channel=config.per_channel,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
                         nodes_to_exclude=excluded)
    else:
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[config.calibration_method]
        activation = QuantType.QUInt8 if config.activation_type == "quint8" else QuantType.QInt8
        quantize_static(
            str(prepared_onnx), str(out_path), _calibration_reader(calibration, onnx_input_name(prepared_onnx)),
            quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            weight_type=QuantType.QInt8, activation_type=activation, calibrate_method=calibrate,
            nodes_to_exclude=excluded,
            # Signed activations must be symmetric for the int8 x int8 kernels (ORT's own advice).
            extra_options={"ActivationSymmetric": config.activation_type == "qint8"},
        )


class OnnxRuntimeQuantizer:
    """The ``onnxruntime`` backend: exports the fp32 model once (on the first build) and quantizes that file.

    Args:
        model: fp32 eager model (None when ``onnx_path`` is given).
        example: an input batch for the export.
        work_dir: where the fp32 ONNX files are written.
        onnx_path: an fp32 ONNX file to start from instead of exporting ``model``.
    """

    def __init__(self, model: nn.Module | None, example: torch.Tensor, work_dir: Path,
                 onnx_path: Path | None = None) -> None:
        self.model = model
        self.example = example
        self.work_dir = Path(work_dir)
        self.onnx_path = onnx_path
        self._prepared: Path | None = None

    def prepared(self) -> Path:
        """The pre-processed fp32 ONNX file every trial quantizes (made on first use)."""
        if self._prepared is None:
            self._prepared = prepare_onnx_file(self.onnx_path, self.work_dir) if self.onnx_path is not None \
                else prepare_onnx(self.model, self.example, self.work_dir)
        return self._prepared

    def build(self, config: QuantConfig, calibration: Sequence[torch.Tensor], out: Path,
              train_step: Callable | None = None) -> list[str]:
        return quantize_onnx(self.prepared(), out, config, calibration)

    def fp32_artifact(self) -> Path | None:
        return self._prepared

    def package(self, artifact: Path, config: QuantConfig) -> dict | None:
        return None  # an ONNX file needs no ahead-of-time step
