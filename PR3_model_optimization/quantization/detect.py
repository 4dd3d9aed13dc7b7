"""Is an artifact already quantized? (Quantizing int8 twice is refused before any work.)"""

from __future__ import annotations

import zipfile
from pathlib import Path

from modelops.artifact import Manifest, read_manifest

# Ops that only appear in a model that was already quantized (QDQ pairs, QOperator and dynamic forms).
ONNX_QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "MatMulInteger",
    "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "QGemm",
})


def quantized_reason(path: str | Path, manifest: Manifest | None = None) -> str | None:
    """Why the artifact at ``path`` is already quantized, or None if it is not."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    if manifest is not None:
        kinds = [manifest.transform.get("kind"), *(step.get("kind") for step in manifest.lineage)]
        if "quantization" in kinds:
            return f"its manifest records a quantization step ({manifest.transform.get('method', '?')})"
    if zipfile.is_zipfile(path):  # a torch archive: only its manifest can tell (checked above)
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        ops = {node.op_type for node in model.graph.node} & ONNX_QUANT_OPS
        if ops:
            return f"its ONNX graph already holds {', '.join(sorted(ops))} nodes"
    except Exception:  # not an ONNX file (a torch archive): nothing to learn here
        pass
    return None
