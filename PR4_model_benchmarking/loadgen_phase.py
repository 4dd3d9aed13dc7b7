"""The benchmark's scenario phase: every chosen MLPerf scenario run by LoadGen on one model after another.

:class:`ScenarioPlan` holds what the flags asked for; :func:`run_model_scenarios` runs one model's scenarios
through its session (LoadGen runs inside the model's own process, :meth:`BenchSession.loadgen`) and
:func:`scenario_fields` turns the result into the summary row's fields. Each run's LoadGen logs stay in
``<output-dir>/loadgen/<model>/<scenario>/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PR4_model_benchmarking.scenarios import (
    bracket_text,
    default_min_query_count,
    effective_settings,
    run_figures,
    run_seconds,
    search_server_rate,
)

logger = logging.getLogger(__name__)

LOADGEN_MODES = ("performance", "accuracy", "both")
# LoadGen generates a run's queries up front from the speed it is told to expect (expected latency or rate x
# minimum duration); a model faster than that runs out of queries before the minimum duration and the run is
# INVALID. Runs expect this much more speed than the latency phase timed (other work on the cores slows the
# timed calls at times), which makes them at most this much longer than the minimum.
EXPECTED_MARGIN = 1.5


@dataclass(frozen=True)
class ScenarioPlan:
    """What the scenario phase runs.

    Args:
        scenarios: the scenarios, in run order.
        mode: ``performance`` (PerformanceOnly runs), ``accuracy`` (one AccuracyOnly run, offline, every
            sample once, scored from LoadGen's accuracy log) or ``both``.
        out_dir: LoadGen's logs go under ``out_dir/loadgen``.
        samples: the query sample library (:meth:`BenchSession.sample_library`'s spec) of performance runs.
        accuracy_samples: the library of the accuracy run (None: no dataset, no accuracy run).
        min_duration_ms, min_query_count, max_duration_ms: LoadGen's run length (None: LoadGen's default;
            ``min_query_count`` None also means :func:`default_min_query_count` per scenario).
        offline_batch_size: samples per predictor call in offline (None: each model's best timed batch size).
        multi_stream_samples: samples per multi-stream query (None: LoadGen's 8).
        server_qps: the first server rate tried; server_bound_ms: the 99th percentile latency bound.
        search_runs, search_seconds: the server search's bounds (runs; no run starts after this many seconds).
    """

    scenarios: tuple[str, ...]
    mode: str
    out_dir: Path
    samples: dict[str, Any]
    accuracy_samples: dict[str, Any] | None = None
    min_duration_ms: int | None = None
    min_query_count: int | None = None
    max_duration_ms: int | None = None
    offline_batch_size: int | None = None
    multi_stream_samples: int | None = None
    server_qps: float | None = None
    server_bound_ms: float | None = None
    search_runs: int = 5
    search_seconds: float = 300.0

    def length(self, scenario: str) -> dict[str, Any]:
        """The run-length settings of one scenario's runs."""
        count = self.min_query_count if self.min_query_count is not None else default_min_query_count(scenario)
        return {"min_duration_ms": self.min_duration_ms, "min_query_count": count,
                "max_duration_ms": self.max_duration_ms}


@dataclass(frozen=True)
class ModelSpeed:
    """What the latency phase measured for one model, to size its LoadGen runs.

    Args:
        batch1_mean_ms: mean batch-1 latency (sizes single-stream; 1000 / it is one server's ceiling rate).
        best_samples_per_s: best timed throughput (offline's expected rate) and the batch size that gave it.
        mean_ms: mean latency per timed batch size (sizes multi-stream).
    """

    batch1_mean_ms: float | None
    best_samples_per_s: float | None
    best_batch_size: int | None
    mean_ms: dict[int, float] = field(default_factory=dict)


def _faster(latency_ms: float | None) -> float | None:
    return latency_ms / EXPECTED_MARGIN if latency_ms else None


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def _run(session: Any, settings: dict[str, Any], log_dir: Path, samples: dict[str, Any], max_batch: int,
         ) -> dict[str, Any]:
    result = session.loadgen({k: v for k, v in settings.items() if v is not None}, str(log_dir), samples,
                             max_batch)
    detail = result["detail"]
    return {"figures": run_figures(settings["scenario"], detail), "settings": effective_settings(detail),
            "max_batch": max_batch, "summary_log": result["summary_log"], "detail_log": result["detail_log"],
            "loadgen_errors": result["errors"], "loadgen_warnings": result["warnings"],
            **({"accuracy": result["accuracy"]} if "accuracy" in result else {})}


def run_model_scenarios(session: Any, name: str, plan: ScenarioPlan, speed: ModelSpeed,
                        on_run: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every scenario of ``plan`` on one model; ``{"runs": {scenario: run}, "server_search": ..., "accuracy": ...}``.

    A failing run raises (:class:`~modelops.model_process.WorkerError`); the caller drops the model.
    """
    root = plan.out_dir / "loadgen" / safe_name(name)
    out: dict[str, Any] = {"runs": {}}
    told = on_run or (lambda _what: None)
    if plan.mode in ("performance", "both"):
        for scenario in plan.scenarios:
            told(f"{name}: {scenario}")
            base = {"scenario": scenario, **plan.length(scenario), "performance_sample_count": plan.samples["count"]}
            if scenario == "single-stream":
                out["runs"][scenario] = _run(session, {**base, "single_stream_expected_latency_ms":
                                                       _faster(speed.batch1_mean_ms)}, root / scenario, plan.samples, 1)
            elif scenario == "offline":
                batch = plan.offline_batch_size or speed.best_batch_size or 1
                expected = EXPECTED_MARGIN * speed.best_samples_per_s if speed.best_samples_per_s else None
                out["runs"][scenario] = _run(session, {**base, "offline_expected_qps": expected},
                                             root / scenario, plan.samples, batch)
            elif scenario == "multi-stream":
                per_query = plan.multi_stream_samples or 8
                expected = speed.mean_ms.get(per_query) or (speed.batch1_mean_ms or 0) * per_query or None
                out["runs"][scenario] = _run(session, {**base, "multi_stream_samples_per_query": per_query,
                                                       "multi_stream_expected_latency_ms": _faster(expected)},
                                             root / scenario, plan.samples, per_query)
            else:
                out["server_search"] = _server_search(session, name, plan, speed, base, root / scenario, told)
    if plan.mode in ("accuracy", "both") and plan.accuracy_samples:
        told(f"{name}: accuracy")
        batch = plan.offline_batch_size or speed.best_batch_size or 1
        run = _run(session, {"scenario": "offline", "mode": "accuracy"}, root / "accuracy-offline",
                   plan.accuracy_samples, batch)
        out["accuracy"] = {**run["accuracy"], "summary_log": run["summary_log"], "detail_log": run["detail_log"]}
    return out


def _server_search(session: Any, name: str, plan: ScenarioPlan, speed: ModelSpeed, base: dict[str, Any],
                   folder: Path, told: Callable[[str], None]) -> dict[str, Any]:
    ceiling = 1e3 / speed.batch1_mean_ms if speed.batch1_mean_ms else plan.server_qps or 1.0
    start = plan.server_qps or 0.5 * ceiling
    logs: dict[float, dict[str, Any]] = {}

    def one(qps: float) -> dict[str, Any]:
        told(f"{name}: server at {qps:.3g} queries/s")
        run = _run(session, {**base, "server_target_qps": qps, "server_target_latency_ms": plan.server_bound_ms},
                   folder / f"qps_{qps:.4g}", plan.samples, 1)
        logs[round(qps, 3)] = run
        logger.info("%s: server at %.3g queries/s: %s", name, qps, run["figures"]["result"])
        return {**run["figures"], "summary_log": run["summary_log"], "detail_log": run["detail_log"],
                "settings": run["settings"]}

    length = plan.length("server")
    search = search_server_rate(one, start_qps=start, ceiling_qps=ceiling, max_runs=plan.search_runs,
                                max_seconds=plan.search_seconds,
                                expected_seconds=lambda qps: run_seconds(qps, length["min_duration_ms"],
                                                                         length["min_query_count"]))
    search.update(latency_bound_ms=plan.server_bound_ms, ceiling_qps=round(ceiling, 3), start_qps=round(start, 3),
                  range=bracket_text(search))
    return search


def scenario_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The summary row's scenario fields from one model's :func:`run_model_scenarios` result."""
    row: dict[str, Any] = {}
    runs = result.get("runs", {})
    if "single-stream" in runs:
        fig = runs["single-stream"]["figures"]
        row.update(single_stream_latency_ms_p90=fig["latency_ms_p90"],
                   single_stream_early_stopping_ms_p90=fig["early_stopping_latency_ms_p90"],
                   single_stream_result=fig["result"])
    if "multi-stream" in runs:
        fig = runs["multi-stream"]["figures"]
        row.update(multi_stream_latency_ms_p99=fig["query_latency_ms_p99"],
                   multi_stream_early_stopping_ms_p99=fig["early_stopping_latency_ms_p99"],
                   multi_stream_samples_per_query=fig["samples_per_query"], multi_stream_result=fig["result"])
    if "offline" in runs:
        fig = runs["offline"]["figures"]
        row.update(offline_samples_per_s=fig["samples_per_s"], offline_batch_size=runs["offline"]["max_batch"],
                   offline_result=fig["result"])
    search = result.get("server_search")
    if search:
        first = search["runs"][0] if search["runs"] else {}
        row.update(server_latency_bound_ms=search["latency_bound_ms"], server_target_qps=first.get("target_qps"),
                   server_latency_ms_p99=first.get("latency_ms_p99"), server_result=first.get("result"),
                   server_highest_valid_qps=search["highest_valid_qps"],
                   server_lowest_invalid_qps=search["lowest_invalid_qps"], server_range=search["range"],
                   server_runs=len(search["runs"]))
    if result.get("accuracy"):
        row["loadgen_top1_pct"] = result["accuracy"]["top1_pct"]
    return row
