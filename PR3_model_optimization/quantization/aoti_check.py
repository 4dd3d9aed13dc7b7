"""Keep a PT2E artifact's AOTInductor package only where it runs as fast as ``torch.compile`` on this host.

The package spares a served model inductor's compile on its first call at each batch size, but its kernels are
built once for the program's whole dynamic batch range, where ``torch.compile`` specialises each batch size it
meets. How much that costs depends on the model and the CPU (``benchmarks/bench_backend_options.py`` times
the package beside ``torch.compile``): as fast for one model, several times slower for another on the same
CPU. A worker compiles once at start-up and then serves for hours, so a package that is slower in steady
state is dropped: the artifact
and the package are timed both ways, each in its own process (the project's one timing method), and the
manifest records the figures and the verdict.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelops.artifact import Manifest, write_manifest
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.runtimes.aoti import package_path

# The package may be this much slower (geometric mean over the batch sizes) and still be kept for its cold start.
TOLERANCE = 0.05
COMPILED, PACKAGED = "torch.compile", "AOTInductor package"


def _place(source: Path, target: Path) -> None:
    """``source`` at ``target``: a hard link where the file system allows one, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _variants(artifact: Path, manifest: Manifest, entry: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The artifact twice under ``folder``: once with no package (the loader compiles), once with it."""
    runtime = manifest.runtime.model_copy(update={"aoti": None})
    paths = {COMPILED: folder / "compiled" / artifact.name, PACKAGED: folder / "packaged" / artifact.name}
    for name, path in paths.items():
        _place(artifact, path)
        with_package = name == PACKAGED
        if with_package:
            _place(package_path(artifact), path.with_name(entry["file"]))
        write_manifest(path, manifest.model_copy(update={"runtime": runtime.model_copy(update={"aoti": entry})
                                                          if with_package else runtime}), fmt="exported_program")
    return paths


def check_package(artifact: Path, manifest: Manifest, entry: dict[str, Any], batch_sizes: Sequence[int],
                  rounds: int, *, threads: int | None = None,
                  timer: Callable[..., Any] = time_artifacts) -> tuple[bool, dict[str, Any]]:
    """Time ``artifact`` compiled by ``torch.compile`` and run from its package (``entry``, the manifest's
    ``runtime.aoti``); (keep the package, the record for the manifest's metrics).

    A package that fails to load or run is not kept; a ``torch.compile`` that fails leaves the package kept.
    """
    sizes = sorted(set(batch_sizes))
    with tempfile.TemporaryDirectory(prefix="aoti_check_") as folder:
        times = timer(_variants(artifact, manifest, entry, Path(folder)), sizes, rounds,
                      options=LoadOptions(threads=threads))
    if PACKAGED in times.errors:
        return False, {"kept": False, "why": f"the package failed: {times.errors[PACKAGED][:200]}"}
    record: dict[str, Any] = {f"{key}_ms": {b: round(ms, 3) for b in sizes if (ms := times.median_ms(b).get(name))}
                              for key, name in (("compile", COMPILED), ("package", PACKAGED))}
    ratios = [record["compile_ms"][b] / record["package_ms"][b] for b in sizes
              if b in record["compile_ms"] and b in record["package_ms"]]
    if not ratios:
        return True, {**record, "kept": True, "why": "torch.compile could not be timed; the package is kept"}
    speed = statistics.geometric_mean(ratios)
    keep = speed >= 1 - TOLERANCE
    why = (f"the package runs {speed:.2f}x as fast as torch.compile (geometric mean over batch sizes "
           f"{', '.join(map(str, sizes))}), {'within' if keep else 'outside'} the {TOLERANCE:.0%} its cold start "
           "is worth")
    return keep, {**record, "speed_vs_compile": round(speed, 3), "kept": keep, "why": why}
