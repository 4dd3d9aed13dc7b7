"""PT2E int8 with torchao: export, observe or fake-quantize, calibrate or fine-tune, convert, save.

The ``X86InductorQuantizer`` graph is fast only after inductor compiles it with weight freezing. The published
artifact is therefore compiled once more, ahead of time, into an AOTInductor package beside it
(:func:`package_for_serving`, :mod:`modelops.runtimes.aoti`), which the loader runs without compiling; its
manifest also asks the loader to ``torch.compile`` the program where the package cannot run.
``torch.ao.quantization`` is deprecated and announced for removal; nothing here uses it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from modelops.errors import UsageError
from modelops.runtimes.aoti import package_exported, package_path
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.export import export_batch_dynamic

logger = logging.getLogger(__name__)

PT2E_QUANT_PREFIX = "quantized_decomposed."
_WEIGHTED_OPS = (["conv2d"], ["linear"], ["conv1d"], ["conv3d"])


def _x86_quantizer(config: QuantConfig):
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        is_qat=config.method == "qat", is_dynamic=config.method == "dynamic"))
    for name in config.keep_float:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def drop_unused_weights(graph_module: torch.fx.GraphModule) -> int:
    """Delete parameters/buffers the converted graph no longer reads; return how many.

    ``convert_pt2e(fold_quantize=True)`` stores folded int8 weights as new attributes but leaves the
    original fp32 ones on the module, and ``torch.export`` saves every parameter, so without this the
    int8 file would be larger than the fp32 one.
    """
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    names = [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]
    dropped = 0
    for name in names:
        if name in used:
            continue
        owner_name, _, attr = name.rpartition(".")
        delattr(graph_module.get_submodule(owner_name) if owner_name else graph_module, attr)
        dropped += 1
    return dropped


def pt2e_quantized_layers(graph_module: torch.fx.GraphModule) -> list[str]:
    """Module names of the conv/linear nodes whose weight comes through a dequantize op."""
    layers = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or str(node.target).split(".")[1:2] not in _WEIGHTED_OPS:
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        if isinstance(weight, torch.fx.Node) and str(weight.target).startswith(PT2E_QUANT_PREFIX):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path = list(stack.values())[-1][0]
                layers.append(path.removeprefix("L['self'].").replace("L__self___", ""))
    return list(dict.fromkeys(layers))


def quantize_pt2e(
    model: nn.Module | None, example: torch.Tensor, config: QuantConfig, calibration: Sequence[torch.Tensor],
    train_step: Callable[[torch.fx.GraphModule], None] | None = None,
    exported: torch.export.ExportedProgram | None = None,
) -> torch.fx.GraphModule:
    """PT2E int8: export, insert observers (or fake-quant for QAT), calibrate/fine-tune, convert.

    Args:
        model: fp32 eager model (left untouched).
        example: an input batch used for export (batch >= 2 keeps the batch dimension dynamic).
        config: backend must be ``pt2e``.
        calibration: batches run through the observed model (static and QAT).
        train_step: QAT only: called with the fake-quant graph in training mode to fine-tune it.
        exported: an fp32 ExportedProgram to start from instead of exporting ``model`` (static and dynamic only).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    if config.method == "static" and not calibration:
        raise UsageError("Calibration needs at least one batch of real data; got none")
    if config.method == "qat" and train_step is None:
        raise UsageError("QAT needs a training step (training data)")
    quantizer = _x86_quantizer(config)
    if exported is not None:
        if config.method == "qat":
            raise UsageError("QAT fine-tunes an eager module, which a .pt2 file does not hold: use "
                             "--quantization-method static, or quantize the model's state_dict (with --arch)")
        prepared = prepare_pt2e(copy.deepcopy(exported).module(), quantizer)
        _calibrate(prepared, calibration if config.method == "static" else [])
        return _convert(prepared)
    model = copy.deepcopy(model)
    if config.method == "qat" and train_step is not None:
        graph = export_batch_dynamic(model.train(), example).module()
        prepared = prepare_qat_pt2e(graph, quantizer)
        move_exported_model_to_train(prepared)
        train_step(prepared)
        move_exported_model_to_eval(prepared)
    else:
        graph = export_batch_dynamic(model.eval(), example).module()
        prepared = prepare_pt2e(graph, quantizer)
        _calibrate(prepared, calibration if config.method == "static" else [])
    return _convert(prepared)


def _calibrate(prepared: torch.fx.GraphModule, calibration: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)


def _convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared, fold_quantize=True)
    dropped = drop_unused_weights(converted)
    logger.debug("dropped %d unused fp32 tensors from the converted graph", dropped)
    return converted


def save_pt2e(graph_module: torch.fx.GraphModule, path: str | Path, example: torch.Tensor,
              batch_range_from_graph: bool = False) -> None:
    """Save a converted PT2E graph as a ``torch.export`` archive with a dynamic batch dimension.

    The archive would also pickle the example batch (and, for a slice, its whole calibration batch's
    storage: 4.8 MB at 224x224, which pushed a ResNet-18 to 36% of its fp32 size); nothing reads it back.
    ``batch_range_from_graph``: the graph came from a user's ``.pt2``, whose batch range it keeps (torch.export
    infers it) instead of this project's 1..4096.
    """
    if batch_range_from_graph:
        program = torch.export.export(graph_module, (example[:2].clone(),),
                                      dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=True)
    else:
        program = export_batch_dynamic(graph_module, example[:2].clone())
    program.example_inputs = None
    torch.export.save(program, str(path))


def package_for_serving(artifact: Path, example: torch.Tensor) -> dict | None:
    """Compile the saved int8 program ``artifact`` ahead of time into ``<artifact>.aoti.pt2``; the manifest's
    ``runtime.aoti`` entry, or None (logged) when AOTInductor fails, and the loader compiles it instead."""
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the int8 ops the program calls)

    out = package_path(artifact)
    out.unlink(missing_ok=True)  # a package of an earlier model at this path must not outlive it
    started = time.perf_counter()
    try:
        entry = package_exported(torch.export.load(str(artifact)), out, example[:2].clone())
    except Exception as exc:  # inductor and the C++ toolchain raise many types; serving still works without it
        logger.warning("AOTInductor could not package %s (%s: %s); the loader will compile it with torch.compile",
                       artifact, type(exc).__name__, (str(exc).splitlines() or [""])[0][:300])
        return None
    logger.info("AOTInductor package %s written in %.1f s", out, time.perf_counter() - started)
    return entry


class Pt2eQuantizer:
    """The ``pt2e`` backend: one export, quantization and save per trial.

    Args:
        model: fp32 eager model (left untouched; None when ``exported`` is given).
        example: an input batch for the export (batch >= 2).
        work_dir: unused; the artifact goes where :meth:`build` is told.
        exported: an fp32 ExportedProgram (a ``.pt2`` input) to start from instead of exporting ``model``.
    """

    def __init__(self, model: nn.Module | None, example: torch.Tensor, work_dir: Path,
                 exported: torch.export.ExportedProgram | None = None) -> None:
        self.model = model
        self.example = example
        self.exported = exported

    def build(self, config: QuantConfig, calibration: Sequence[torch.Tensor], out: Path,
              train_step: Callable | None = None) -> list[str]:
        if config.method == "bf16":  # the same torch.export + inductor path, in bf16 instead of int8
            from PR3_model_optimization.quantization.bf16 import save_bf16_program

            if self.model is None:
                raise UsageError("bf16 is made from an eager module, which a .pt2 file does not hold: quantize "
                                 "the model's state_dict (with --arch)")
            return save_bf16_program(self.model, self.example, out)
        graph = quantize_pt2e(self.model, self.example, config, calibration, train_step=train_step,
                              exported=self.exported)
        layers = pt2e_quantized_layers(graph)
        save_pt2e(graph, out, self.example, batch_range_from_graph=self.exported is not None)
        return layers

    def fp32_artifact(self) -> Path | None:
        return None

    def package(self, artifact: Path, config: QuantConfig) -> dict | None:
        """An int8 program's AOTInductor package (:func:`package_for_serving`); a bf16 one is left to
        ``torch.compile``."""
        return None if config.method == "bf16" else package_for_serving(artifact, self.example)
