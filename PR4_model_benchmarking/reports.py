"""Benchmark reports: Markdown (tabulate), HTML with embedded plots, CSV and JSON with every raw figure.

The report these functions take is :class:`~PR4_model_benchmarking.report_schema.BenchmarkReport` as a dict (the
benchmark builds it through that pydantic model), so other tools and tests read figures, not text.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelops.results import json_safe, speedup_key, write_results
from PR4_model_benchmarking.report_format import facts_html, fmt, html_page, html_table, markdown_table
from PR4_model_benchmarking.summary import HEADLINE_BATCHES

logger = logging.getLogger(__name__)

REPORT_FORMATS = ("markdown", "html", "csv", "json")
REPORT_FILES = {"markdown": "benchmark.md", "html": "benchmark.html", "csv": "benchmark.csv",
                "json": "benchmark.json"}
SAMPLES_CSV = "benchmark_samples.csv"

# The tables fit a screen: what a reader compares. Every other figure is in the CSV and JSON reports.
# Speed-up columns (speedup_b<N>_x, one per timed batch size) are added between latency and memory.
SUMMARY_COLUMNS = ("model", "transform", "backend", "size_mb", "top1_pct", "top1_change_pts",
                   "latency_ms_p50", "weights_mb", "model_rss_mb", "verdict", "error")
BATCH_COLUMNS = ("model", "batch_size", "iters", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                 "samples_per_s", "peak_rss_mb")
SCENARIO_COLUMNS = ("model", "single_stream_latency_ms_p90", "single_stream_result",
                    "multi_stream_early_stopping_ms_p99", "multi_stream_result", "offline_samples_per_s",
                    "offline_result", "server_latency_bound_ms", "server_highest_valid_qps",
                    "server_lowest_invalid_qps", "loadgen_top1_pct")
RUN_COLUMNS = ("model", "scenario", "target_qps", "figure", "query_count", "result", "invalid_reason", "summary_log")


def summary_columns(report: dict[str, Any]) -> tuple[str, ...]:
    """The summary's figures: :data:`SUMMARY_COLUMNS` with one speed-up column per timed batch size."""
    speedups = tuple(speedup_key(b) for b in report["config"].get("batch_sizes", []))
    cut = SUMMARY_COLUMNS.index("weights_mb")
    return SUMMARY_COLUMNS[:cut] + speedups + SUMMARY_COLUMNS[cut:]


def shown_summary_columns(report: dict[str, Any]) -> tuple[str, ...]:
    """The summary table as shown: :func:`summary_columns` less the weights (in the CSV and JSON)."""
    return tuple(c for c in summary_columns(report) if c != "weights_mb")


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "not timed"


def headline_lines(report: dict[str, Any]) -> list[str]:
    """The lines a reader acts on, every figure copied from the report's ``headline`` (itself from the tables)."""
    head = report.get("headline") or {}
    done = ", ".join(f"{name} ({what or 'not loaded'})" for name, what in (head.get("variants") or {}).items())
    done = done or "none"
    lines = [f"Compared {head.get('reference')} ({fmt(head.get('reference_size_mb'))} MB) with: {done}."]
    if head.get("best"):
        ratio = head.get("best_size_ratio")
        size = f"{fmt(head.get('best_size_mb'))} MB" + (f" ({fmt(ratio * 100)}% of the original)" if ratio else "")
        delta = head.get("best_top1_change_pts")
        accuracy = "accuracy not measured" if delta is None else f"accuracy {delta:+.2f} points"
        speeds = ", ".join(f"{_ratio(head.get(speedup_key(b)))} at batch {b}" for b in HEADLINE_BATCHES)
        lines.append(f"Best variant: {head['best']}, {size}, {speeds}, {accuracy} against the original.")
    else:
        lines.append("Best variant: none is faster than the original without losing accuracy.")
    lines.append(f"CPU: {head.get('cpu_model')} ({head.get('cpu_class')} int8 kernels), {head.get('threads')} "
                 f"threads; measured {report['created_at']}.")
    return lines


def environment_lines(report: dict[str, Any]) -> list[str]:
    """Where and how the run happened, one fact a line (the CPU's name is in the headline only)."""
    env, cfg = report["environment"], report["config"]
    features = ", ".join(f"{name} {'yes' if env.get(key) else 'no'}" for name, key in (
        ("AVX2", "has_avx2"), ("AVX-512", "has_avx512f"), ("AVX512-VNNI", "has_avx512_vnni"),
        ("AVX-VNNI", "has_avx_vnni"), ("AMX-INT8", "has_amx_int8")) if key in env)
    isolation = ("each model in its own process" if env.get("isolation") == "process"
                 else "all models in this process")
    lines = [f"CPU features: {features}; {env.get('usable_cores')} usable cores." if features else None,
             f"Threads: {env.get('threads')} per model, {isolation}, device {env.get('device')}.",
             f"Software: Python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
             f"MLPerf LoadGen {env.get('loadgen') or 'not used'}.",
             f"Load average: {env.get('load_average_start')} at the start, {env.get('load_average_end')} at the end.",
             f"OMP_WAIT_POLICY: {env.get('omp_wait_policy') or 'not set (each runtime default)'}.",
             f"Dataset: {cfg.get('dataset') or 'none (speed only)'}; seed {cfg.get('seed')}."]
    return [line for line in lines if line]


def _figure_text(scenario: str, fig: dict[str, Any]) -> str:
    """One LoadGen run's figure under the name its summary prints."""
    if scenario == "single-stream":
        estimate = fig.get("early_stopping_latency_ms_p90")
        return (f"90th percentile latency {fmt(fig.get('latency_ms_p90'))} ms"
                + (f" (early-stopping estimate {fmt(estimate)} ms)" if estimate else ""))
    if scenario == "multi-stream":
        estimate = fig.get("early_stopping_latency_ms_p99")
        return (f"99th percentile query latency {fmt(fig.get('query_latency_ms_p99'))} ms, "
                f"{fig.get('samples_per_query')} samples a query"
                + (f" (early-stopping estimate {fmt(estimate)} ms)" if estimate else ""))
    if scenario == "offline":
        return f"Samples per second {fmt(fig.get('samples_per_s'))}"
    return (f"Completed samples per second {fmt(fig.get('completed_qps'))}; 99th percentile latency "
            f"{fmt(fig.get('latency_ms_p99'))} ms (bound {fmt(fig.get('latency_bound_ms'))} ms)")


def loadgen_run_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per LoadGen run: model, scenario, rate asked, LoadGen's figure, queries, verdict, why, log."""
    rows: list[dict[str, Any]] = []
    for model, result in (report.get("loadgen") or {}).items():
        for scenario, run in result.get("runs", {}).items():
            fig = run["figures"]
            rows.append({"model": model, "scenario": scenario, "figure": _figure_text(scenario, fig),
                         "query_count": fig.get("query_count"), "result": fig.get("result"),
                         "invalid_reason": fig.get("invalid_reason"), "summary_log": run.get("summary_log")})
        for run in (result.get("server_search") or {}).get("runs", []):
            rows.append({"model": model, "scenario": "server", "target_qps": run.get("target_qps"),
                         "figure": _figure_text("server", run), "query_count": run.get("query_count"),
                         "result": run.get("result"), "invalid_reason": run.get("invalid_reason"),
                         "summary_log": run.get("summary_log")})
        if result.get("accuracy"):
            acc = result["accuracy"]
            rows.append({"model": model, "scenario": "offline, AccuracyOnly",
                         "figure": f"top-1 {fmt(acc.get('top1_pct'))}% of {acc.get('accuracy_samples')} samples",
                         "summary_log": acc.get("summary_log")})
    return rows


def server_lines(report: dict[str, Any]) -> list[str]:
    """Each model's server range in words, with its bound and how many runs it took."""
    lines = []
    for model, result in (report.get("loadgen") or {}).items():
        search = result.get("server_search")
        if search:
            lines.append(f"Server, {model} (99th percentile bound {fmt(search.get('latency_bound_ms'))} ms, "
                         f"{len(search['runs'])} LoadGen runs): {search.get('range')}.")
    return lines


def _relative(path: str | None, base: str | None) -> str | None:
    if not path or not base:
        return path
    return os.path.relpath(path, base)


def _runs_for_page(report: dict[str, Any]) -> list[dict[str, Any]]:
    base = report["config"].get("output_dir")
    return [{**row, "summary_log": _relative(row.get("summary_log"), base)} for row in loadgen_run_rows(report)]


def to_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    parts = ["# Model benchmark", "", *headline_lines(report), ""]
    if report.get("interrupted"):
        parts += ["**Interrupted: partial results.**", ""]
    parts += [f"## Summary (latency at batch {cfg.get('primary_batch_size')}; ratios against "
              f"`{report['models'][0]['model'] if report['models'] else '-'}` at the same batch size)", "",
              markdown_table(report["models"], shown_summary_columns(report)), ""]
    if report["per_batch"]:
        parts += ["## Latency and throughput per batch size", "", markdown_table(report["per_batch"], BATCH_COLUMNS),
                  ""]
    scenario_table = markdown_table(report["models"], SCENARIO_COLUMNS)
    if report.get("loadgen") and scenario_table:
        parts += ["## MLPerf scenarios (run by MLPerf LoadGen)", "", scenario_table, "", *server_lines(report), "",
                  "### LoadGen runs", "", markdown_table(_runs_for_page(report), RUN_COLUMNS), ""]
    parts += ["## Where it ran", "", *[f"- {line}" for line in environment_lines(report)], ""]
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
            acc = m.get("top1_pct")
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
    images = plots(report)
    titles = {"latency_distribution": "Latency distribution", "throughput": "Throughput vs batch size",
              "tradeoff": "Size / speed / accuracy trade-off"}
    body = ["<h1>Model benchmark</h1>", facts_html(headline_lines(report))]
    if report.get("interrupted"):
        body.append("<p><b>Interrupted: partial results.</b></p>")
    cfg = report["config"]
    reference = report["models"][0]["model"] if report["models"] else "-"
    body += [f"<h2>Summary</h2><p>Latency at batch {cfg.get('primary_batch_size')}; ratios against "
             f"{html.escape(reference)} at the same batch size.</p>",
             html_table(report["models"], shown_summary_columns(report))]
    body += ["<h2>Latency and throughput per batch size</h2>", html_table(report["per_batch"], BATCH_COLUMNS)]
    scenario_table = html_table(report["models"], SCENARIO_COLUMNS)
    if report.get("loadgen") and scenario_table:
        runs = html_table(_runs_for_page(report), RUN_COLUMNS, links={"summary_log": "summary"})
        body += ["<h2>MLPerf scenarios (run by MLPerf LoadGen)</h2>", scenario_table,
                 facts_html(server_lines(report)), "<h3>LoadGen runs</h3>", runs]
    for key, data in images.items():
        body.append(f'<h2>{titles[key]}</h2><img alt="{titles[key]}" src="data:image/png;base64,{data}"/>')
    body += ["<h2>Where it ran</h2>", facts_html(environment_lines(report))]
    if report.get("notes"):
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"]) + "</ul>"]
    return html_page("Model benchmark", body)


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
    for kind in formats:
        path = output_dir / REPORT_FILES[kind]
        try:
            if kind == "markdown":
                path.write_text(to_markdown(report))
            elif kind == "html":
                path.write_text(to_html(report))
            elif kind == "json":
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
            logger.error("could not write the %s report: %s", kind, exc)
            continue
        paths[kind] = str(path)
    return paths
