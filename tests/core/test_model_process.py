"""The one timing method for artifact files: each model in its own worker process, interleaved turns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelops.artifact import Manifest, save_artifact
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.model_session import ModelSession
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


class HoldingSession(ModelSession):
    """A session with one call that takes as long as it is told (a stand-in for a LoadGen run)."""

    def hold(self, seconds: float) -> None:
        time.sleep(seconds)


PARENT = """
import sys, time
from modelops.load_options import LoadOptions
from modelops.model_process import start_session
from tests.core.test_model_process import HoldingSession

session = start_session("process", "held", sys.argv[1], LoadOptions(threads=1), session=HoldingSession)
session.send("hold", 600)
print(session.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_busy_in_a_long_call_ends_with_its_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(_artifact(tmp_path, "held"))],
                              cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        parent.kill()  # SIGKILL: the parent closes nothing and the worker is 600 s into one call
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker)
    finally:
        parent.kill()
        parent.wait(timeout=30)
