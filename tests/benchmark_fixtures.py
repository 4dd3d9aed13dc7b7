"""Artifacts in every format for the benchmark tests, made from one state_dict model.

The int8 ONNX model here is a stand-in made with ONNX Runtime's static quantizer so the benchmark can
be tested before (and independently of) PR3's model_quantization.py; it lives in tests only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelops.artifact import export_onnx, load_module, save_artifact, write_manifest


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


def int8_onnx(state_dict_path: Path, out_path: Path, calibration: torch.Tensor) -> Path:
    """Static int8 (QDQ, per-channel) ONNX model of ``state_dict_path``, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, manifest = load_module(state_dict_path)
    fp32 = out_path.with_name(out_path.stem + "_fp32.onnx")
    export_onnx(model, fp32, calibration[:2])
    prepped = out_path.with_name(out_path.stem + "_prep.onnx")
    quant_pre_process(str(fp32), str(prepped))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": b.numpy()} for b in calibration.split(16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(prepped), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    child = manifest.derive(parent_path=state_dict_path, transform={"kind": "quantization", "method": "ort_static"})
    write_manifest(out_path, child, fmt="onnx")
    for tmp in (fp32, prepped):
        tmp.unlink(missing_ok=True)
    return out_path


@pytest.fixture(scope="session")
def bench_variants(digits_resnet18: Path, digits_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits_resnet18 in every artifact format plus an int8 ONNX copy (made once per session)."""
    # Imported by two test modules (each gets its own fixture definition): the marker file makes the
    # second one reuse the first one's files.
    out = tmp_path_factory.getbasetemp() / "pr4_variants"
    done = out / "variants.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    paths = export_variants(digits_resnet18, out)
    from modelops.data import calibration_batches

    calibration = torch.cat(calibration_batches(digits_data.train, 32, 4, seed=0))
    paths["int8"] = int8_onnx(digits_resnet18, out / "resnet18_int8.onnx", calibration)
    done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths
