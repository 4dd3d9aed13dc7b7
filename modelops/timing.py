"""Latency measurement: the one timing method behind every figure the project prints.

Models are timed in interleaved turns (A A A B B B A A A B B B ...) so drift on a shared machine hits all
alike. Each turn is a short pause (``settle_s``), ``untimed_per_turn`` untimed calls, then up to
``calls_per_turn`` timed calls back to back. Every runtime keeps its own default threading: idle threads
that spin-wait (OpenMP's and ONNX Runtime's defaults) burn the cores for milliseconds after a call
returns, and strict A B A B alternation would charge that to whichever model runs next; in turns each model
is timed the way it runs alone. The project's figures come from models in their own worker processes
(:mod:`modelops.model_process` hands :func:`run_turns` one callable per worker; models held in memory go
through :mod:`modelops.timed_modules`). ``docs/measurements/timing_policy.py`` is the experiment behind
:data:`POLICY`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

PERCENTILES = (50, 90, 95, 99)

Clock = Callable[[], float]
# A model's turn: (untimed calls, timed calls) -> the timed calls' milliseconds.
Turn = Callable[[int, int], list[float]]


@dataclass(frozen=True)
class TimingPolicy:
    """How models take turns.

    Args:
        warmup: untimed calls per model before the first turn (first-call allocation, graph set-up).
        calls_per_turn: timed calls back to back in one turn.
        untimed_per_turn: untimed calls at the start of each turn (wakes the runtime's thread pool).
        settle_s: pause before each turn, so the previous model's idle threads stop spinning.
    """

    warmup: int = 5
    calls_per_turn: int = 5
    untimed_per_turn: int = 1
    settle_s: float = 0.05

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.untimed_per_turn < 0 or self.settle_s < 0:
            raise ValueError("warmup, untimed_per_turn and settle_s must be >= 0")
        if self.calls_per_turn < 1:
            raise ValueError("calls_per_turn must be >= 1")


POLICY = TimingPolicy()
# Plain A B A B alternation: one timed call per turn, no pause, no untimed call (for comparison only).
ALTERNATING = TimingPolicy(calls_per_turn=1, untimed_per_turn=0, settle_s=0.0)


def sync(device: torch.device | str | None) -> None:
    """Wait for queued device work, so a clock read after it sees the work done (a no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: torch.device | str | None = None, clock: Clock = time.perf_counter,
              ) -> float:
    """One call's wall time in milliseconds, device synchronised before each clock read."""
    sync(device)
    start = clock()
    fn()
    sync(device)
    return (clock() - start) * 1e3


def take_turn(fn: Callable[[], object], untimed: int, timed: int, *, device: torch.device | str | None = None,
              clock: Clock = time.perf_counter) -> list[float]:
    """``untimed`` calls, then ``timed`` calls each timed on its own; their milliseconds."""
    for _ in range(untimed):
        fn()
    return [time_call(fn, device, clock) for _ in range(timed)]


def latency_stats(samples_ms: list[float] | np.ndarray, prefix: str = "latency_ms_") -> dict[str, float]:
    """mean, std, min, max and p50/p90/p95/p99 of ``samples_ms`` (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=float)
    if values.size == 0:
        raise ValueError("no latency samples")
    stats = {"mean": values.mean(), "std": values.std(ddof=1) if values.size > 1 else 0.0,
             "min": values.min(), "max": values.max()}
    stats.update({f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES})
    return {f"{prefix}{k}": round(float(v), 4) for k, v in stats.items()}


def run_turns(
    turns: Mapping[str, Turn], samples: int, policy: TimingPolicy = POLICY, *,
    enough: Callable[[dict[str, list[float]]], bool] | None = None, max_samples: int | None = None,
    on_error: Callable[[str, Exception], None] | None = None, on_turn: Callable[[str, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, list[float]]:
    """Warm every model up, then take interleaved turns until each has ``samples`` timed calls.

    Args:
        turns: one :data:`Turn` per model, in turn order.
        samples: timed calls per model; with ``enough``, the minimum before ``enough`` is asked.
        policy: warm-up, calls per turn, untimed calls per turn, pause before a turn.
        enough: optional stop rule on the samples so far (e.g. "every model ran 2 s"), checked after each round.
        max_samples: cap on timed calls per model when ``enough`` decides (default: ``samples``).
        on_error: if given, a turn that raises drops that model (the others go on) and this is told why;
            otherwise the exception propagates.
        on_turn: told (model, timed calls) after each turn (progress bars).
        sleep: the pause function (tests pass a fake one).
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    cap = max_samples or samples
    taken: dict[str, list[float]] = {name: [] for name in turns}
    live = dict(turns)

    def call(name: str, untimed: int, timed: int) -> None:
        try:
            ms = live[name](untimed, timed)
        except Exception as exc:
            if on_error is None:
                raise
            del live[name]
            on_error(name, exc)
            return
        taken[name].extend(ms)
        if on_turn is not None and timed:
            on_turn(name, timed)

    for name in list(live):
        if policy.warmup:
            call(name, policy.warmup, 0)
    while live:
        counts = [len(taken[n]) for n in live]
        if min(counts) >= cap or (min(counts) >= samples and (enough is None or enough(taken))):
            break
        for name in list(live):
            want = min(policy.calls_per_turn, cap - len(taken[name]))
            if want <= 0:
                continue
            if policy.settle_s > 0:
                sleep(policy.settle_s)
            call(name, policy.untimed_per_turn, want)
    return taken

