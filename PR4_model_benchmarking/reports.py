"""Benchmark reports: Markdown (tabulate), HTML with embedded plots, CSV and JSON with every raw figure.

The JSON report follows :class:`BenchmarkReport` (a pydantic model; ``report_json_schema()`` gives
its JSON Schema), so other tools and tests read figures, not text.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from modelops.results import json_safe, markdown_table, write_results
from PR4_model_benchmarking.summary import HEADLINE_BATCHES, speedup_key

logger = logging.getLogger(__name__)

REPORT_FORMATS = ("markdown", "html", "csv", "json")
REPORT_FILES = {"markdown": "benchmark.md", "html": "benchmark.html", "csv": "benchmark.csv",
                "json": "benchmark.json"}
SAMPLES_CSV = "benchmark_samples.csv"

# The tables fit a screen: what a reader compares. Every other figure is in the CSV and JSON reports.
# Speed-up columns (speedup_b<N>_x, one per timed batch size) are added between latency and memory.
SUMMARY_COLUMNS = ("model", "transform", "backend", "size_mb", "accuracy_pct", "accuracy_delta_pt",
                   "latency_ms_p50", "weights_mb", "model_rss_mb", "verdict", "error")
BATCH_COLUMNS = ("model", "batch_size", "iters", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                 "samples_per_s", "peak_rss_mb")
SCENARIO_COLUMNS = ("model", "single_stream_latency_ms_p90", "offline_samples_per_s", "offline_batch_size",
                    "server_target_qps", "server_latency_ms_p99", "server_meets_bound", "server_max_qps")


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
    accuracy_pct: float | None = None
    top1_agreement_pct: float | None = None
    latency_ms_p50: float | None = None
    speedup_x: float | None = None
    size_ratio: float | None = None
    weights_mb: float | None = None
    model_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    verdict: str
    error: str | None = None


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
    server: dict[str, Any]
    notes: list[str]


def report_json_schema() -> dict[str, Any]:
    return BenchmarkReport.model_json_schema()


def _select(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    present = [c for c in columns if any(row.get(c) is not None for row in rows)]
    return [{c: ("" if row.get(c) is None else row.get(c)) for c in present} for row in rows]


def _env_rows(environment: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in environment.items()]


def summary_columns(report: dict[str, Any]) -> tuple[str, ...]:
    """The summary table's columns: :data:`SUMMARY_COLUMNS` with one speed-up column per timed batch size."""
    speedups = tuple(speedup_key(b) for b in report["config"].get("batch_sizes", []))
    cut = SUMMARY_COLUMNS.index("weights_mb")
    return SUMMARY_COLUMNS[:cut] + speedups + SUMMARY_COLUMNS[cut:]


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "not timed"


def headline_lines(report: dict[str, Any]) -> list[str]:
    """The lines a reader acts on, every figure copied from the report's ``headline`` (itself from the tables)."""
    head, env = report.get("headline") or {}, report["environment"]
    done = ", ".join(f"{name} ({what})" for name, what in (head.get("variants") or {}).items()) or "none"
    lines = [f"Compared {head.get('reference')} ({head.get('reference_size_mb')} MB) with: {done}."]
    if head.get("best"):
        ratio = head.get("best_size_ratio")
        size = f"{head.get('best_size_mb')} MB" + (f" ({ratio * 100:.1f}% of the original)" if ratio else "")
        delta = head.get("best_accuracy_delta_pt")
        accuracy = "accuracy not measured" if delta is None else f"accuracy {delta:+.2f} points"
        speeds = ", ".join(f"{_ratio(head.get(speedup_key(b)))} at batch {b}" for b in HEADLINE_BATCHES)
        lines.append(f"Best variant: {head['best']}, {size}, {speeds}, {accuracy} against the original.")
    else:
        lines.append("Best variant: none is faster than the original without losing accuracy.")
    lines.append(f"CPU: {head.get('cpu_model')} ({head.get('cpu_class')} int8 kernels), {head.get('threads')} "
                 f"threads; measured {report['created_at']} with torch {env.get('torch')}, onnxruntime "
                 f"{env.get('onnxruntime')}, load average at start {env.get('load_average_start')}.")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    parts = ["# Model benchmark", "", *headline_lines(report), ""]
    if report.get("interrupted"):
        parts += ["**Interrupted: partial results.**", ""]
    parts += [f"## Summary (latency at batch {cfg.get('primary_batch_size')}; ratios against "
              f"`{report['models'][0]['model'] if report['models'] else '-'}` at the same batch size)", "",
              markdown_table(_select(report["models"], summary_columns(report))), ""]
    if report["per_batch"]:
        parts += ["## Latency and throughput per batch size", "",
                  markdown_table(_select(report["per_batch"], BATCH_COLUMNS)), ""]
    scen = _select(report["models"], SCENARIO_COLUMNS)
    if scen and len(scen[0]) > 1:
        parts += ["## Scenarios (MLPerf LoadGen style)", "", markdown_table(scen), ""]
    parts += ["## Environment", "", markdown_table(_env_rows(report["environment"])), ""]
    if report.get("notes"):
        parts += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: latency distributions, throughput vs batch size, size/speed/accuracy trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    samples = report["samples_ms"]
    batch_sizes = sorted({int(b) for per in samples.values() for b in per})
    if samples and batch_sizes:
        fig, axes = plt.subplots(1, len(batch_sizes), figsize=(4.2 * len(batch_sizes), 3.4), squeeze=False)
        for ax, b in zip(axes[0], batch_sizes, strict=True):
            names = [n for n in samples if samples[n].get(str(b))]
            if names:
                ax.boxplot([samples[n][str(b)] for n in names], showfliers=True)
                ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
            ax.set_title(f"batch {b}")
            ax.set_ylabel("latency (ms)")
        fig.suptitle("Latency distribution per model")
        out["latency_distribution"] = _png(fig)
    if report["per_batch"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name in dict.fromkeys(r["model"] for r in report["per_batch"]):
            rows = [r for r in report["per_batch"] if r["model"] == name]
            ax.plot([r["batch_size"] for r in rows], [r["samples_per_s"] for r in rows], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s")
        ax.set_title("Throughput vs batch size")
        ax.legend()
        out["throughput"] = _png(fig)
    ok = [m for m in report["models"] if not m.get("error") and m.get("latency_ms_p50")]
    if ok:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m in ok:
            size = m.get("size_mb") or 1.0
            acc = m.get("accuracy_pct")
            y = acc if acc is not None else 0.0
            ax.scatter([m["latency_ms_p50"]], [y], s=max(20.0, 8 * size ** 0.8), alpha=0.6)
            ax.annotate(f"{m['model']} ({size:.1f} MB)", (m["latency_ms_p50"], y), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(f"p50 latency (ms, batch {report['config'].get('primary_batch_size')})")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Trade-off: speed vs accuracy (marker area ~ size on disk)")
        out["tradeoff"] = _png(fig)
    return out


def to_html(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    def table(rows: list[dict[str, Any]]) -> str:
        return tabulate(rows, headers="keys", tablefmt="html", floatfmt=".4g") if rows else ""

    images = plots(report)
    titles = {"latency_distribution": "Latency distribution", "throughput": "Throughput vs batch size",
              "tradeoff": "Size / speed / accuracy trade-off"}
    body = ["<h1>Model benchmark</h1>", "".join(f"<p>{html.escape(line)}</p>" for line in headline_lines(report))]
    if report.get("interrupted"):
        body.append("<p><b>Interrupted: partial results.</b></p>")
    body += ["<h2>Summary</h2>", table(_select(report["models"], summary_columns(report)))]
    body += ["<h2>Latency and throughput per batch size</h2>", table(_select(report["per_batch"], BATCH_COLUMNS))]
    body += ["<h2>Scenarios</h2>", table(_select(report["models"], SCENARIO_COLUMNS))]
    for key, data in images.items():
        body.append(f'<h2>{titles[key]}</h2><img alt="{key}" src="data:image/png;base64,{data}"/>')
    body += ["<h2>Environment</h2>", table(_env_rows(report["environment"]))]
    if report.get("notes"):
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>")
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px} img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Model benchmark</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and batch size, with the model's summary figures beside the batch's."""
    rows: list[dict[str, Any]] = []
    for summary in report["models"]:
        flat = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
        batches = [r for r in report["per_batch"] if r["model"] == summary["model"]]
        for batch in batches or [{}]:
            rows.append({**flat, **{f"b_{k}" if k in flat and k != "model" else k: v for k, v in batch.items()}})
    return rows


def write_reports(report: dict[str, Any], output_dir: str | Path, formats: Sequence[str]) -> dict[str, str]:
    """Write the report in each format; return {format: path}. A failing writer does not stop the others."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for fmt in formats:
        path = output_dir / REPORT_FILES[fmt]
        try:
            if fmt == "markdown":
                path.write_text(to_markdown(report))
            elif fmt == "html":
                path.write_text(to_html(report))
            elif fmt == "json":
                path.write_text(json.dumps(json_safe(report), indent=1, default=str) + "\n")
            else:
                write_results(path, csv_rows(report), fmt="csv")
                samples = [{"model": name, "batch_size": int(b), "iteration": i, "latency_ms": ms}
                           for name, per in report["samples_ms"].items() for b, values in per.items()
                           for i, ms in enumerate(values)]
                if samples:
                    write_results(output_dir / SAMPLES_CSV, samples, fmt="csv")
                    paths["csv_samples"] = str(output_dir / SAMPLES_CSV)
        except Exception as exc:  # one broken writer must not lose the other reports
            logger.error("could not write the %s report: %s", fmt, exc)
            continue
        paths[fmt] = str(path)
    return paths
