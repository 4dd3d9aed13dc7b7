"""PR4 fixtures: artifacts in every format for the benchmark tests, made from one state_dict model.

The int8 ONNX model is made with ONNX Runtime's static quantizer (PR4's artifact-pair maker), so the
benchmark is tested independently of PR3's model_quantization.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelops.artifact import load_module, save_artifact
from PR4_model_benchmarking.benchmarks.artifact_pair import quantize_onnx_int8


def export_variants(state_dict_path: Path, out_dir: Path, formats: tuple[str, ...] = ("torchscript",
                    "exported_program", "onnx")) -> dict[str, Path]:
    """The same model re-saved as TorchScript (.pt), ExportedProgram (.pt2) and ONNX (.onnx)."""
    model, manifest = load_module(state_dict_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"state_dict": Path(state_dict_path)}
    suffix = {"torchscript": "_ts.pt", "exported_program": ".pt2", "onnx": ".onnx"}
    for fmt in formats:
        path = out_dir / f"{Path(state_dict_path).stem}{suffix[fmt]}"
        save_artifact(model, path, manifest, fmt=fmt)
        paths[fmt] = path
    return paths


@pytest.fixture(scope="session")
def bench_variants(digits_resnet18: Path, digits_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits_resnet18 in every artifact format plus an int8 ONNX copy (made once per session)."""
    # The marker file lets a second pytest process on the same base temp reuse the files.
    out = tmp_path_factory.getbasetemp() / "pr4_variants"
    done = out / "variants.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    paths = export_variants(digits_resnet18, out)
    from modelops.data import calibration_batches

    calibration = torch.cat(calibration_batches(digits_data.train, 32, 4, seed=0))
    paths["int8"] = quantize_onnx_int8(digits_resnet18, out / "resnet18_int8.onnx", calibration)
    done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths
