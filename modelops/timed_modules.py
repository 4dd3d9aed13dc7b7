"""Models held in memory, timed the project's one way: saved as artifacts in a temporary folder that is
removed afterwards, each then loaded only in its own process and timed in interleaved turns
(:func:`modelops.model_process.time_artifacts`).

A module is saved whole (a pickle of exactly what is in memory, pruned shapes included) and loaded back with
``trust_pickle``: the files are this process's own, written a moment before. A channels_last variant is the
same file with the manifest's ``runtime.memory_format`` hint, run the way :func:`modelops.artifact.load_artifact`
runs that hint (weights and input in NHWC).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from modelops.load_options import LoadOptions
from modelops.manifest import Manifest, RuntimeHints
from modelops.model_process import ProcessTimes, time_artifacts
from modelops.saving import save_artifact

# (label -> artifact file, batch sizes, timed calls per model, options=LoadOptions) -> what each measured;
# :func:`modelops.model_process.time_artifacts`, or a fake one in tests.
Timer = Callable[..., ProcessTimes]


@contextmanager
def timing_folder() -> Iterator[Path]:
    """A temporary folder for the artifacts of one timing, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="timing_") as tmp:
        yield Path(tmp)


def save_for_timing(module: nn.Module, manifest: Manifest, folder: Path, name: str, *,
                    channels_last: bool = False) -> Path:
    """``module`` saved whole in ``folder`` as ``<name>.pt`` (with the channels_last hint when asked)."""
    runtime = RuntimeHints(memory_format="channels_last") if channels_last else RuntimeHints()
    copy = Manifest(arch=manifest.arch, num_classes=manifest.num_classes, input_shape=list(manifest.input_shape),
                    runtime=runtime)
    path = folder / f"{name}.pt"
    save_artifact(module, path, copy, fmt="pickle")
    return path


def time_modules(modules: Mapping[str, nn.Module | tuple[nn.Module, bool]], manifest: Manifest,
                 batch_sizes: Sequence[int], samples: int | Mapping[int, int], *, options: LoadOptions | None = None,
                 timer: Timer = time_artifacts, **timer_kwargs: Any) -> ProcessTimes:
    """Time modules in memory per process: label -> module, or (module, channels_last), in turn order.

    ``manifest`` gives the input shape and classes; ``options`` how the files are loaded (``trust_pickle`` is set:
    the files are this process's own); ``timer_kwargs`` go to the timer (``policy``, ``seed``, ...).
    """
    with timing_folder() as folder:
        paths = {}
        for name, entry in modules.items():
            module, channels_last = entry if isinstance(entry, tuple) else (entry, False)
            paths[name] = save_for_timing(module, manifest, folder, name, channels_last=channels_last)
        return timer(paths, list(batch_sizes), samples, options=replace(options or LoadOptions(), trust_pickle=True),
                     **timer_kwargs)


def medians_or_raise(times: ProcessTimes, batch_size: int) -> dict[str, float]:
    """Median milliseconds of every model at ``batch_size``; a model that dropped out is an error here."""
    if times.errors:
        name, error = next(iter(times.errors.items()))
        raise RuntimeError(f"timing {name} failed: {error.splitlines()[0] if error else ''}")
    return times.median_ms(batch_size)
