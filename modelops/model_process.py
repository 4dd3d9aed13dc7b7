"""Models in their own spawned processes, timed in the project's interleaved turns: the one timing method.

:class:`WorkerProxy` runs a :class:`~modelops.model_session.ModelSession` in its own spawned process and
forwards method calls over a pipe, so that

- each model's memory is its own (the RSS of a process that only ever held that model),
- no runtime shares a process with another: one runtime's thread pool, allocator or spinning threads never
  slow another model down, so a ratio is the ratio of each model run alone, and
- the parent still interleaves models turn by turn (:func:`modelops.timing.run_turns`): it asks worker A for
  one turn, then B, then C. Timing happens inside the worker, so the pipe's cost is never timed.

:func:`time_artifacts` is the whole method for artifact files (load each in its own process, time them in
turns at each batch size); :func:`time_batch` is one batch size of it for callers that keep their sessions
for more work (PR4's benchmark). Every runtime keeps its own default threading. Workers ignore SIGINT: on
Ctrl-C the parent stops them by pid. On Linux the kernel ends a worker whose parent dies, even in the middle of a
long call (a LoadGen run), so a parent killed with SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import statistics
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops.artifact import RUNTIMES, register_runtime
from modelops.load_options import LoadOptions
from modelops.logs import configure_logging, log_file_path
from modelops.model_session import ModelSession
from modelops.predictor import Runtime
from modelops.timing import POLICY, TimingPolicy, latency_stats, run_turns

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGKILL to this process when its parent exits (Linux; elsewhere the message loop's
    parent check is all there is). A worker busy in one call never reaches that check until the call ends."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)


# Generous: a cold torch.compile of a big model on a shared 2-core machine can take minutes.
WORKER_REPLY_TIMEOUT_S = 1800.0


def _worker_main(conn: Any, session_cls: type[ModelSession], kwargs: dict[str, Any], parent: int,
                 runtimes: Sequence[Runtime] = (), log_file: Path | None = None, verbose: bool = False) -> None:
    """Entry point of a spawned worker: log as the parent does (warnings on the terminal, everything in its log
    file), take the parent's runtimes (a spawned process starts with the built-in table only), build a session,
    then answer (method, args, kwargs) messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    configure_logging(verbose=verbose, log_file=log_file, console_level=logging.WARNING)
    for runtime in runtimes:
        register_runtime(runtime)
    session = session_cls(**kwargs)
    while True:
        try:
            while not conn.poll(1.0):
                if os.getppid() != parent:  # the parent died without closing us: leave, do not linger
                    return
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            conn.close()
            return
        method, args, call_kwargs = message
        try:
            conn.send(("ok", getattr(session, method)(*args, **call_kwargs)))
        except BaseException as exc:  # report every failure to the parent instead of dying silently
            first = str(exc).splitlines()[0] if str(exc) else ""
            conn.send(("error", (type(exc).__name__, first, traceback.format_exc(limit=8),
                                 _is_usage_error(exc))))


def _is_usage_error(exc: BaseException) -> bool:
    from modelops.errors import UsageError

    return isinstance(exc, UsageError)


class WorkerError(RuntimeError):
    """A call that failed inside a worker; ``usage`` tells bad input (exit 2) from a failure."""

    def __init__(self, message: str, *, usage: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.usage = usage
        self.detail = detail


class _SessionProxy:
    """Forwards an unknown attribute ``session.method(...)`` as ``self.call("method", ...)``."""

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


class WorkerProxy(_SessionProxy):
    """A :class:`ModelSession` (or ``session``, a subclass importable by name) in its own spawned process;
    call its methods as if it were local."""

    def __init__(self, *, session: type[ModelSession] = ModelSession, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.name = kwargs["name"]
        self.process = ctx.Process(target=_worker_main,
                                   args=(child, session, kwargs, os.getpid(), list(RUNTIMES.values()),
                                         log_file_path(),
                                         logging.getLogger().getEffectiveLevel() <= logging.DEBUG),
                                   daemon=True, name=f"bench-{self.name}")
        self.process.start()
        child.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def call(self, method: str, *args: Any, timeout: float = WORKER_REPLY_TIMEOUT_S, **kwargs: Any) -> Any:
        self.send(method, *args, **kwargs)
        return self.receive(timeout=timeout)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._conn.send((method, args, kwargs))
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"worker for {self.name!r} is gone ({exc})") from exc

    def receive(self, timeout: float = WORKER_REPLY_TIMEOUT_S) -> Any:
        if not self._conn.poll(timeout):
            raise WorkerError(f"worker for {self.name!r} did not answer within {timeout:.0f} s")
        try:
            status, payload = self._conn.recv()
        except EOFError as exc:
            code = self.process.exitcode
            raise WorkerError(f"worker for {self.name!r} died (exit code {code}); out of memory?") from exc
        if status == "error":
            kind, message, detail, usage = payload
            raise WorkerError(f"{kind}: {message}", usage=usage, detail=detail)
        return payload

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; stop it by its pid if it does not."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        self._conn.close()


class LocalProxy(_SessionProxy):
    """The same interface as :class:`WorkerProxy` with the session in this process (all models in one)."""

    def __init__(self, *, session: type[ModelSession] = ModelSession, **kwargs: Any) -> None:
        self.name = kwargs["name"]
        self.session = session(**kwargs)
        self.pid = os.getpid()
        self._pending: Any = None

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self.session, method)(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WorkerError(f"{type(exc).__name__}: {first}", usage=_is_usage_error(exc),
                              detail=traceback.format_exc(limit=8)) from exc

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._pending = ("ok", self.call(method, *args, **kwargs))
        except WorkerError as exc:
            self._pending = ("error", exc)

    def receive(self, timeout: float | None = None) -> Any:
        status, payload = self._pending
        self._pending = None
        if status == "error":
            raise payload
        return payload

    def close(self, timeout: float = 0.0) -> None:
        self.session.predictor = None


Proxy = WorkerProxy | LocalProxy


def start_session(isolation: str, name: str, path: str | Path, options: LoadOptions, *,
                  session: type[ModelSession] = ModelSession, seed: int = 0, **session_kwargs: Any) -> Proxy:
    """A session for one model: in its own process (``isolation='process'``) or in this one (``'none'``).

    Args:
        isolation: ``process`` or ``none``.
        name: the model's label.
        path: the artifact file.
        options: how to load it (pickled to a spawned worker as it is).
        session: the :class:`ModelSession` class to run (a subclass importable by name).
        seed: seed of the random input batches (default: 0).
        session_kwargs: further arguments of ``session``'s constructor.
    """
    proxy = WorkerProxy if isolation == "process" else LocalProxy
    return proxy(session=session, name=name, path=str(path), options=options, seed=seed, **session_kwargs)


def wait_until_started(sessions: Mapping[str, Proxy], *, raise_errors: bool = False) -> None:
    """Ping every session, then read each answer, so the workers start up side by side.

    A worker that cannot start raises its :class:`WorkerError` here when ``raise_errors``; otherwise its
    answer is dropped and the worker fails its next call. A worker already gone when pinged raises either way.
    """
    for session in sessions.values():
        session.send("ping")
    for session in sessions.values():
        if raise_errors:
            session.receive()
            continue
        with contextlib.suppress(WorkerError):
            session.receive()


# ---------------------------------------------------------------------- timing


def time_batch(sessions: Mapping[str, Proxy], batch_size: int, samples: int, policy: TimingPolicy = POLICY, *,
               on_error: Callable[[str, Exception], None], **turn_options: Any) -> dict[str, list[float]]:
    """One batch size: each session's input and peak-memory window, then interleaved turns across them.

    A session that fails is handed to ``on_error`` and drops out; the others go on. ``turn_options`` go to
    :func:`modelops.timing.run_turns` (``enough``, ``max_samples``, ``on_turn``).
    """
    ready = {}
    for name, session in sessions.items():
        try:
            session.begin_batch(batch_size)
        except WorkerError as exc:
            on_error(name, exc)
            continue
        ready[name] = session
    turns = {name: (lambda u, t, s=session: s.turn(batch_size, u, t)) for name, session in ready.items()}
    return run_turns(turns, samples, policy, on_error=on_error, **turn_options)


@dataclass
class ProcessTimes:
    """What :func:`time_artifacts` measured: per model, per batch size, every timed call's milliseconds.

    ``infos`` holds what each model's ``load`` said, plus ``cold_start_s`` (load and first call);
    ``errors`` why a model dropped out (it has no samples from then on).
    """

    samples_ms: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median_ms(self, batch_size: int) -> dict[str, float]:
        """Median milliseconds at ``batch_size`` of every model timed there."""
        return {name: statistics.median(per[batch_size]) for name, per in self.samples_ms.items()
                if per.get(batch_size)}

    def stats(self, name: str, batch_size: int) -> dict[str, float]:
        """:func:`modelops.timing.latency_stats` of one model at one batch size."""
        return latency_stats(self.samples_ms[name][batch_size])


def _load_all(sessions: Mapping[str, Proxy], first_batch: int, times: ProcessTimes) -> None:
    """Load the models one at a time, each followed by its first call, so every cold start is its own."""
    wait_until_started(sessions)  # before any cold start is timed; a worker that cannot start fails its load below
    for name, session in sessions.items():
        try:
            info = session.load()
            info["cold_start_s"] = round(info["load_s"] + session.first_call(first_batch), 3)
        except WorkerError as exc:
            times.errors[name] = str(exc)
            logger.warning("%s dropped out: %s", name, exc)
            continue
        times.infos[name] = info


def time_artifacts(artifacts: Mapping[str, str | Path], batch_sizes: Sequence[int],
                   samples: int | Mapping[int, int], policy: TimingPolicy = POLICY, *,
                   options: LoadOptions | None = None, seed: int = 0, isolation: str = "process") -> ProcessTimes:
    """Time artifact files the project's way: each loaded only in its own process, all in interleaved turns.

    Args:
        artifacts: label -> artifact file (anything :func:`modelops.artifact.load_artifact` loads), in turn order.
        batch_sizes: the batch sizes, timed one after another (every model at one size, then the next).
        samples: timed calls per model, or per batch size as ``{batch_size: calls}``.
        policy: warm-up, calls per turn, untimed calls per turn, pause before a turn.
        options: how every model is loaded (default: ``LoadOptions()``); its ``threads`` are every runtime's
            intra-op threads (all usable cores where None), its ``compile`` forces torch.compile on or off (None:
            each manifest's ``runtime.compile``).
        seed: seed of the random inputs (every model gets the same ones).
        isolation: ``process`` (the method); ``none`` runs every model in this process, for comparison only.

    A model that fails to load or run drops out with its error in ``errors``; the others go on.
    """
    times = ProcessTimes()
    options = options or LoadOptions()
    sessions = {name: start_session(isolation, name, path, options, seed=seed) for name, path in artifacts.items()}

    def drop(name: str, exc: Exception) -> None:
        times.errors[name] = str(exc)
        logger.warning("%s dropped out: %s", name, exc)

    try:
        _load_all(sessions, batch_sizes[0], times)
        for batch_size in batch_sizes:
            live = {n: s for n, s in sessions.items() if n not in times.errors}
            count = samples[batch_size] if isinstance(samples, Mapping) else samples
            for name, values in time_batch(live, batch_size, count, policy, on_error=drop).items():
                if values:
                    times.samples_ms.setdefault(name, {})[batch_size] = values
    finally:
        for session in sessions.values():
            session.close()
    return times
