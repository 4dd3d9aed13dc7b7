"""Child processes of the local stack: start one with its log file, wait for its port or URL, stop it by pid.

Every process is started in a session of its own (a Ctrl-C in the terminal reaches only the parent), so the
parent stops each one itself: :func:`stop_process` sends SIGTERM, then SIGKILL after a timeout. Inside
:func:`track_started`, each process is recorded the moment it exists, so a signal at any point of a start-up
still finds every pid to stop: a CLI installs :func:`interrupt_on_signal` for SIGINT and SIGTERM, which raises
KeyboardInterrupt except between a fork and its record, or while processes are being stopped
(:func:`signals_held`), where it is raised at the end of that block instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with {proc.returncode} before opening port {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s ({last})")


@dataclass
class Proc:
    """A started process, its log file and what it serves."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


#: The list that :func:`spawn` appends to inside :func:`track_started` (None outside it).
_started: contextvars.ContextVar[list[Proc] | None] = contextvars.ContextVar("started", default=None)
#: Nesting depth of :func:`signals_held` blocks, and the signals that came in them.
_held = {"depth": 0}
_pending: list[int] = []


@contextlib.contextmanager
def track_started() -> Iterator[list[Proc]]:
    """Collect every process :func:`spawn` starts in this block, in start order."""
    started: list[Proc] = []
    token = _started.set(started)
    try:
        yield started
    finally:
        _started.reset(token)


def interrupt_on_signal(signum: int, frame: Any) -> None:
    """Signal handler for SIGINT and SIGTERM: KeyboardInterrupt now, or at the end of a :func:`signals_held`."""
    if _held["depth"]:
        _pending.append(signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_stop_signals() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt (:func:`interrupt_on_signal`) in the main thread; a CLI that
    starts processes calls it before the first one, so its ``finally`` blocks stop them by pid."""
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    signal.signal(signal.SIGINT, interrupt_on_signal)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer :func:`interrupt_on_signal` in this block; a signal that came meanwhile interrupts at its end.

    (Blocking the signals with ``pthread_sigmask`` instead would pass the block on to every child started in it.)
    """
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _pending:
            signum = _pending[0]
            _pending.clear()
            raise KeyboardInterrupt(f"signal {signum}")


def spawn(
    name: str,
    cmd: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    **info: Any,
) -> Proc:
    """Start ``cmd`` with stdout and stderr in ``log_dir/name.log``; ``info`` is what it serves."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    # A stop signal between the fork and the record below would leave a child nobody knows: hold it back.
    with signals_held():
        with open(log, "ab") as handle:
            popen = subprocess.Popen(
                cmd, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        proc = Proc(name, popen, log, port, dict(info))
        started = _started.get()
        if started is not None:
            started.append(proc)
    logger.info("started %s (pid %d), log %s", name, popen.pid, log)
    return proc


def stop_process(proc: Proc | None, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
    """Stop one process we started, by pid: ``sig`` first, SIGKILL after ``timeout_s``."""
    if proc is None or proc.popen.poll() is not None:
        return None if proc is None else proc.popen.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        return proc.popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.popen.wait(10)


def serve_until_stopped(banner: str, info: dict[str, Any], stop: Callable[[], None]) -> None:
    """What a CLI that started processes does next: print ``banner`` and ``info`` as one JSON line, then wait for
    Ctrl-C or SIGTERM (see :func:`interrupt_on_stop_signals`) and ``stop`` everything, also on any failure."""
    try:
        print(banner, flush=True)
        print(json.dumps(info), flush=True)
        while True:
            time.sleep(0.5)
    finally:
        stop()


def stop_all(procs: list[Proc]) -> None:
    """Stop every process of ``procs`` still running, the last started first (a stop signal waits for it)."""
    with signals_held():
        for proc in reversed(procs):
            stop_process(proc)
