"""The model artifact: one file in a standard format plus a JSON manifest beside it.

Formats (``Manifest.format``):

- ``state_dict``: ``torch.save({"arch", "num_classes", "state_dict"})``. Loads with ``weights_only=True``
  and rebuilds the torchvision architecture, resized to the saved shapes (so structurally pruned
  models load too). A bare ``torch.save(model.state_dict())`` file loads too: its architecture is the
  caller's ``LoadOptions.arch``, else identified from the parameter names and shapes (:mod:`modelops.arch_inference`).
- ``torchscript``: ``torch.jit`` archive.
- ``exported_program``: ``torch.export`` archive (``.pt2``), e.g. a PT2E int8 model.
- ``onnx``: ONNX model, run with ONNX Runtime.
- ``pickle``: a whole pickled ``nn.Module``. Loading a pickle runs arbitrary code, so it is refused
  unless the caller passes ``LoadOptions(trust_pickle=True)`` (``--trust-pickle`` on the command line).

The manifest (:mod:`modelops.manifest`) is ``<file>.json`` (``resnet18.pt`` -> ``resnet18.pt.json``); a
file without one gets one inferred, with the input shape the file declares or a forward pass accepts and the
class count of its output (:mod:`modelops.model_probe`, trying ``LoadOptions.image_size`` first), recorded under
``inferred``. How to load is one :class:`~modelops.load_options.LoadOptions` the caller passes. :func:`load_artifact`
returns a :class:`Predictor` whose call is the same for every format: a float batch in, logits out.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelops.arch_inference import infer_architecture, normalise_state_dict
from modelops.errors import ArtifactError
from modelops.fixed_batch import run_any_batch
from modelops.load_options import LoadOptions
from modelops.manifest import (  # noqa: F401  (re-exported: the artifact module is where callers look)
    FORMATS,
    MANIFEST_SUFFIX,
    MODEL_SUFFIXES,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    SCHEMA_VERSION,
    SUFFIX_FORMAT,
    Manifest,
    RuntimeHints,
    file_sha256,
    file_size_mb,
    manifest_path,
    read_manifest,
    write_manifest,
)
from modelops.model_probe import exported_input_shape
from modelops.models import check_arch, create_model, resize_to_state_dict
from modelops.predictor import LoadRequest, Predictor, Runtime, infer_manifest
from modelops.runtimes.onnxruntime_predictor import load_onnxruntime
from modelops.runtimes.openvino_predictor import load_openvino
from modelops.saving import export_onnx, save_artifact  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

FORMAT_NAMES = {"torchscript": "TorchScript", "exported_program": "torch.export ExportedProgram (.pt2)",
                "onnx": "ONNX", "state_dict": "state_dict", "pickle": "pickled module"}


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory, not a model file ({', '.join(MODEL_SUFFIXES)})")
    if path.suffix not in MODEL_SUFFIXES:
        raise ArtifactError(
            f"{path}: unsupported extension {path.suffix!r}. Model artifacts end in {', '.join(MODEL_SUFFIXES)}"
        )
    if not path.is_file():
        raise ArtifactError(
            f"Model file {path} does not exist. Create one with PR3_model_optimization/prepare_model.py"
        )
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path} is an empty file (0 bytes), not a model: it was probably cut off while written")
    return path


def detect_format(path: str | Path) -> str:
    """Tell a model file's format from its content (the manifest, when present, says it too)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile as exc:
            raise ArtifactError(f"{path} is a corrupt archive: {exc}") from exc
        if any(n.endswith("/archive_format") or ("/models/" in n and n.endswith(".json")) for n in names):
            return "exported_program"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"  # or a pickled module: told apart when loading
        raise ArtifactError(f"{path} is a zip archive but not a PyTorch model")
    try:
        import onnx

        graph_nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # protobuf raises DecodeError, onnx raises its own; all mean the same here
        graph_nodes = 0
    if graph_nodes == 0:  # any bytes can parse as an empty protobuf message: an ONNX model has a graph
        raise ArtifactError(
            f"{path} is not a readable model file (not a PyTorch archive nor an ONNX graph): it may be corrupt "
            "or truncated"
        )
    return "onnx"


# --------------------------------------------------------------------------- loading


def _load_torch_file(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise ArtifactError(
                f"{path} is a pickled Python object: loading it runs arbitrary code. If you made it or trust its "
                "source, pass --trust-pickle (trust_pickle=True; trust_pickle: true in a model registry entry); "
                "better, re-save it as a state_dict artifact."
            ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is corrupt or truncated: {str(exc).splitlines()[0][:200]}") from exc
    logger.info("Loading %s as a trusted pickle (arbitrary code may run)", path)  # warned once, at --trust-pickle
    return torch.load(path, map_location="cpu", weights_only=False)


EAGER_FORMS = ("a state_dict artifact, a bare state_dict (with --arch NAME when it is not recognised) or a whole "
               "pickled module (with --trust-pickle)")


def load_module(path: str | Path, options: LoadOptions | None = None) -> tuple[nn.Module, Manifest]:
    """Load an artifact as a trainable eager ``nn.Module`` (for pruning, distillation, quantization).

    Args:
        path: a ``state_dict`` artifact, a bare ``state_dict`` (``torch.save(model.state_dict())``) or,
            with ``options.trust_pickle``, a whole pickled module.
        options: what applies here: ``trust_pickle`` (allow whole pickled modules, which runs arbitrary code),
            ``arch`` (the torchvision architecture of a bare state_dict; without it, identified from the
            parameter names and shapes, and what was identified goes into the manifest) and ``image_size`` (the
            side tried first when a file without a manifest is probed) (default: ``LoadOptions()``).

    The traced formats (TorchScript, ExportedProgram, ONNX) hold no eager module: they raise an
    :class:`ArtifactError` that names the forms this takes.
    """
    options = options or LoadOptions()
    path = _check_path(path)
    manifest = read_manifest(path)
    fmt = manifest.format if manifest else detect_format(path)
    if fmt not in ("state_dict", "pickle"):
        made_from = f" (it was made from {manifest.parent['path']})" if manifest and manifest.parent else ""
        raise ArtifactError(f"{path}: {FORMAT_NAMES.get(fmt, fmt)} files are inference-only and this step needs an "
                            f"eager model: {EAGER_FORMS}{made_from}")
    obj = _load_torch_file(path, options.trust_pickle)
    if isinstance(obj, nn.Module):
        model = obj.eval()
        manifest = manifest or infer_manifest(path, "pickle", model, image_size=options.image_size)
        return model, manifest
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} holds a {type(obj).__name__}, not a model or state_dict")
    model, manifest = _module_from_state_dict(path, obj, manifest, options)
    return model.eval(), manifest


def _module_from_state_dict(
    path: Path, obj: dict[str, Any], manifest: Manifest | None, options: LoadOptions
) -> tuple[nn.Module, Manifest]:
    state_dict = normalise_state_dict(obj)
    if not state_dict:
        raise ArtifactError(f"{path} holds a dict with no tensors, not a state_dict")
    arch = obj.get("arch") or (manifest.arch if manifest else None) or options.arch
    inferred: dict[str, Any] = {}
    if arch:
        check_arch(arch)
    else:
        found = infer_architecture(state_dict, path)
        arch, inferred = found.arch, found.as_manifest_entry()
    num_classes = int(obj.get("num_classes") or (manifest.num_classes if manifest else 0))
    if not num_classes:
        num_classes = int(next(v.shape[0] for k, v in reversed(list(state_dict.items())) if k.endswith("weight")))
    model = resize_to_state_dict(create_model(arch, num_classes), state_dict)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)[:200]
        raise ArtifactError(f"{path}: the weights do not fit architecture {arch!r} ({first[:120]}...); "
                            "pass the --arch it was trained as (arch: in a model registry entry)") from exc
    if manifest is None:
        manifest = infer_manifest(path, "state_dict", model.eval(), arch=arch, inferred=inferred,
                                  image_size=options.image_size)
    elif inferred:
        manifest = manifest.model_copy(update={"arch": arch, "inferred": {**manifest.inferred, **inferred}})
    return model, manifest


def compile_for_inference(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile with inductor and weight freezing (what makes PT2E int8 kernels fast)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(module, dynamic=False)


def load_artifact(path: str | Path, options: LoadOptions | None = None) -> Predictor:
    """Load any artifact as a :class:`Predictor`, with the runtime of :data:`RUNTIMES` its manifest names
    (``runtime.engine``; without one, the first runtime that runs its format).

    Args:
        path: the model file (its manifest ``<path>.json`` is read when present).
        options: how to load it (default: ``LoadOptions()``): ``device`` (ONNX files run on CPU here);
            ``trust_pickle`` (whole pickled modules, which runs arbitrary code); ``compile`` (run torch models
            through ``torch.compile``; None: the manifest's ``runtime.compile``; an ExportedProgram whose manifest
            names an AOTInductor package, ``runtime.aoti``, runs that package instead, already compiled:
            :mod:`modelops.runtimes.aoti`; without one, or where it cannot run, ``torch.compile`` with the reason
            logged); ``threads`` (intra-op threads of the ONNX runtimes; torch uses ``torch.set_num_threads``);
            ``ort_session_config`` (e.g. ``{"session.intra_op.allow_spinning": "0"}`` so idle threads do not
            spin, for a server sharing its cores); ``arch`` and ``image_size`` (see :func:`load_module`).
    """
    path = _check_path(path)
    manifest = read_manifest(path)
    fmt = manifest.format if manifest else detect_format(path)
    hints = manifest.runtime if manifest else RuntimeHints()
    request = LoadRequest(path=path, fmt=fmt, manifest=manifest, hints=hints, options=options or LoadOptions())
    return runtime_for(path, fmt, hints).load(request)


def runtime_for(path: Path, fmt: str, hints: RuntimeHints) -> Runtime:
    """The runtime that runs a ``fmt`` file with these hints; an :class:`ArtifactError` names what is known."""
    if hints.engine is None:
        return next(r for r in RUNTIMES.values() if fmt in r.formats)
    runtime = RUNTIMES.get(hints.engine)
    if runtime is None:
        raise ArtifactError(f"{path}: its manifest asks for runtime {hints.engine!r}, which is not known here. "
                            f"Known: {', '.join(RUNTIMES)}")
    if fmt not in runtime.formats:
        raise ArtifactError(f"{path}: runtime {hints.engine!r} runs {', '.join(runtime.formats)} files, not {fmt}")
    return runtime


def load_eager(request: LoadRequest) -> Predictor:
    """A state_dict or pickled module as an eager module (channels_last where the hints say)."""
    device = request.options.device
    module, manifest = load_module(request.path, request.options)
    module = module.to(device)
    if request.memory_format is not None:
        module = module.to(memory_format=request.memory_format)
    fn = compile_for_inference(module) if request.wants_compile else module
    return Predictor(fn, manifest=manifest, path=request.path, backend="torch", module=module, device=device,
                     memory_format=request.memory_format)


def load_traced(request: LoadRequest) -> Predictor:
    """A TorchScript or ExportedProgram file; compiled (or its AOTInductor package run) where asked."""
    path, fmt, device = request.path, request.fmt, request.options.device
    module, backend, declared_shape = _traced_module(path, fmt, device)
    manifest = request.manifest or infer_manifest(path, fmt, module, input_shape=declared_shape,
                                                  image_size=request.options.image_size)
    fn: Callable[[torch.Tensor], torch.Tensor] = module
    if request.wants_compile:
        fn = _aoti_or_compiled(path, module, request.hints, fmt, device)
    return Predictor(fn, manifest=manifest, path=path, backend=backend, module=module, device=device,
                     memory_format=request.memory_format)


def _aoti_or_compiled(path: Path, module: nn.Module, hints: RuntimeHints, fmt: str,
                      device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The artifact's AOTInductor package where it has one that runs here, else ``torch.compile``."""
    if fmt == "exported_program":
        from modelops.runtimes.aoti import load_package

        packaged = load_package(path, hints.aoti, device)
        if packaged is not None:
            return packaged
    return compile_for_inference(module)


# The loader's one table of runtimes, by the name a manifest's ``runtime.engine`` gives. The first entry that
# runs a format is its default. Add one with :func:`register_runtime`.
RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (
    Runtime("torch", ("state_dict", "pickle"), load_eager),
    Runtime("torchscript", ("torchscript",), load_traced),
    Runtime("exported_program", ("exported_program",), load_traced),
    Runtime("onnxruntime", ("onnx",), load_onnxruntime),
    Runtime("openvino", ("onnx",), load_openvino),
)}


def register_runtime(runtime: Runtime) -> None:
    """Add ``runtime`` to :data:`RUNTIMES` (a manifest picks it with ``runtime.engine``); names are unique."""
    if runtime.name in RUNTIMES and RUNTIMES[runtime.name] != runtime:
        raise ValueError(f"a different runtime named {runtime.name!r} is already registered")
    RUNTIMES[runtime.name] = runtime


def unregister_runtime(name: str) -> None:
    """Remove the runtime ``name`` from :data:`RUNTIMES` (a no-op where there is none)."""
    RUNTIMES.pop(name, None)


def _traced_module(path: Path, fmt: str, device: str) -> tuple[nn.Module, str, list[int] | None]:
    """(module, backend, the input shape the file declares) of a TorchScript or ExportedProgram file."""
    if fmt == "torchscript":
        try:
            return torch.jit.load(str(path), map_location=device), "torchscript", None
        except RuntimeError as exc:
            raise ArtifactError(f"{path} is not a loadable TorchScript archive: {str(exc)[:200]}") from exc
    _register_quantized_ops()
    try:
        exported = torch.export.load(str(path))
    except Exception as exc:  # deserialisation raises many types; all mean a bad archive
        raise ArtifactError(f"{path} is not a loadable torch.export archive: {str(exc)[:200]}") from exc
    module = run_any_batch(exported.module().to(device), exported, path)
    return module, "exported_program", exported_input_shape(exported)


def _register_quantized_ops() -> None:
    """PT2E int8 graphs call ``quantized_decomposed`` ops that torchao registers on import."""
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except ImportError:
        logger.debug("torchao not installed; int8 exported programs will not load")
