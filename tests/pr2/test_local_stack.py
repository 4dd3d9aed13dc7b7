"""The local stack's own process handling: a SIGTERM at any moment of start-up stops every process it started
(and the hop benchmark's, its broker); the broker's settings it hands its services (Tansu's fetch wait).

The stack runs as a real CLI process; its log lines name each child's pid as it starts."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from PR2_async_inference.local_stack import TANSU_FETCH_MAX_WAIT_MS, free_port, service_env, stop_process
from PR2_async_inference.processes import REPO_ROOT, Proc

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def cli_process(cmd: list[str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen, dict[str, int], list[str]]]:
    """Run ``cmd`` in its own session; yields it, the children its log lines name so far ({name: pid}, filled by
    :func:`read_started`) and its output lines. Afterwards it is stopped, and so is any child still running
    (only when the test failed: never leave them behind)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                            start_new_session=True)
    started: dict[str, int] = {}
    try:
        yield proc, started, []
    finally:
        stop_process(Proc("cli", proc, tmp_path / "none"))
        for pid in started.values():
            if running(pid):
                psutil.Process(pid).kill()


def read_started(proc: subprocess.Popen, started: dict[str, int], lines: list[str], last: str,
                 timeout_s: float) -> None:
    """Read ``proc``'s output into ``lines`` until its log names the start of ``last`` (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while last not in started and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if match := STARTED.search(line):
            started[match[1]] = int(match[2])


@pytest.mark.slow
def test_sigterm_while_the_worker_starts_stops_every_started_process(pr2_registry: Path, tmp_path: Path):
    cmd = [sys.executable, str(REPO_ROOT / "PR2_async_inference" / "local_stack.py"), "--broker", "tansu",
           "--registry", str(pr2_registry), "--api-port", str(free_port()), "--broker-port", str(free_port()),
           "--log-dir", str(tmp_path / "logs")]
    with cli_process(cmd, tmp_path) as (stack, started, lines):
        read_started(stack, started, lines, "worker0", timeout_s=180)
        assert set(started) == {"broker", "api", "worker0"}, "".join(lines)
        assert running(started["worker0"])  # still loading its model: start-up is not over
        stack.send_signal(signal.SIGTERM)
        rest, _ = stack.communicate(timeout=90)
        assert stack.returncode == 130, "".join(lines) + rest
        assert "API at" not in rest  # it never got as far as serving
        assert [name for name, pid in started.items() if running(pid)] == []


@pytest.mark.slow
def test_sigterm_stops_the_broker_of_the_hop_benchmark(tmp_path: Path):
    cmd = [sys.executable, str(REPO_ROOT / "PR2_async_inference" / "benchmarks" / "bench_kafka_hop.py"),
           "--broker", "tansu", "--warmup", "1000000", "--size", "100", "--log-dir", str(tmp_path / "logs")]
    with cli_process(cmd, tmp_path) as (bench, started, lines):
        read_started(bench, started, lines, "broker", timeout_s=120)
        assert list(started) == ["broker"], "".join(lines)
        time.sleep(2)  # into the warm-up records
        bench.send_signal(signal.SIGTERM)
        rest, _ = bench.communicate(timeout=60)
        assert bench.returncode == 130, "".join(lines) + rest
        assert not running(started["broker"])


def test_tansu_gets_its_fetch_wait_when_the_caller_passes_none() -> None:
    """bench_e2e and local_stack pass fetch_max_wait_ms=None for "the default": on Tansu that is Tansu's wait."""
    tansu = Proc("broker", popen=None, log=Path("broker.log"), info={"kind": "tansu", "bootstrap": "127.0.0.1:1"})
    assert service_env(tansu, fetch_max_wait_ms=None)["INFERENCE_FETCH_MAX_WAIT_MS"] == str(TANSU_FETCH_MAX_WAIT_MS)
    assert service_env(tansu, fetch_max_wait_ms=80)["INFERENCE_FETCH_MAX_WAIT_MS"] == "80"
    assert "INFERENCE_FETCH_MAX_WAIT_MS" not in service_env("127.0.0.1:1", fetch_max_wait_ms=None)
