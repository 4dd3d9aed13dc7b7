"""OpenVINO as a runtime for ONNX artifacts: fp32, int8 QDQ and bf16 execution on the CPU.

OpenVINO reads an ONNX file directly (QDQ int8 included) and compiles it for the host's ISA (AVX2,
AVX512-VNNI, AMX). An artifact asks for it with the manifest hint ``runtime: {"engine": "openvino"}``
and optionally ``"precision": "bf16" | "f32"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``; unset, OpenVINO
runs float parts in bf16 where the CPU has bf16 units and in f32 elsewhere).

Compiled models are kept in OpenVINO's model cache (``CACHE_DIR``), so a second load of the same file (another
worker process, a restart) reads the compiled blob instead of compiling again. The cache lives in
``$XDG_CACHE_HOME/modelops/openvino`` (``~/.cache/modelops/openvino``), in a sub-folder per file content (its
SHA-256): OpenVINO keys a blob by the file's path and metadata, and a file rewritten at the same path with the
same size within its timestamp's resolution was served the old blob. ``MODELOPS_OPENVINO_CACHE=DIR`` moves the
cache; ``MODELOPS_OPENVINO_CACHE=off`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from modelops.errors import ArtifactError, UsageError
from modelops.manifest import file_sha256
from modelops.predictor import LoadRequest, Predictor

logger = logging.getLogger(__name__)

ENGINE = "openvino"
PRECISIONS = ("f32", "bf16")
CACHE_ENV = "MODELOPS_OPENVINO_CACHE"
_CACHE_OFF = ("", "0", "off", "none", "false")
# The default argument of OpenVinoRunner: "where the environment says", told apart from an explicit None (no cache).
_FROM_ENV = object()


def openvino_cache_dir() -> Path | None:
    """The folder for OpenVINO's compiled-model cache: ``$MODELOPS_OPENVINO_CACHE``, else
    ``$XDG_CACHE_HOME/modelops/openvino`` (``~/.cache/modelops/openvino``); None when the variable says off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _CACHE_OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelops" / "openvino"


def _usable_cache_dir(folder: Path | None) -> Path | None:
    """``folder`` created if needed, or None (compile without a cache) where it cannot be written."""
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only home in a container: serving still works, only cold
        logger.warning("OpenVINO model cache off: cannot create %s (%s); set %s to a writable folder",
                       folder, exc, CACHE_ENV)
        return None
    if not os.access(folder, os.W_OK):
        logger.warning("OpenVINO model cache off: %s is not writable; set %s to a writable folder", folder, CACHE_ENV)
        return None
    return folder


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def compile_config(threads: int | None = None, precision: str | None = None) -> dict[str, object]:
    """OpenVINO CPU properties: latency hint, intra-op threads and the float precision."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None:
        if precision not in PRECISIONS:
            raise UsageError(f"Unknown OpenVINO precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}")
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


class OpenVinoRunner:
    """An ONNX file compiled by OpenVINO for the CPU; ``runner(batch) -> logits`` like any predictor function.

    Calls are serialised with a lock: one infer request is reused, and its output buffer is copied out.

    Args:
        path: the ONNX file.
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
        precision: ``f32`` or ``bf16`` (default: OpenVINO's choice for the CPU).
        cache_dir: the model cache folder (default: :func:`openvino_cache_dir`; None: no cache); the blobs go in
            its sub-folder named after the file's content.

    Attributes:
        compile_s: seconds ``compile_model`` took (the cold start, apart from steady-state latency; a load from
            the cache reads the compiled blob instead of compiling).
        precision: the inference precision OpenVINO reports after compiling.
        cache_dir: the folder holding this file's cached blob, or None.
        from_cache: whether OpenVINO loaded the compiled model from the cache.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str | None = None,
                 cache_dir: Path | str | object | None = _FROM_ENV) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ArtifactError(f"{path} asks for the OpenVINO runtime, which is not installed "
                                "(pip install openvino)") from exc
        folder = openvino_cache_dir() if cache_dir is _FROM_ENV else (Path(cache_dir) if cache_dir else None)
        self.cache_dir = _usable_cache_dir(folder / file_sha256(path)[:16] if folder is not None else None)
        config = compile_config(threads, precision)
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        started = time.perf_counter()
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise ArtifactError(f"OpenVINO cannot compile {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.compile_s = time.perf_counter() - started
        self.from_cache = self.cache_dir is not None and bool(self._compiled.get_property("LOADED_FROM_CACHE"))
        logger.debug("OpenVINO %s %s in %.2f s", "loaded" if self.from_cache else "compiled", path, self.compile_s)
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().cpu().float().contiguous().numpy()
        with self._lock:
            outputs = self._request.infer({0: array})
            return torch.from_numpy(outputs[0].copy())


def openvino_runner(path: str | Path, *, threads: int | None = None,
                    precision: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile ``path`` with OpenVINO for the CPU (see :class:`OpenVinoRunner`)."""
    return OpenVinoRunner(path, threads=threads, precision=precision)


def load_openvino(request: LoadRequest) -> Predictor:
    """The predictor of an ONNX file whose manifest asks for OpenVINO (``runtime.precision`` applies)."""
    if request.manifest is None:  # only a manifest names this engine
        raise ArtifactError(f"{request.path}: OpenVINO runs files whose manifest asks for it")
    runner = openvino_runner(request.path, threads=request.options.threads, precision=request.hints.precision)
    return Predictor(runner, manifest=request.manifest, path=request.path, backend=ENGINE, device="cpu")
