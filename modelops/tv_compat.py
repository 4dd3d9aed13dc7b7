"""Make torchvision importable on a CPU-only torch whose C++ ops cannot load.

The torchvision 0.28.0 wheel on PyPI is a CUDA build. On the CPU torch 2.13.0 wheel its
``_C`` extension fails to load, and ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist`` because the module registers
fake (meta) kernels for ops nobody defined. Models, transforms and datasets are pure
Python, so defining the two op schemas it looks up is enough to import them.

When the real ops load (a matching build on a user's machine) this module does nothing.
Detection and object-detection ops (nms, roi_align, ...) stay unavailable in that case and
raise a clear error if called; classification never calls them.
"""

from __future__ import annotations

import logging
import sys
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_MISSING_OP_MARKER = "torchvision::"
_compat_library: torch.library.Library | None = None
patched = False


def _define_placeholder_ops() -> None:
    global _compat_library
    if _compat_library is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")

        def _unavailable(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float, _op: str = name):
            raise RuntimeError(
                f"torchvision::{_op} is unavailable: torchvision's C++ ops did not load on this torch "
                "build (CUDA torchvision wheel on CPU torch). Install a torchvision build that matches torch."
            )

        lib.impl(name, _unavailable, "CompositeExplicitAutograd")
    _compat_library = lib


def _purge_partial_import() -> None:
    for module_name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[module_name]


def import_torchvision() -> ModuleType:
    """Import and return torchvision, defining its missing op schemas first if needed."""
    global patched
    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if _MISSING_OP_MARKER not in str(exc):
            raise
        logger.debug("torchvision C++ ops did not load (%s); defining placeholder ops", exc)
    _purge_partial_import()
    _define_placeholder_ops()
    patched = True
    import torchvision

    return torchvision


torchvision = import_torchvision()
