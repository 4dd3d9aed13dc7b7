"""The benchmark report's shape: pydantic models the benchmark builds its report through, so a bad row fails where
it is made; ``report_json_schema()`` gives the JSON report's JSON Schema.

Keys carry their units and follow the project's result vocabulary: each model's row is a
:class:`modelops.results.ResultRow` (``top1_pct``, ``top1_change_pts``, ``speedup_b<N>_x``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from modelops.results import ResultRow


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


class ModelSummary(ResultRow):
    """One model's row: what it is, how fast, how big, how accurate, and against the first model. The shared
    columns (``model``, ``format``, ``size_mb``, ``top1_pct``, ... and the ``speedup_b<N>_x`` check) are
    :class:`~modelops.results.ResultRow`'s."""

    path: str
    backend: str | None = None
    macs_m: float | None = None
    top1_agreement_pct: float | None = None
    latency_ms_p50: float | None = None
    size_ratio: float | None = None
    weights_mb: float | None = None
    model_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    verdict: str
    error: str | None = None

    # The report's column order, which the JSON and CSV reports keep: pydantic would list the inherited fields
    # first. Keys not named here follow in the dump's order (arch, then the extras as the row gave them).
    COLUMNS: ClassVar[tuple[str, ...]] = (
        "model", "path", "format", "backend", "size_mb", "params_m", "macs_m", "top1_pct", "top1_change_pts",
        "top1_agreement_pct", "latency_ms_p50", "size_ratio", "weights_mb", "model_rss_mb", "peak_rss_mb",
        "verdict", "error",
    )

    @model_serializer(mode="wrap")
    def _in_column_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {key: data[key] for key in self.COLUMNS if key in data} | data


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
