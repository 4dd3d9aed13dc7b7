"""``--backend auto``: quantize with every backend available here, measure them on this host, keep the fastest.

Each candidate is one backend's default configuration. The artifact file of every candidate that built and
the fp32 eager model's file are each loaded only in their own process, the way the shared loader serves them
(PT2E compiled by inductor, OpenVINO compiled for the CPU), and timed side by side in the project's
interleaved turns at every measured batch size (:func:`modelops.model_process.time_artifacts`); the one
with the best speed-up (geometric mean over those batch sizes) among those within the accuracy budget wins. A
backend that is not installed or fails is a row with an ``error`` and the next one wins. The CPU outlook
(:mod:`modelops.cpu`) is only a hint printed before the measurement; the measurement decides.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelops.cpu import ISA_FLAGS, cpu_info
from modelops.load_options import LoadOptions
from modelops.model_process import ProcessTimes, time_artifacts
from modelops.results import markdown_table
from PR3_model_optimization.quantization.backends import REGISTRY
from PR3_model_optimization.quantization.config import QuantConfig

AUTO = "auto"
# Accuracy budget of ``auto`` per method when --max-accuracy-drop is not given (points of top-1 on the val split):
# bf16 keeps fp32's exponent range and should cost next to nothing.
AUTO_DEFAULT_MAX_DROP = {"static": 1.0, "bf16": 0.1}
# speedup_geomean_x: the geometric mean over the timed batch sizes of fp32 eager's median over the candidate's.
CANDIDATE_COLUMNS = ("backend", "method", "val_top1_pct", "top1_drop_pts", "meets_budget", "cold_start_s",
                     "speedup_geomean_x", "size_mb", "chosen", "error")
# (label -> artifact file, batch sizes, timed calls per model, options=LoadOptions) -> what each model measured.
Timer = Callable[..., ProcessTimes]
FP32 = "fp32"


def auto_candidates(base: QuantConfig, backends: Sequence[str]) -> list[QuantConfig]:
    """One configuration per backend: the user's settings where the backend takes them."""
    return [REGISTRY[backend].config_from(base) for backend in backends]


@dataclass
class Candidate:
    """One backend's artifact (or why there is none) and what it measured."""

    config: QuantConfig
    artifact: Path | None = None
    row: dict = field(default_factory=dict)
    error: str = ""
    latency_ms: dict[int, float] = field(default_factory=dict)
    cold_start_s: float | None = None

    @property
    def name(self) -> str:
        return f"{self.config.backend}-{self.config.method}"


def time_candidates(fp32: Path, candidates: Sequence[Candidate], batch_sizes: Sequence[int], rounds: int, *,
                    options: LoadOptions | None = None, timer: Timer = time_artifacts) -> dict[int, float]:
    """Median latency of every built candidate (into ``latency_ms``) and of fp32 eager (returned) per batch size.

    ``fp32`` is the fp32 eager model's artifact file. A candidate that fails to load or run gets an ``error``
    and drops out; its cold start (load and first call) goes into ``cold_start_s``.
    """
    live = [c for c in candidates if not c.error]
    times = timer({FP32: fp32, **{c.name: c.artifact for c in live}}, list(batch_sizes), rounds,
                  options=options or LoadOptions())
    if FP32 in times.errors:
        raise RuntimeError(f"the fp32 reference could not be timed: {times.errors[FP32]}")
    for candidate in live:
        error = times.errors.get(candidate.name)
        if candidate.name in times.infos:
            candidate.cold_start_s = times.infos[candidate.name].get("cold_start_s")
        if error:  # a runtime that cannot load or run its own artifact here loses, the others go on
            stage = "timing" if candidate.name in times.infos else "load"
            candidate.error = f"{stage} failed: {error.splitlines()[0][:200]}"
    fp32_ms: dict[int, float] = {}
    for batch_size in batch_sizes:
        medians = times.median_ms(batch_size)
        fp32_ms[batch_size] = medians[FP32]
        for candidate in live:
            if not candidate.error and candidate.name in medians:
                candidate.latency_ms[batch_size] = medians[candidate.name]
    return fp32_ms


def speedup_geomean(candidate: Candidate, fp32_ms: Mapping[int, float]) -> float:
    """Geometric mean over the measured batch sizes of fp32 eager latency / candidate latency."""
    ratios = [fp32_ms[b] / ms for b, ms in candidate.latency_ms.items() if ms > 0]
    return statistics.geometric_mean(ratios) if ratios else 0.0


def choose(candidates: Sequence[Candidate], fp32_ms: Mapping[int, float], budget: float,
           ) -> tuple[Candidate | None, str]:
    """The fastest candidate within ``budget`` points of accuracy drop, and a sentence saying why."""
    measured = [c for c in candidates if not c.error and c.latency_ms]
    within = [c for c in measured if c.row["top1_drop_pts"] <= budget]
    skipped = [f"{c.name} ({c.error})" for c in candidates if c.error]
    skipped += [f"{c.name} (drop {c.row['top1_drop_pts']:.2f} > {budget:.2f})" for c in measured if c not in within]
    note = f"; not chosen: {', '.join(skipped)}" if skipped else ""
    if not within:
        if not measured:
            return None, "no candidate could be measured" + note
        best = max(measured, key=lambda c: c.row["val_top1_pct"])
        return best, f"no candidate within {budget:.2f} points: kept the most accurate, {best.name}" + note
    ranked = sorted(within, key=lambda c: speedup_geomean(c, fp32_ms), reverse=True)
    best = ranked[0]
    sizes = ", ".join(f"b{b} {ms:.2f} ms" for b, ms in sorted(best.latency_ms.items()))
    reason = (f"{best.name} is the fastest within {budget:.2f} points ({speedup_geomean(best, fp32_ms):.2f}x over "
              f"fp32 eager, geometric mean over batch sizes; {sizes}; drop {best.row['top1_drop_pts']:.2f})")
    if len(ranked) > 1:
        reason += f"; runner-up {ranked[1].name} {speedup_geomean(ranked[1], fp32_ms):.2f}x"
    return best, reason + note


def candidate_rows(candidates: Sequence[Candidate], fp32_ms: Mapping[int, float], chosen: Candidate | None,
                   ) -> list[dict]:
    """One flat row per candidate for the table, the trials file and the manifest."""
    rows = []
    for c in candidates:
        row = {"backend": c.config.backend, "method": c.config.method, "config": c.config.label,
               "val_top1_pct": c.row.get("val_top1_pct", ""), "top1_drop_pts": c.row.get("top1_drop_pts", ""),
               "meets_budget": c.row.get("meets_budget", False) and not c.error, "cold_start_s": c.cold_start_s,
               "speedup_geomean_x": round(speedup_geomean(c, fp32_ms), 3) if c.latency_ms else "",
               "size_mb": c.row.get("size_mb", ""), "chosen": c is chosen, "error": c.error}
        for batch_size in fp32_ms:
            row[f"latency_ms_p50_b{batch_size}"] = round(c.latency_ms[batch_size], 3) if batch_size in c.latency_ms \
                else ""
        rows.append(row)
    return rows


def candidate_table(rows: Sequence[dict], fp32_ms: Mapping[int, float]) -> str:
    """The candidates as a Markdown table, fp32 eager's latencies in the header line."""
    columns = [*CANDIDATE_COLUMNS[:6], *(f"latency_ms_p50_b{b}" for b in fp32_ms), *CANDIDATE_COLUMNS[6:]]
    fp32 = ", ".join(f"b{b} {ms:.2f} ms" for b, ms in fp32_ms.items())
    return f"fp32 eager: {fp32}\n" + markdown_table([{k: r.get(k, "") for k in columns} for r in rows])


def selection_record(rows: Sequence[dict], fp32_ms: Mapping[int, float], chosen: Candidate | None, reason: str,
                     budget: float) -> dict:
    """What the manifest records about the choice: candidates, latencies, the CPU and its ISA flags, why."""
    info = cpu_info()
    return {
        "chosen": chosen.name if chosen else None, "reason": reason, "max_accuracy_drop": budget,
        "batch_sizes": list(fp32_ms), "latency_ms_p50_fp32": {str(b): round(ms, 3) for b, ms in fp32_ms.items()},
        "candidates": list(rows), "cpu_model": info["cpu_model"],
        "isa_flags": [flag for flag in ISA_FLAGS if info.get(f"has_{flag}")],
    }


def unavailable_candidates(configs: Sequence[QuantConfig]) -> tuple[list[QuantConfig], list[Candidate]]:
    """Split configurations into those whose backend runs here and candidates that say why one cannot."""
    runnable, skipped = [], []
    for config in configs:
        reason = REGISTRY[config.backend].unavailable_reason()
        if reason:
            skipped.append(Candidate(config, error=f"unavailable: {reason}"))
        else:
            runnable.append(config)
    return runnable, skipped


def best_per_backend(built: Sequence[tuple[dict, Path, QuantConfig]], budget: float) -> list[Candidate]:
    """Each backend's best trial: the fastest within ``budget`` by its own check, else its most accurate."""
    by_backend: dict[str, list[tuple[dict, Path, QuantConfig]]] = {}
    for trial in built:
        by_backend.setdefault(trial[2].backend, []).append(trial)
    best = []
    for trials in by_backend.values():
        within = [t for t in trials if t[0]["top1_drop_pts"] <= budget]
        row, artifact, config = (max(within, key=lambda t: t[0]["speedup_x"]) if within
                                 else max(trials, key=lambda t: t[0]["val_top1_pct"]))
        best.append(Candidate(config, artifact=artifact, row=row))
    return best


@dataclass
class Selection:
    """The outcome of ``auto``: the winner (or None), why, every candidate's row and the manifest's record."""

    chosen: Candidate | None
    reason: str
    rows: list[dict]
    record: dict
    table: str


def select(fp32: Path, built: Sequence[tuple[dict, Path, QuantConfig]], failed: Sequence[Candidate], budget: float,
           batch_sizes: Sequence[int], rounds: int, *, options: LoadOptions | None = None,
           timer: Timer = time_artifacts,
           ) -> Selection:
    """Time each backend's best trial against fp32 eager at every batch size and choose (see :func:`choose`).

    Args:
        fp32: the fp32 eager model's artifact file (the reference every speed-up is over).
        built: (trial row, artifact, config) of every trial that built and measured.
        failed: candidates that could not run (not installed, failed to build), with their error.
        budget: accuracy budget in points.
        batch_sizes: the batch sizes timed (all of them weigh in the choice).
        rounds: timed calls per model and batch size.
        options: how each file is loaded for timing (its ``threads``: intra-op threads for the runtimes that
            take them) (default: ``LoadOptions()``).
        timer: the timing function, :func:`modelops.model_process.time_artifacts` (tests inject their own).
    """
    candidates = [*best_per_backend(built, budget), *failed]
    fp32_ms = time_candidates(fp32, candidates, list(dict.fromkeys(batch_sizes)), rounds, options=options,
                              timer=timer)
    chosen, reason = choose(candidates, fp32_ms, budget)
    rows = candidate_rows(candidates, fp32_ms, chosen)
    return Selection(chosen, reason, rows, selection_record(rows, fp32_ms, chosen, reason, budget),
                     candidate_table(rows, fp32_ms))
