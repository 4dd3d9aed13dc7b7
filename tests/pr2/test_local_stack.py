"""The local stack's own process handling: a SIGTERM at any moment of start-up stops every process it started
(and the hop benchmark's, its broker).

The stack runs as a real CLI process; its log lines name each child's pid as it starts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from PR2_async_inference.local_stack import free_port, stop_process
from PR2_async_inference.processes import REPO_ROOT, Proc

pytestmark = pytest.mark.slow

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_while_the_worker_starts_stops_every_started_process(pr2_registry: Path, tmp_path: Path):
    cmd = [sys.executable, str(REPO_ROOT / "PR2_async_inference" / "local_stack.py"), "--broker", "tansu",
           "--registry", str(pr2_registry), "--api-port", str(free_port()), "--broker-port", str(free_port()),
           "--log-dir", str(tmp_path / "logs")]
    stack = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                             start_new_session=True)
    started: dict[str, int] = {}
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while "worker0" not in started and time.monotonic() < deadline:
            line = stack.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := STARTED.search(line):
                started[match[1]] = int(match[2])
        assert set(started) == {"broker", "api", "worker0"}, "".join(lines)
        assert running(started["worker0"])  # still loading its model: start-up is not over
        stack.send_signal(signal.SIGTERM)
        rest, _ = stack.communicate(timeout=90)
        assert stack.returncode == 130, "".join(lines) + rest
        assert "API at" not in rest  # it never got as far as serving
        assert [name for name, pid in started.items() if running(pid)] == []
    finally:
        stop_process(Proc("local-stack", stack, tmp_path / "none"))
        for pid in started.values():  # only if the test failed: never leave them behind
            if running(pid):
                psutil.Process(pid).kill()


def test_sigterm_stops_the_broker_of_the_hop_benchmark(tmp_path: Path):
    cmd = [sys.executable, str(REPO_ROOT / "PR2_async_inference" / "benchmarks" / "bench_kafka_hop.py"),
           "--broker", "tansu", "--warmup", "1000000", "--size", "100", "--log-dir", str(tmp_path / "logs")]
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                             start_new_session=True)
    started: dict[str, int] = {}
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not started and time.monotonic() < deadline:
            line = bench.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := STARTED.search(line):
                started[match[1]] = int(match[2])
        assert list(started) == ["broker"], "".join(lines)
        time.sleep(2)  # into the warm-up records
        bench.send_signal(signal.SIGTERM)
        rest, _ = bench.communicate(timeout=60)
        assert bench.returncode == 130, "".join(lines) + rest
        assert not running(started["broker"])
    finally:
        stop_process(Proc("hop-bench", bench, tmp_path / "none"))
        for pid in started.values():  # only if the test failed: never leave them behind
            if running(pid):
                psutil.Process(pid).kill()
