"""ONNX Runtime as the runtime of ONNX artifacts (the ``onnx`` format's default): a CPU session per file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from modelops.errors import ArtifactError
from modelops.model_probe import onnx_input_shape
from modelops.predictor import LoadRequest, Predictor, infer_manifest


def onnx_session(path: Path, threads: int | None, session_config: Mapping[str, str] | None = None):
    """An ONNX Runtime CPU session for ``path``: ``threads`` intra-op threads, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc


def load_onnxruntime(request: LoadRequest) -> Predictor:
    """The predictor of an ONNX file run by ONNX Runtime (``request.options.ort_session_config`` adds session
    entries)."""
    path = request.path
    session = onnx_session(path, request.options.threads, request.options.ort_session_config)
    input_name = session.get_inputs()[0].name

    def run_onnx(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    manifest = request.manifest or infer_manifest(path, "onnx", run_onnx, input_shape=onnx_input_shape(session),
                                                  image_size=request.options.image_size)
    return Predictor(run_onnx, manifest=manifest, path=path, backend="onnxruntime", device="cpu")
