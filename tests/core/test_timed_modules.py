"""Models in memory timed per process: saved to a temporary folder, handed to the timer, the folder removed."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from modelops.artifact import read_manifest
from modelops.load_options import LoadOptions
from modelops.manifest import Manifest, RuntimeHints
from modelops.model_process import ProcessTimes
from modelops.timed_modules import medians_or_raise, time_modules

INPUT = [3, 8, 8]


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


class FakeTimer:
    """Stands in for time_artifacts: records what it was given and what the files said while they existed."""

    def __init__(self) -> None:
        self.paths: dict[str, Path] = {}
        self.hints: dict[str, dict] = {}
        self.options: dict = {}

    def __call__(self, artifacts, batch_sizes, samples, **options) -> ProcessTimes:
        self.paths, self.options = dict(artifacts), options
        self.hints = {name: read_manifest(path).runtime for name, path in artifacts.items()}
        times = ProcessTimes()
        for i, name in enumerate(artifacts):
            times.samples_ms[name] = {b: [float(i + 1)] * samples for b in batch_sizes}
        return times


def test_modules_are_saved_for_the_timer_then_removed() -> None:
    timer = FakeTimer()
    model = tiny()
    times = time_modules({"plain": model, "nhwc": (model, True)}, Manifest(num_classes=5, input_shape=INPUT),
                         [2], 3, options=LoadOptions(threads=1), timer=timer)
    assert list(timer.paths) == ["plain", "nhwc"]
    assert timer.hints == {"plain": RuntimeHints(), "nhwc": RuntimeHints(memory_format="channels_last")}
    assert timer.options == {"options": LoadOptions(threads=1, trust_pickle=True)}  # the files are the caller's own
    assert not any(path.exists() for path in timer.paths.values())
    assert not timer.paths["plain"].parent.exists()
    assert medians_or_raise(times, 2) == {"plain": 1.0, "nhwc": 2.0}


def test_a_model_that_dropped_out_is_an_error() -> None:
    times = ProcessTimes(errors={"pruned": "RuntimeError: boom\ntrace"})
    with pytest.raises(RuntimeError, match="timing pruned failed: RuntimeError: boom"):
        medians_or_raise(times, 1)


def test_modules_run_each_in_its_own_process() -> None:
    times = time_modules({"a": tiny(), "b": (tiny(), True)}, Manifest(num_classes=5, input_shape=INPUT), [1], 2,
                         options=LoadOptions(threads=1))
    assert not times.errors
    assert set(times.median_ms(1)) == {"a", "b"}
    assert times.infos["a"]["pid"] != times.infos["b"]["pid"]
