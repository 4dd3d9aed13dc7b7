"""The one timing method for artifact files: each model in its own worker process, interleaved turns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelops.artifact import Manifest, save_artifact
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.models import create_model
from modelops.timing import TimingPolicy

QUICK = TimingPolicy(warmup=1, calls_per_turn=2, untimed_per_turn=0, settle_s=0.0)


def _artifact(tmp_path: Path, name: str) -> Path:
    manifest = Manifest(arch="resnet18", num_classes=10, input_shape=[3, 32, 32], dataset="fake",
                        transform={"kind": "baseline", "source": "random"})
    path = tmp_path / f"{name}.pt"
    save_artifact(create_model("resnet18", 10).eval(), path, manifest)
    return path


def test_each_artifact_is_timed_in_its_own_process_and_a_broken_one_drops_out(tmp_path: Path) -> None:
    good = _artifact(tmp_path, "good")
    broken = _artifact(tmp_path, "broken")
    broken.write_bytes(broken.read_bytes()[:1000])  # the manifest stays: the file no longer loads
    times = time_artifacts({"a": good, "b": good, "broken": broken}, [1, 2], {1: 3, 2: 2}, QUICK,
                           options=LoadOptions(threads=1))
    assert set(times.errors) == {"broken"} and set(times.infos) == {"a", "b"}
    assert {name: {b: len(ms) for b, ms in per.items()} for name, per in times.samples_ms.items()} == \
        {"a": {1: 3, 2: 2}, "b": {1: 3, 2: 2}}
    pids = {info["pid"] for info in times.infos.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(info["cold_start_s"] >= info["load_s"] for info in times.infos.values())
    assert set(times.median_ms(2)) == {"a", "b"}
    assert times.stats("a", 1)["latency_ms_p50"] == pytest.approx(times.median_ms(1)["a"], abs=1e-3)
