"""Memory that belongs to a model: its weights' bytes, and the resident memory of a process that holds only it.

The peak figure comes from the kernel's high-water mark of this process's own address space (``VmHWM``),
which :func:`reset_peak_rss` sets back to the current RSS (Linux ``/proc/self/clear_refs``), so each batch
size gets its own peak. ``ru_maxrss`` is not used on Linux: a process started by fork + exec inherits the
parent's high-water mark in it, so every worker of a large parent would report the parent's size.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_mb() -> float:
    """Current resident set size of this process."""
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started or since the last :func:`reset_peak_rss`."""
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak_rss() -> bool:
    """Set the peak back to the current RSS (after a garbage collection); False where the OS cannot."""
    gc.collect()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def runtime_baseline_mb() -> float:
    """RSS once every runtime a model may need is imported: the floor a model's own memory is measured from."""
    import torch  # noqa: F401

    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    gc.collect()
    return rss_mb()


def _tensor_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if not hasattr(tensor, "untyped_storage") or tensor.is_meta:
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:  # tied weights share one storage
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def _module_tensors(module: Any) -> list[Any]:
    tensors = list(module.state_dict(keep_vars=True).values()) if hasattr(module, "state_dict") else []
    # Eager int8 modules keep their weights in packed parameters: unpack to count them.
    for sub in module.modules() if hasattr(module, "modules") else []:
        packed = getattr(sub, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            tensors.extend(t for t in packed._weight_bias() if t is not None)
    return tensors


def onnx_weight_bytes(path: str | Path) -> int:
    """Bytes of an ONNX model's initializers (its weights), from their shapes and element types."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(int(np.prod(init.dims, dtype=np.int64)) * np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize
               for init in graph.initializer)


def weight_bytes(predictor: Any) -> int | None:
    """Bytes of a loaded model's weights: tensors of its module, or initializers of its ONNX graph."""
    if predictor.manifest.format == "onnx":
        return onnx_weight_bytes(predictor.path)
    if predictor.module is None:
        return None
    return _tensor_bytes(_module_tensors(predictor.module))
