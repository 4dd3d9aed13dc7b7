"""Saving a model as an artifact: the model file in the chosen format plus its manifest."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.manifest import (
    FORMATS,
    MODEL_SUFFIXES,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    SUFFIX_FORMAT,
    Manifest,
    write_manifest,
)


def save_artifact(
    model: nn.Module,
    path: str | Path,
    manifest: Manifest,
    *,
    fmt: str | None = None,
    example_input: torch.Tensor | None = None,
) -> Manifest:
    """Save ``model`` as an artifact and write its manifest.

    Args:
        model: the model, in eval mode for traced formats.
        path: destination; its suffix picks the format unless ``fmt`` is given.
        manifest: the descriptive fields (arch, classes, input shape, lineage, metrics, ...).
        fmt: one of :data:`FORMATS` (default: from the suffix; ``.pt`` means ``state_dict``).
        example_input: a batch for tracing/export (default: zeros of batch 2 in ``manifest.input_shape``;
            2 because ``torch.export`` specialises a dynamic batch dimension seen as 1).
    """
    path = Path(path)
    if path.suffix not in MODEL_SUFFIXES:
        raise UsageError(f"Cannot save to {path}: use one of the extensions {', '.join(MODEL_SUFFIXES)}")
    fmt = fmt or SUFFIX_FORMAT[path.suffix]
    if fmt not in FORMATS:
        raise UsageError(f"Unknown artifact format {fmt!r}. Choose one of: {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if example_input is None:
        example_input = torch.zeros(2, *manifest.input_shape)
    model = model.eval()
    tmp = path.with_name(path.name + ".partial")
    if fmt == "state_dict":
        if manifest.arch is None:
            raise UsageError("A state_dict artifact needs the torchvision architecture name (manifest.arch)")
        torch.save({"arch": manifest.arch, "num_classes": manifest.num_classes, "state_dict": model.state_dict()}, tmp)
    elif fmt == "pickle":
        torch.save(model, tmp)
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example_input), str(tmp))
    elif fmt == "exported_program":
        exported = torch.export.export(
            model, (example_input,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), strict=True
        )
        torch.export.save(exported, str(tmp))
    else:
        export_onnx(model, tmp, example_input)
    tmp.replace(path)
    return write_manifest(path, manifest, fmt=fmt)


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> None:
    """ONNX export with a dynamic batch dimension (TorchScript-based exporter: fast and stable for CNNs)."""
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), (example_input,), str(path), dynamo=False, opset_version=17,
            input_names=[ONNX_INPUT_NAME], output_names=[ONNX_OUTPUT_NAME],
            dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
        )
