"""``local_cluster.py`` as a user runs it: one JSON line once the API server answers, every process stopped by
SIGTERM, and a clear error for a bad flag."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "PR1_horizontal_pod_autoscaling" / "local_cluster.py"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_starts_prints_its_kubeconfig_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--no-keda", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    info = None
    try:
        deadline = time.monotonic() + 180
        while info is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                info = json.loads(line)
        assert info is not None, "no JSON line before the deadline"
        assert set(info["pids"]) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert info["server"].startswith("https://127.0.0.1:")
        kubectl = subprocess.run([info["kubectl"], "--kubeconfig", info["kubeconfig"], "get", "namespaces"],
                                 capture_output=True, text=True, timeout=30)
        assert kubectl.returncode == 0 and "kube-system" in kubectl.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 130  # interrupted, after stopping what it started
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in info["pids"].values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in info["pids"].values())


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--hpa-sync-period", "0", "--no-keda"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --hpa-sync-period must be >= 1 second, got 0"
