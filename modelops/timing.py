"""Latency measurement: warm-up, repeated timed runs, percentiles, interleaved comparisons."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

PERCENTILES = (50, 90, 95, 99)


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """One call's wall time in milliseconds, device synchronised before each clock read."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def latency_stats(samples_ms: list[float] | np.ndarray, prefix: str = "latency_ms_") -> dict[str, float]:
    """mean, std, min, max and p50/p90/p95/p99 of ``samples_ms`` (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=float)
    if values.size == 0:
        raise ValueError("no latency samples")
    stats = {"mean": values.mean(), "std": values.std(ddof=1) if values.size > 1 else 0.0,
             "min": values.min(), "max": values.max()}
    stats.update({f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES})
    return {f"{prefix}{k}": round(float(v), 4) for k, v in stats.items()}


def measure_latency(
    fn: Callable[[torch.Tensor], object], batch: torch.Tensor, *, warmup: int = 5, iters: int = 30,
    device: torch.device | str | None = None,
) -> list[float]:
    """Warm up, then time ``iters`` calls of ``fn(batch)``; the list of per-call milliseconds."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(batch)
        return [time_call(lambda: fn(batch), device) for _ in range(iters)]


def interleaved_latency(
    fns: Mapping[str, Callable[[torch.Tensor], object]], batch: torch.Tensor, *, warmup: int = 3, rounds: int = 20,
    device: torch.device | str | None = None, calls_per_turn: int = 5, settle_s: float = 0.05,
) -> dict[str, list[float]]:
    """``rounds`` timed calls of every model, taken in interleaved turns (A A A B B B A A A B B B ...) so drift on
    a shared machine hits all alike.

    Each turn is a ``settle_s`` pause, one untimed call, then up to ``calls_per_turn`` timed calls back to
    back. Runtimes whose idle threads spin-wait (OpenMP's and ONNX Runtime's defaults) leave those threads
    burning the cores for milliseconds after a call returns; strict A B A B alternation then slows whichever
    model runs next (measured: an eager ResNet-50 at batch 1 took 46 ms after ONNX Runtime calls, 16.5 ms in
    turns and alone), so in turns each model is timed the way it runs alone, with its runtime's defaults.
    ``calls_per_turn=1, settle_s=0`` is plain A B A B.
    """
    if rounds < 1 or calls_per_turn < 1:
        raise ValueError("rounds and calls_per_turn must be >= 1")
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(batch)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        taken = 0
        while taken < rounds:
            turn = min(calls_per_turn, rounds - taken)
            for name, fn in fns.items():
                if settle_s > 0:
                    time.sleep(settle_s)
                if calls_per_turn > 1:
                    fn(batch)
                for _ in range(turn):
                    samples[name].append(time_call(lambda fn=fn: fn(batch), device))
            taken += turn
    return samples
