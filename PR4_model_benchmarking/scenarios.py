"""Scenarios modelled on MLPerf LoadGen, plus the ratios and verdicts of a comparison.

- single-stream: one batch-1 query after another; the figure is the p90 latency.
- offline: all samples available at once; the figure is the best throughput over the batch sizes.
- server: queries arrive as a Poisson process at a target rate and wait in one FIFO queue for one
  server; a query's latency is its completion time minus its arrival time (queueing included).
  The figure is p99 at ``--target-qps`` and the highest rate that keeps p99 under the latency bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelops.timing import latency_stats, sync

SCENARIOS = ("single-stream", "offline", "server")
# A server trial needs enough queries for a p99 to mean something, but never runs unbounded.
MIN_SERVER_QUERIES = 20


def poisson_arrivals(qps: float, count: int, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from 0) of ``count`` queries of a Poisson process at ``qps`` queries per second.

    Inter-arrival gaps are exponential with mean ``1 / qps``, as in LoadGen's server scenario.
    """
    if qps <= 0 or not math.isfinite(qps):
        raise ValueError(f"qps must be a positive finite number, got {qps}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    gaps = np.random.default_rng(seed).exponential(1.0 / qps, size=count)
    return np.cumsum(gaps)


def queue_latencies(arrivals_s: Sequence[float], service_s: Sequence[float]) -> np.ndarray:
    """Latencies (seconds) of a single-server FIFO queue: completion_i = max(arrival_i, completion_{i-1}) + service_i.

    The same definition :func:`run_server_queries` measures in real time; useful to reason about a run.
    """
    completion, out = 0.0, []
    for arrival, service in zip(arrivals_s, service_s, strict=True):
        completion = max(arrival, completion) + service
        out.append(completion - arrival)
    return np.asarray(out)


def run_server_queries(fn: Callable[[], object], arrivals_s: np.ndarray, *, max_seconds: float,
                       device: str | None = None) -> dict[str, Any]:
    """Run ``fn`` once per arrival, in real time, one at a time; latency = completion - arrival.

    A query that arrives while the server is busy waits. Stops after ``max_seconds`` (the result
    says ``truncated``) so an overloaded trial never runs away.
    """
    latencies_ms: list[float] = []
    truncated = False
    start = time.perf_counter()
    for arrival in arrivals_s:
        now = time.perf_counter() - start
        if now > max_seconds:
            truncated = True
            break
        if now < arrival:
            time.sleep(arrival - now)
        fn()
        sync(device)
        done = time.perf_counter() - start
        latencies_ms.append((done - float(arrival)) * 1e3)
    return {"latencies_ms": latencies_ms, "completed": len(latencies_ms), "offered": len(arrivals_s),
            "elapsed_s": round(time.perf_counter() - start, 3), "truncated": truncated}


def server_trial_queries(qps: float, max_queries: int, max_seconds: float) -> int:
    """How many queries a trial at ``qps`` sends: ``max_queries``, fewer if they would take over ``max_seconds``."""
    return max(MIN_SERVER_QUERIES, min(max_queries, int(qps * max_seconds)))


def search_server_qps(
    serve: Callable[[np.ndarray], dict[str, Any]], *, target_qps: float, capacity_qps: float, bound_ms: float,
    steps: int, max_queries: int, max_seconds: float, seed: int = 0,
) -> dict[str, Any]:
    """p99 at ``target_qps``, then a bisection for the highest QPS whose p99 stays under ``bound_ms``.

    Args:
        serve: runs the queries at the given arrival times and returns :func:`run_server_queries`' dict.
        target_qps: the rate asked for (``--target-qps``).
        capacity_qps: the rate one server could sustain at best (1000 / mean batch-1 ms); the search's ceiling.
        bound_ms: the p99 latency bound.
        steps: bisection steps after the target trial (bounded work).
        max_queries: queries per trial at most; max_seconds: a trial sends at most ``qps * max_seconds``
            queries (so its arrivals span about ``max_seconds``); ``serve`` bounds the wall time.
    """
    trials: list[dict[str, Any]] = []

    def trial(qps: float) -> bool:
        arrivals = poisson_arrivals(qps, server_trial_queries(qps, max_queries, max_seconds), seed=seed + len(trials))
        result = serve(arrivals)
        lat = result["latencies_ms"]
        p99 = float(np.percentile(lat, 99)) if lat else math.inf
        ok = bool(lat) and not result["truncated"] and p99 <= bound_ms
        trials.append({"qps": round(qps, 3), "queries": result["completed"], "offered": result["offered"],
                       "latency_ms_p99": round(p99, 3), "truncated": result["truncated"], "meets_bound": ok,
                       "latencies_ms": [round(x, 4) for x in lat]})
        return ok

    target_ok = trial(target_qps)
    target = trials[0]
    if target_ok:
        lo, hi = target_qps, max(capacity_qps * 1.05, target_qps * 2)
    else:
        lo, hi = 0.0, target_qps
    for _ in range(steps):
        if hi - lo <= 0.05 * hi:
            break
        mid = (lo + hi) / 2
        if trial(mid):
            lo = mid
        else:
            hi = mid
    stats = latency_stats(target["latencies_ms"]) if target["latencies_ms"] else {}
    return {
        "server_target_qps": round(target_qps, 3),
        "server_latency_ms_p99": target["latency_ms_p99"] if target["latencies_ms"] else None,
        "server_latency_ms_p50": stats.get("latency_ms_p50"),
        "server_meets_bound": target_ok,
        "server_latency_bound_ms": round(bound_ms, 3),
        "server_max_qps": round(lo, 3) if lo > 0 else None,
        "trials": trials,
    }


# ---------------------------------------------------------------------- comparison


def offline_throughput(per_batch: Sequence[dict[str, Any]]) -> tuple[float | None, int | None]:
    """Best samples/s over the measured batch sizes and the batch size that gave it."""
    best = max(per_batch, key=lambda row: row.get("samples_per_s") or 0.0, default=None)
    if not best or not best.get("samples_per_s"):
        return None, None
    return best["samples_per_s"], best["batch_size"]


def verdicts(rows: Sequence[dict[str, Any]], *, speed_margin: float = 1.1, size_margin: float = 0.9,
             accuracy_tolerance_pt: float = 1.0) -> list[str]:
    """One word per model against the first: baseline, best, faster, smaller, same, slower, worse or failed.

    "worse" means it lost more than ``accuracy_tolerance_pt`` points of accuracy (or is slower and no
    smaller); "best" is the fastest model that is not worse, if it is at least ``speed_margin`` faster.
    """
    words: list[str] = []
    for i, row in enumerate(rows):
        if row.get("error"):
            words.append("failed")
            continue
        if i == 0:
            words.append("baseline")
            continue
        speedup, size_ratio = row.get("speedup_x"), row.get("size_ratio")
        delta = row.get("accuracy_delta_pt")
        if delta is not None and delta < -accuracy_tolerance_pt:
            words.append("worse")
        elif speedup is not None and speedup >= speed_margin:
            words.append("faster")
        elif size_ratio is not None and size_ratio <= size_margin:
            words.append("smaller")
        elif speedup is not None and speedup < 1 / speed_margin:
            words.append("slower" if size_ratio is None or size_ratio < 1 else "worse")
        else:
            words.append("same")
    candidates = [i for i, w in enumerate(words) if w == "faster"]
    if candidates:
        words[max(candidates, key=lambda i: rows[i]["speedup_x"])] = "best"
    return words
