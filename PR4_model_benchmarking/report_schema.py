"""The benchmark report's shape: pydantic models the benchmark builds its report through, so a bad row fails where
it is made; ``report_json_schema()`` gives the JSON report's JSON Schema.

Keys carry their units and follow the project's result vocabulary (:mod:`modelops.results`): ``top1_pct``,
``top1_change_pts``, ``speedup_b<N>_x``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

SPEEDUP = re.compile(r"speedup_b\d+_x")


class BatchStats(BaseModel):
    """Latency and throughput of one model at one batch size."""

    model_config = ConfigDict(extra="allow")
    model: str
    batch_size: int
    iters: int
    latency_ms_mean: float
    latency_ms_std: float
    latency_ms_min: float
    latency_ms_max: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p95: float
    latency_ms_p99: float
    samples_per_s: float


class ModelSummary(BaseModel):
    """One model's row: what it is, how fast, how big, how accurate, and against the first model."""

    model_config = ConfigDict(extra="allow")
    model: str
    path: str
    format: str | None = None
    backend: str | None = None
    size_mb: float | None = None
    params_m: float | None = None
    macs_m: float | None = None
    top1_pct: float | None = None
    top1_change_pts: float | None = None
    top1_agreement_pct: float | None = None
    latency_ms_p50: float | None = None
    size_ratio: float | None = None
    weights_mb: float | None = None
    model_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    verdict: str
    error: str | None = None

    @model_validator(mode="after")
    def _speedups_are_ratios(self) -> ModelSummary:
        """The per-batch speed-ups (``speedup_b<N>_x``, one per timed batch size) are extra keys: check them too."""
        for key, value in (self.model_extra or {}).items():
            if SPEEDUP.fullmatch(key) and value is not None and not isinstance(value, int | float):
                raise ValueError(f"{key} must be a ratio or null, got {value!r}")
        return self


class BenchmarkReport(BaseModel):
    """The whole run: where, with which settings, the per-model rows and every raw sample."""

    model_config = ConfigDict(extra="allow")
    tool: str
    created_at: str
    interrupted: bool
    environment: dict[str, Any]
    headline: dict[str, Any] = {}
    config: dict[str, Any]
    models: list[ModelSummary]
    per_batch: list[BatchStats]
    samples_ms: dict[str, dict[str, list[float]]]
    loadgen: dict[str, Any] = {}
    notes: list[str]


def report_json_schema() -> dict[str, Any]:
    return BenchmarkReport.model_json_schema()
