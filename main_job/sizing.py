"""The main job's sizing step: PR1's ``size_deployment`` on the benchmark's figures for the original and the
optimized model, at one latency objective and load, and the worker replicas the optimization saves.

Nothing is measured here: the figures are the benchmark stage's PR4 JSON report, and the batching is PR2's
settings (what the serve stage's worker runs with). Each model gets ``<output-dir>/sizing/<model>/`` with
``kustomization.yaml`` (``kubectl apply -k`` it) and ``sizing.md``; ``<output-dir>/sizing/sizing.json`` holds
every figure the report shows. The step is arithmetic, so it runs again on every job run that has the benchmark
(run or reused) and always matches the flags given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelops.cli import check_positive
from modelops.errors import UsageError
from modelops.results import write_results
from PR1_horizontal_pod_autoscaling.size_deployment import (
    Objective,
    Sizing,
    batching_settings,
    size_from_report,
    write_sizing,
)

logger = logging.getLogger(__name__)

SIZED = ("original", "optimized")
DEFAULT_P95_MS = 200.0
DEFAULT_HEADROOM = 0.25
BASE_FRACTION = 0.25  # the base load when --base-rps is not given, as a fraction of the peak


def add_sizing_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sizing (PR1 size_deployment on the benchmark's figures)")
    group.add_argument("--p95-ms", type=float, default=DEFAULT_P95_MS,
                       help=f"latency objective: p95 of a request (default: {DEFAULT_P95_MS:g})")
    group.add_argument("--peak-rps", type=float, default=None,
                       help="peak load in requests/s (default: what the original serves with one replica per "
                            "requests partition, its most replicas, rounded down to 3 significant figures)")
    group.add_argument("--base-rps", type=float, default=None,
                       help=f"base load in requests/s (default: {BASE_FRACTION:g} x the peak)")
    group.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                       help=f"fraction of each replica's throughput kept free (default: {DEFAULT_HEADROOM:g})")


@dataclass(frozen=True)
class SizingConfig:
    """The objective and load the worker is sized for, as the sizing flags give them.

    Args:
        p95_ms: latency objective, p95 of a request in ms (default: :data:`DEFAULT_P95_MS`).
        peak_rps: peak load in requests/s; None: inferred from the original (:func:`inferred_peak_rps`).
        base_rps: base load in requests/s; None: :data:`BASE_FRACTION` x the peak.
        headroom: fraction of each replica's throughput kept free (default: :data:`DEFAULT_HEADROOM`).
    """

    p95_ms: float = DEFAULT_P95_MS
    peak_rps: float | None = None
    base_rps: float | None = None
    headroom: float = DEFAULT_HEADROOM


def check_sizing_flags(config: SizingConfig) -> None:
    """UsageError, in the flags' names, for an objective or load out of range; the main job calls it before any
    stage runs."""
    check_positive("--p95-ms", config.p95_ms)
    check_positive("--peak-rps", config.peak_rps)
    check_positive("--base-rps", config.base_rps, allow_zero=True)
    if config.peak_rps is not None and config.base_rps is not None and config.base_rps > config.peak_rps:
        raise UsageError(f"--base-rps {config.base_rps:g} is above --peak-rps {config.peak_rps:g}")
    if not 0 <= config.headroom < 1:
        raise UsageError(f"--headroom must be in [0, 1), got {config.headroom:g}")


def _floor_3sf(value: float) -> float:
    digits = 2 - math.floor(math.log10(value))
    return math.floor(value * 10**digits) / 10**digits


def inferred_peak_rps(original: Sizing) -> float:
    """The load the original serves with one replica per partition (its most replicas), rounded down to 3
    significant figures. Taken a hair below the exact product first, so that floating-point error cannot
    make ceil(peak / per-replica throughput) one more than the partitions."""
    return _floor_3sf(original.samples_per_s * (1 - original.headroom) * original.partitions * (1 - 1e-9))


def _objective(config: SizingConfig, peak_rps: float) -> Objective:
    base = config.base_rps if config.base_rps is not None else round(peak_rps * BASE_FRACTION, 6)
    return Objective(p95_ms=config.p95_ms, peak_rps=peak_rps, base_rps=base, headroom=config.headroom)


def size_models(report_path: Path, variants: dict[str, str], config: SizingConfig, out_dir: Path) -> dict:
    """Size each of :data:`SIZED` (``variants`` maps it to its row in the PR4 report) at ``config``'s objective
    and load; write each overlay and sizing.md under ``out_dir/<model>/`` and the summary to
    ``out_dir/sizing.json``. A model that cannot meet the objective gets an ``error`` and no files."""
    report = json.loads(report_path.read_text())
    paths = {row["model"]: row.get("path", "") for row in report.get("models", [])}
    _, batch, delay, batching_source = batching_settings(paths.get(variants["original"], ""), None)
    sizing_args = {"source": str(report_path), "max_batch_size": batch, "max_batch_delay_ms": delay,
                   "batching_source": batching_source}

    def attempt(name: str, objective: Objective) -> Sizing | str:
        try:
            return size_from_report(report, variants[name], objective, **sizing_args)
        except UsageError as e:
            logger.warning("[sizing] %s (%s): %s", name, variants[name], e)
            return str(e)

    peak, peak_from, failed = config.peak_rps, "--peak-rps", {}
    if peak is None:
        # The original's throughput per replica does not depend on the load, so any load sizes it for this.
        first = attempt("original", _objective(config, 1.0))
        if isinstance(first, Sizing):
            peak = inferred_peak_rps(first)
        else:
            failed = {"original": first, "optimized": "no load to size for: the original could not be sized"}
        peak_from = "inferred (the original's throughput per replica x (1 - headroom) x the requests partitions)"
    models: dict[str, dict[str, Any]] = {}
    objective = _objective(config, peak) if peak is not None else None
    for name in SIZED:
        entry: dict[str, Any] = {"variant": variants[name]}
        shutil.rmtree(out_dir / name, ignore_errors=True)  # no overlay of an earlier run's flags stays behind
        result = attempt(name, objective) if objective else failed[name]
        if isinstance(result, Sizing):
            lines, (overlay, sizing_md) = write_sizing(result, out_dir / name)
            entry.update(sizing=asdict(result), overlay=str(overlay), sizing_md=str(sizing_md))
            logger.info("[sizing] %s (%s): %g samples/s per replica, %d-%d replicas, lag threshold %d; every "
                        "number and its formula in %s", name, variants[name], result.samples_per_s,
                        result.min_replicas, result.max_replicas, result.lag_threshold, sizing_md)
            logger.debug("[sizing] %s:\n  %s", name, "\n  ".join(lines))
        else:
            entry["error"] = result
        models[name] = entry
    summary = {"report": str(report_path),
               "objective": {**(asdict(objective) if objective else {}), "peak_rps_from": peak_from,
                             "base_rps_from": "--base-rps" if config.base_rps is not None
                             else f"{BASE_FRACTION:g} x the peak"},
               "models": models, "saving": saving(models)}
    write_results(out_dir / "sizing.json", summary, "json")
    return json.loads((out_dir / "sizing.json").read_text())


def saving(models: dict[str, dict]) -> dict | None:
    """The replicas the peak load needs with the original, with the optimized model, and the difference and
    ratio; None unless both were sized. Needed replicas, not maxReplicas: maxReplicas stops at the requests
    partitions, which would hide the saving of a load beyond them."""
    if not all("sizing" in models.get(name, {}) for name in SIZED):
        return None
    original, optimized = (models[name]["sizing"] for name in SIZED)
    return {"replicas_original": original["replicas_peak"], "replicas_optimized": optimized["replicas_peak"],
            "replicas_saved": original["replicas_peak"] - optimized["replicas_peak"],
            "replica_ratio_x": original["replicas_peak"] / optimized["replicas_peak"],
            "throughput_ratio_x": optimized["samples_per_s"] / original["samples_per_s"]}


def sizing_rows(summary: dict) -> list[dict]:
    """The report's table: one row per sized model, the saving on the optimized model's row."""
    rows = []
    for name, entry in summary["models"].items():
        row: dict[str, Any] = {"model": name, "variant": entry["variant"]}
        if "sizing" in entry:
            s = entry["sizing"]
            row.update(throughput_per_replica_rps=s["samples_per_s"], batch_size=s["batch_size"],
                       lag_threshold=s["lag_threshold"], min_replicas=s["min_replicas"],
                       max_replicas=s["max_replicas"], replicas_at_peak=s["replicas_peak"], cores=s["cpu"],
                       memory_request=f"{s['memory_mi']}Mi" if s["memory_mi"] else None)
        if name == "optimized" and summary.get("saving"):
            # replicas are whole, so their ratio is coarse at small counts; the throughput ratio is not
            row.update(replicas_saved=summary["saving"]["replicas_saved"],
                       replica_ratio_x=summary["saving"]["replica_ratio_x"],
                       throughput_ratio_x=summary["saving"]["throughput_ratio_x"])
        row["error"] = entry.get("error")
        rows.append(row)
    return rows


def saving_line(summary: dict) -> str:
    """One sentence: the objective and load, and what the optimized model saves (or why nothing was sized)."""
    o = summary["objective"]
    if not o.get("peak_rps"):
        return f"Sizing: not done ({summary['models']['original'].get('error')})"
    load = f"p95 {o['p95_ms']:g} ms at {o['base_rps']:.4g}-{o['peak_rps']:.4g} requests/s"
    s = summary.get("saving")
    if s is None:
        errors = "; ".join(f"{n}: {e['error']}" for n, e in summary["models"].items() if "error" in e)
        return f"Sizing ({load}): {errors}"
    variant = summary["models"]["optimized"]["variant"]
    return (f"Sizing ({load}): worker replicas at peak {s['replicas_original']} for the original, "
            f"{s['replicas_optimized']} for the optimized model ({variant}): {s['replicas_saved']} saved "
            f"(original / optimized {s['replica_ratio_x']:.3g}x).")
