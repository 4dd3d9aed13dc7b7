"""The MLPerf Inference scenarios, run by MLPerf LoadGen: what each asks of LoadGen and the figures it gives.

- single-stream: one sample per query, the next issued when the last completes; MLPerf's figure is LoadGen's
  early-stopping estimate of the 90th percentile latency (``early_stopping_latency_ss``).
- multi-stream: queries of ``samples_per_query`` samples (LoadGen: 8) back to back; the figure is the
  early-stopping estimate of the 99th percentile query latency (``early_stopping_latency_ms``).
- offline: every sample in one query; the figure is ``result_samples_per_second``.
- server: one-sample queries with Poisson arrivals at ``server_target_qps``; a run is VALID only if LoadGen is
  99% confident that the 99th percentile latency is under the bound; the figure is
  ``result_completed_samples_per_sec`` of a VALID run. :func:`search_server_rate` brackets the highest rate
  that stays VALID with LoadGen runs.

These are the keys MLPerf's submission checker reads (v5.0 and later). LoadGen takes percentiles as order
statistics of the run's latencies; the project's own timing (``modelops.timing``) interpolates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

SCENARIOS = ("single-stream", "multi-stream", "offline", "server")
DEFAULT_SCENARIOS = ("single-stream", "offline", "server")
# The detail-log key of each scenario's published figure, as MLPerf's submission checker reads it.
RESULT_KEYS = {"single-stream": "early_stopping_latency_ss", "multi-stream": "early_stopping_latency_ms",
               "offline": "result_samples_per_second", "server": "result_completed_samples_per_sec"}
# Queries LoadGen's early stopping needs before it can estimate a 99th percentile at all (its log says "would
# need to process at least 662 total queries"); the 90th percentile of single-stream needs 64, under LoadGen's
# default minimum of 100 queries.
P99_EARLY_STOPPING_QUERIES = 662
P99_SCENARIOS = ("multi-stream", "server")
# LoadGen's own run length (TestSettings' defaults), which applies where the user sets none.
LOADGEN_MIN_DURATION_MS = 10_000
LOADGEN_MIN_QUERY_COUNT = 100
# A search stops bisecting when the bracket is this narrow, relative to its lower end.
SEARCH_PRECISION = 0.05


def _ms(ns: Any) -> float | None:
    return round(float(ns) / 1e6, 4) if isinstance(ns, int | float) and ns > 0 else None


def run_figures(scenario: str, detail: Mapping[str, Any]) -> dict[str, Any]:
    """One LoadGen run's figures, from its detail log (LoadGen's keys), with the project's units in the names."""
    out: dict[str, Any] = {
        "result": detail.get("result_validity"), "query_count": detail.get("result_query_count"),
        "min_duration_met": detail.get("result_min_duration_met"),
        "min_queries_met": detail.get("result_min_queries_met"), "early_stopping_met": detail.get("early_stopping_met"),
    }
    if scenario == "single-stream":
        out.update(latency_ms_p90=_ms(detail.get("result_90.00_percentile_latency_ns")),
                   early_stopping_latency_ms_p90=_ms(detail.get("early_stopping_latency_ss")),
                   qps=detail.get("result_qps_with_loadgen_overhead"))
    elif scenario == "multi-stream":
        out.update(query_latency_ms_p99=_ms(detail.get("result_99.00_percentile_per_query_latency_ns")),
                   early_stopping_latency_ms_p99=_ms(detail.get("early_stopping_latency_ms")),
                   samples_per_query=detail.get("effective_samples_per_query"))
    elif scenario == "offline":
        out.update(samples_per_s=detail.get("result_samples_per_second"))
    else:
        out.update(target_qps=detail.get("effective_target_qps"),
                   latency_bound_ms=_ms(detail.get("effective_target_latency_ns")),
                   latency_ms_p99=_ms(detail.get("result_99.00_percentile_latency_ns")),
                   completed_qps=detail.get("result_completed_samples_per_sec"),
                   scheduled_qps=detail.get("result_scheduled_samples_per_sec"),
                   perf_constraints_met=detail.get("result_perf_constraints_met"),
                   overlatency_queries=detail.get("result_overlatency_query_count"))
    out["early_stopping"] = " ".join(str(detail.get("early_stopping_result") or "").split())
    out["invalid_reason"] = invalid_reason(scenario, detail)
    return out


def invalid_reason(scenario: str, detail: Mapping[str, Any]) -> str | None:
    """Why LoadGen called a run INVALID, in words (None for a VALID run)."""
    if detail.get("result_validity") == "VALID":
        return None
    reasons = []
    if detail.get("result_min_duration_met") is False:
        reasons.append("minimum duration not met")
    if detail.get("result_min_queries_met") is False:
        reasons.append("minimum query count not met")
    if scenario == "server" and detail.get("result_perf_constraints_met") is False:
        reasons.append("99th percentile latency over the bound")
    if detail.get("early_stopping_met") is False:
        reasons.append("early stopping not satisfied")
    extra = str(detail.get("result_invalid_reason") or "").strip()
    if extra:
        reasons.append(extra)
    return "; ".join(reasons) or "LoadGen gave no reason"


def effective_settings(detail: Mapping[str, Any]) -> dict[str, Any]:
    """The settings LoadGen ran with, as its detail log states them (``effective_*`` keys, prefix dropped)."""
    keep = ("scenario", "test_mode", "min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count",
            "target_qps", "target_latency_ns", "target_latency_percentile", "samples_per_query",
            "performance_sample_count", "sample_index_rng_seed", "schedule_rng_seed")
    out = {key: detail.get(f"effective_{key}") for key in keep if f"effective_{key}" in detail}
    out["loadgen_version"] = detail.get("loadgen_version")
    return out


def default_min_query_count(scenario: str) -> int | None:
    """The minimum query count a run asks for when the user gives none: LoadGen's own (None) except in the
    99th-percentile scenarios, where it is what early stopping needs to estimate that percentile at all."""
    return P99_EARLY_STOPPING_QUERIES if scenario in P99_SCENARIOS else None


# ---------------------------------------------------------------------- server search


def run_seconds(qps: float, min_duration_ms: int | None, min_query_count: int | None) -> float:
    """How long a server run at ``qps`` lasts at least: LoadGen issues queries until both the minimum duration
    and the minimum query count are reached (None: LoadGen's defaults)."""
    duration_s = (LOADGEN_MIN_DURATION_MS if min_duration_ms is None else min_duration_ms) / 1e3
    return max(duration_s, (LOADGEN_MIN_QUERY_COUNT if min_query_count is None else min_query_count) / qps)


def search_server_rate(run: Callable[[float], Mapping[str, Any]], *, start_qps: float, ceiling_qps: float,
                       max_runs: int, max_seconds: float, clock: Callable[[], float] = time.monotonic,
                       expected_seconds: Callable[[float], float] = lambda qps: 0.0) -> dict[str, Any]:
    """Bracket the highest server rate LoadGen calls VALID, with at most ``max_runs`` runs.

    The first run is at ``start_qps``. Until a VALID and an INVALID rate are both known the search steps: up to
    ``ceiling_qps`` (what one server at batch 1 can sustain at best) and doubling beyond it after a VALID run,
    halving after an INVALID one; then it bisects between the highest VALID and the lowest INVALID rate until
    they are within :data:`SEARCH_PRECISION`. After the first run, no run starts that would end (by
    ``expected_seconds``, e.g. :func:`run_seconds`) after ``max_seconds``.

    Args:
        run: one LoadGen server run at a rate; returns :func:`run_figures`' dict (``result`` is LoadGen's verdict).
        expected_seconds: how long a run at a rate lasts at least (default: no estimate).

    Returns the runs in order and the bracket: ``highest_valid_qps`` and ``lowest_invalid_qps`` (each None when no
    run gave that verdict; every rate tried after the first lies between them, so the highest VALID is always
    below the lowest INVALID); ``stopped`` says why the search ended.
    """
    if start_qps <= 0 or not math.isfinite(start_qps):
        raise ValueError(f"start_qps must be a positive finite rate, got {start_qps}")
    started = clock()
    runs: list[dict[str, Any]] = []
    qps, stopped = start_qps, "run limit"
    while len(runs) < max_runs:
        if runs and clock() - started + expected_seconds(qps) > max_seconds:
            stopped = "time limit"
            break
        runs.append({**run(qps), "target_qps": round(qps, 3)})
        valid = [r["target_qps"] for r in runs if r.get("result") == "VALID"]
        invalid = [r["target_qps"] for r in runs if r.get("result") != "VALID"]
        high, low = max(valid, default=None), min(invalid, default=None)
        if high is not None and low is not None:
            if low - high <= SEARCH_PRECISION * high:
                stopped = "bracket narrow enough"
                break
            qps = (high + low) / 2
        elif high is not None:
            qps = ceiling_qps if high < ceiling_qps * (1 - SEARCH_PRECISION) else 2 * high
        else:
            qps = low / 2
    valid = [r["target_qps"] for r in runs if r.get("result") == "VALID"]
    invalid = [r["target_qps"] for r in runs if r.get("result") != "VALID"]
    best = max((r for r in runs if r.get("result") == "VALID"), key=lambda r: r["target_qps"], default=None)
    high, low = max(valid, default=None), min(invalid, default=None)
    return {"highest_valid_qps": high, "lowest_invalid_qps": low,
            "highest_valid_completed_qps": best.get("completed_qps") if best else None, "stopped": stopped,
            "elapsed_s": round(clock() - started, 1), "runs": runs}


def bracket_text(search: Mapping[str, Any]) -> str:
    """The server range in words: what was measured, never more."""
    high, low = search.get("highest_valid_qps"), search.get("lowest_invalid_qps")
    if high is None and low is None:
        return "not run"
    if high is None:
        return f"no VALID rate: INVALID down to {low:.3g} queries/s"
    if low is None:
        return f"VALID up to {high:.3g} queries/s; no INVALID rate tried"
    return f"VALID at {high:.3g}, INVALID at {low:.3g} queries/s"
