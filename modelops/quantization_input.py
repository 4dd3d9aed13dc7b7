"""What a quantizer can start from, for every form a model is saved in.

Quantization needs one of: an eager module (eager and FX quantization, PT2E after ``torch.export``, ONNX
export), an fp32 ``torch.export`` ExportedProgram (PT2E starts from one), or an fp32 ONNX file (ONNX Runtime
quantizes it directly). :func:`load_for_quantization` gives the one a file holds; an ExportedProgram goes to the
ONNX quantizers through its ONNX export (:func:`exported_to_onnx`); a TorchScript file only runs, so it is
converted to ONNX (the TorchScript-based ONNX exporter reads scripted and traced modules) in the
caller's ``work_dir``, else in a temporary folder that :meth:`QuantizationInput.close` (or leaving a ``with``
block) removes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modelops.artifact import (
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    Manifest,
    detect_format,
    load_artifact,
    load_module,
    read_manifest,
)
from modelops.errors import ArtifactError
from modelops.fixed_batch import exported_batch_size
from modelops.load_options import LoadOptions

logger = logging.getLogger(__name__)


@dataclass
class QuantizationInput:
    """The model to quantize, in the richest form its file allows (exactly one of the three is set).

    Attributes:
        manifest: the file's manifest, or the one inferred for it (shape, classes, ``inferred``).
        path: the file given.
        module: an eager module (``state_dict`` and ``pickle`` files).
        exported: an fp32 ExportedProgram (``.pt2`` files), for PT2E.
        onnx_path: an fp32 ONNX file (``.onnx`` files, and TorchScript converted), for ONNX Runtime.
        temp_dir: the temporary folder made for a TorchScript file's conversion (None when the caller gave one).
    """

    manifest: Manifest
    path: Path
    module: nn.Module | None = None
    exported: torch.export.ExportedProgram | None = None
    onnx_path: Path | None = None
    temp_dir: Path | None = None

    @property
    def kind(self) -> str:
        return "eager" if self.module is not None else "exported_program" if self.exported is not None else "onnx"

    def close(self) -> None:
        """Remove the temporary folder of a conversion (``onnx_path`` goes with it); the caller's files stay."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def __enter__(self) -> QuantizationInput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def load_for_quantization(
    path: str | Path, options: LoadOptions | None = None, *, work_dir: str | Path | None = None
) -> QuantizationInput:
    """Load ``path`` as a :class:`QuantizationInput`.

    Args:
        path: any model file the shared loader reads.
        options: what applies here: ``trust_pickle`` (allow whole pickled modules), ``arch`` (the architecture of a
            bare state_dict; default: identified) and ``image_size`` (the side tried first on a file without a
            manifest) (default: ``LoadOptions()``).
        work_dir: where a TorchScript file's ONNX conversion is written (default: a new temporary folder, removed
            by the result's :meth:`~QuantizationInput.close`).
    """
    options = options or LoadOptions()
    path = Path(path)
    manifest = read_manifest(path) if path.is_file() else None
    fmt = manifest.format if manifest else detect_format(path) if path.is_file() and path.stat().st_size else None
    if fmt in ("onnx", "exported_program", "torchscript"):
        # Checks the file and infers a manifest when it has none; loaded on the CPU, uncompiled, default threads.
        predictor = load_artifact(path, LoadOptions(compile=False, arch=options.arch, image_size=options.image_size))
        if fmt == "onnx":
            return QuantizationInput(predictor.manifest, path, onnx_path=path)
        if fmt == "exported_program":
            exported = torch.export.load(str(path))
            check_dynamic_batch(exported, path)
            return QuantizationInput(predictor.manifest, path, exported=exported)
        temp_dir = None if work_dir else Path(tempfile.mkdtemp(prefix="torchscript_onnx_"))
        onnx_path = Path(work_dir or temp_dir) / f"{path.stem}.fp32.onnx"
        try:
            torchscript_to_onnx(predictor.module, onnx_path, predictor.manifest.input_shape, path)
        except BaseException:
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return QuantizationInput(predictor.manifest, path, onnx_path=onnx_path, temp_dir=temp_dir)
    module, manifest = load_module(path, options)
    return QuantizationInput(manifest, path, module=module)


def torchscript_to_onnx(module: torch.jit.ScriptModule, out: Path, input_shape: list[int], source: Path) -> None:
    """Export a TorchScript module to ONNX with a dynamic batch dimension, or say what to pass instead."""
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=17,
                              input_names=[ONNX_INPUT_NAME], output_names=[ONNX_OUTPUT_NAME],
                              dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # the exporter raises many types for ops it cannot map
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ArtifactError(
            f"{source} is TorchScript, which is quantized through an ONNX export, and the export failed ({first}); "
            "quantize the model's state_dict (with --arch) or an ONNX file instead"
        ) from exc
    logger.info("%s: TorchScript converted to ONNX for quantization (%s)", source, out)


def check_dynamic_batch(exported: torch.export.ExportedProgram, source: object) -> None:
    """Quantization calibrates and times several batch sizes, and every quantizer re-exports the program: a fixed
    batch size stops it here, with what to do, rather than as a guard error inside a backend."""
    batch = exported_batch_size(exported)
    if batch is not None:
        raise ArtifactError(
            f"{source} fixes its batch size at {batch}, and quantization calibrates and times other batch sizes: "
            "export it with a dynamic batch (dynamic_shapes={0: torch.export.Dim('batch')}), or quantize the "
            "model's state_dict (with --arch)")


def exported_to_onnx(exported: torch.export.ExportedProgram, out: Path) -> Path:
    """The fp32 ONNX file of an ExportedProgram, for the quantizers that start from ONNX; written once at ``out``
    (the dynamo exporter takes the program as it is, its dynamic batch dimension included), then reused."""
    if out.is_file():
        return out
    check_dynamic_batch(exported, "the ExportedProgram")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(exported, f=str(out), dynamo=True, input_names=[ONNX_INPUT_NAME],
                          output_names=[ONNX_OUTPUT_NAME], external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types for ops it cannot map
        out.unlink(missing_ok=True)
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ArtifactError(f"the ExportedProgram's ONNX export, which the ONNX quantizers start from, failed "
                            f"({first}); use --backend pt2e, or quantize the model's state_dict (with --arch)") from exc
    logger.info("ExportedProgram exported to ONNX for quantization (%s)", out)
    return out
