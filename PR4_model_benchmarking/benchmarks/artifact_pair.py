"""The fp32 / int8 pair the timing checks measure: a ResNet-18 as an eager state_dict and as static int8 ONNX.

Timing does not depend on the weights' values, so the pair is made from seeded random weights and calibrated
on seeded random inputs: no training, no download. The int8 model is ONNX Runtime's static QDQ quantization
(per-channel weights), the format PR3's default quantization writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from modelops.artifact import Manifest, export_onnx, load_module, save_artifact, write_manifest

DEFAULT_WORK_DIR = "runs/timing_pair"


def quantize_onnx_int8(state_dict_path: Path, out_path: Path, calibration: torch.Tensor) -> Path:
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


def make_pair(out_dir: Path, *, arch: str = "resnet18", image_size: int = 224, num_classes: int = 10,
              seed: int = 0) -> dict[str, Path]:
    """``{"fp32": <arch>_fp32.pt, "int8": <arch>_int8.onnx}`` in ``out_dir`` (reused when both exist)."""
    from modelops.models import create_model

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": out_dir / f"{arch}_{image_size}_fp32.pt", "int8": out_dir / f"{arch}_{image_size}_int8.onnx"}
    if all(p.exists() for p in paths.values()):
        return paths
    torch.manual_seed(seed)
    model = create_model(arch, num_classes).eval()
    shape = [3, image_size, image_size]
    manifest = Manifest(arch=arch, num_classes=num_classes, input_shape=shape, dataset="fake",
                        transform={"kind": "baseline", "source": "random weights"})
    save_artifact(model, paths["fp32"], manifest)
    calibration = torch.randn(32, *shape, generator=torch.Generator().manual_seed(seed))
    quantize_onnx_int8(paths["fp32"], paths["int8"], calibration)
    return paths


def add_pair_flags(parser: argparse.ArgumentParser) -> None:
    """``--fp32``/``--int8`` (default: a random-weight ResNet-18 pair made in ``--work-dir``) and ``--image-size``."""
    group = parser.add_argument_group("artifacts")
    group.add_argument("--fp32", default=None, help="fp32 artifact (default: a random-weight ResNet-18, made)")
    group.add_argument("--int8", default=None, help="int8 artifact (default: its static int8 ONNX copy, made)")
    group.add_argument("--image-size", type=int, default=224, help="input size of the made pair (default: 224)")
    group.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                       help=f"where the made pair goes (default: {DEFAULT_WORK_DIR})")


def resolve_pair(fp32: str | Path | None, int8: str | Path | None, *, image_size: int = 224,
                 work_dir: str | Path = DEFAULT_WORK_DIR) -> dict[str, Path]:
    """The pair ``fp32``/``int8`` name (``--fp32``/``--int8``), or, when both are None, the pair made at
    ``image_size`` in ``work_dir``; a missing file is a usage error.

    Args:
        fp32: the fp32 artifact, or None to make the pair.
        int8: its int8 artifact, or None to make the pair.
        image_size: input size of the made pair (default: 224).
        work_dir: where the made pair goes (default: :data:`DEFAULT_WORK_DIR`).
    """
    from modelops.cli import check_positive
    from modelops.errors import UsageError

    if (fp32 is None) != (int8 is None):
        raise UsageError("--fp32 and --int8 go together: give both artifacts or neither")
    if fp32 is None or int8 is None:
        check_positive("--image-size", image_size)
        return make_pair(Path(work_dir), image_size=image_size)
    paths = {"fp32": Path(fp32), "int8": Path(int8)}
    for flag, path in paths.items():
        if not path.is_file():
            raise UsageError(f"--{flag} {path} does not exist")
    return paths
