"""AOTInductor packages: an ExportedProgram compiled ahead of time, so serving it needs no compile.

A PT2E int8 program (X86InductorQuantizer) is fast only once inductor has fused its quantize/dequantize pairs
into oneDNN int8 kernels with the weights frozen. ``torch.compile`` does that on the first call (over ten
seconds for a ResNet-18 at 224x224) and again at each new batch size. :func:`package_exported` does the same
compile once, when the artifact is made, and writes a package beside it (``<artifact>.aoti.pt2``: a shared
library plus the frozen weights, with the program's dynamic batch range); :func:`load_package` loads it in
about a second and its first call runs at full speed (:func:`open_package`).

A package runs only where it can: on the CPU, with the torch release that built it, on a CPU with the vector
ISA inductor chose (AVX512, AVX2, ...; the wrong one would die on an illegal instruction, which no ``except``
catches). The manifest's ``runtime.aoti`` records both. Where they do not match, or the package is missing or
does not load, :func:`load_package` logs why and returns None, and the loader compiles with ``torch.compile``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

AOTI_SUFFIX = ".aoti.pt2"  # torch requires package names to end in .pt2


def package_path(artifact: str | Path) -> Path:
    """Where the package of ``artifact`` goes: ``<artifact>.aoti.pt2`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + AOTI_SUFFIX)


def torch_release() -> str:
    """torch's version without the build tag (``2.13.0+cpu`` and ``2.13.0+cu130`` build the same CPU code)."""
    return torch.__version__.split("+")[0]


def host_isa() -> str:
    """The vector ISA inductor generates CPU code for on this host (e.g. ``avx512``, ``avx2``)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa())


def runs_isa(isa: str) -> bool:
    """Whether this CPU runs code built for the vector ISA ``isa`` (e.g. ``avx512 avx512_vnni``).

    On x86 this reads the CPU's flags. inductor's own check (``valid_vec_isa_list``, which
    ``aoti_load_package`` calls) also compiles a probe program per ISA, seconds on a fresh host, to learn what
    the compiler can build, which does not matter for a package that is already built.
    """
    from torch._inductor import cpu_vec_isa

    if platform.machine() in ("x86_64", "AMD64"):
        return set(isa.split()) <= set(cpu_vec_isa.x86_isa_checker())
    return isa in [str(valid) for valid in cpu_vec_isa.valid_vec_isa_list()]


class PackagedModel:
    """A loaded package: ``model(batch) -> logits``. The output structure is read once, not at every call as
    torch's ``AOTICompiledModel`` does."""

    def __init__(self, loader: Any) -> None:
        from torch.utils import _pytree as pytree

        self._loader = loader
        self._unflatten = pytree.tree_unflatten
        self._out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self._unflatten(self._loader.boxed_run([batch]), self._out_spec)


def open_package(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Load the package at ``path`` for the CPU without inductor's ISA probe compiles (see :func:`runs_isa`);
    through ``aoti_load_package`` where torch's loader class is not where this torch release keeps it."""
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is None:
        return torch._inductor.aoti_load_package(str(path))
    # (package, model name, run single-threaded, runners, device index): as aoti_load_package passes them.
    return PackagedModel(loader_class(str(path), "model", False, 1, -1))


def package_exported(program: torch.export.ExportedProgram, out: str | Path, example: torch.Tensor) -> dict[str, Any]:
    """Compile ``program`` with AOTInductor, weights frozen, into the package ``out``; its manifest entry.

    ``example`` is an input batch (AOTInductor traces with it; the batch range stays the program's). The
    package is written under a temporary name and moved into place, so a reader never sees half of one.
    """
    out = Path(out)
    partial = out.with_name(out.name.removesuffix(".pt2") + ".partial.pt2")
    program.example_inputs = ((example,), {})
    # Inductor freezes the weights (and fuses the int8 patterns into oneDNN kernels) only for inference
    # graphs, that is with gradients off: with them on the package ran 2-5x slower than torch.compile.
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial),
                                                 inductor_configs={"freezing": True})
    partial.replace(out)
    return {"file": out.name, "torch": torch_release(), "isa": host_isa()}


def why_unusable(artifact: Path, entry: dict[str, Any], device: str) -> str | None:
    """Why the package that ``entry`` describes cannot run here, or None when it can."""
    if torch.device(device).type != "cpu":
        return f"the package is compiled for the CPU, not {device}"
    path = artifact.with_name(str(entry.get("file", "")))
    if not entry.get("file") or not path.is_file():
        return f"{path.name} is missing"
    if entry.get("torch") != torch_release():
        return f"it was built with torch {entry.get('torch')}, this is {torch_release()}"
    if not runs_isa(str(entry.get("isa"))):
        return f"it was built for {entry.get('isa')!r}, which this CPU lacks"
    return None


def load_package(artifact: str | Path, entry: dict[str, Any] | None,
                 device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The compiled model of ``artifact``'s package (its manifest's ``runtime.aoti`` entry), or None, with the
    reason logged, where there is none or it cannot run here."""
    artifact = Path(artifact)
    if not entry:
        logger.info("%s has no AOTInductor package: compiling with torch.compile (its first call compiles)",
                    artifact.name)
        return None
    reason = why_unusable(artifact, entry, device)
    if reason is None:
        try:
            return open_package(artifact.with_name(entry["file"]))
        except Exception as exc:  # a corrupt or foreign package raises many types; all mean "compile instead"
            reason = f"it does not load: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    logger.warning("%s: AOTInductor package not used (%s); compiling with torch.compile instead (its first call "
                   "compiles)", artifact.name, reason)
    return None
