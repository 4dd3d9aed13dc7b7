"""How reports show figures to people: names with units, three significant figures, tables that fit the page.

The JSON and CSV reports keep every figure under its key (``latency_ms_p50``); the Markdown and HTML reports
show a chosen few columns through :func:`label` and :func:`fmt`, so a reader sees "p50 latency (ms)" and
"13.1", not ``latency_ms_p50`` and 13.0904. PR4's report and the main job's use the same helpers and style.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Names of the keys reports show; anything else goes through label()'s rules.
LABELS = {
    "model": "Model", "transform": "What was done", "backend": "Runtime", "format": "Format", "arch": "Architecture",
    "path": "File", "size_mb": "Size (MB)", "size_pct_of_original": "Size (% of original)",
    "params_m": "Parameters (millions)", "macs_m": "MACs (millions)",
    "top1_pct": "Top-1 (%)", "top1_change_pts": "Top-1 change (points)",
    "top1_agreement_pct": "Agrees with the first model (%)", "loadgen_top1_pct": "LoadGen top-1 (%)",
    "latency_ms_p50": "p50 latency (ms)", "latency_ms_p90": "p90 latency (ms)", "latency_ms_p95": "p95 latency (ms)",
    "latency_ms_p99": "p99 latency (ms)", "latency_ms_mean": "Mean latency (ms)",
    "speedup_x": "Speed-up", "weights_mb": "Weights (MB)", "model_rss_mb": "Memory rise (MB)",
    "peak_rss_mb": "Peak memory (MB)", "load_rss_mb": "Memory after loading (MB)", "verdict": "Verdict",
    "error": "Error", "batch_size": "Batch size", "iters": "Calls timed", "samples_per_s": "Samples/s",
    "description": "Description", "train_s": "Training time (s)", "wall_s": "Wall time (s)",
    "requests_sent": "Requests", "succeeded": "Succeeded", "failed": "Failed", "concurrency": "Clients",
    "throughput_rps": "Requests/s", "batch_size_mean": "Mean batch size",
    # MLPerf scenarios, after the names LoadGen's summary prints
    "single_stream_latency_ms_p90": "Single-stream: 90th percentile latency (ms)",
    "single_stream_early_stopping_ms_p90": "Single-stream: early-stopping 90th percentile (ms)",
    "single_stream_result": "Single-stream: result",
    "multi_stream_latency_ms_p99": "Multi-stream: 99th percentile query latency (ms)",
    "multi_stream_early_stopping_ms_p99": "Multi-stream: early-stopping 99th percentile (ms)",
    "multi_stream_result": "Multi-stream: result",
    "offline_samples_per_s": "Offline: samples per second", "offline_batch_size": "Offline: batch size",
    "offline_result": "Offline: result",
    "server_highest_valid_qps": "Server: highest VALID rate (queries/s)",
    "server_lowest_invalid_qps": "Server: lowest INVALID rate (queries/s)",
    "server_latency_bound_ms": "Server: 99th percentile bound (ms)",
    "scenario": "Scenario", "target_qps": "Rate asked (queries/s)", "figure": "LoadGen's figure",
    "query_count": "Queries", "result": "Result", "invalid_reason": "Why INVALID", "summary_log": "Log",
}
# Unit words at the end of a key, and how a label writes them.
_UNITS = {"ms": "ms", "s": "s", "mb": "MB", "pct": "%", "pt": "points", "pts": "points", "x": "x", "rps": "requests/s",
          "qps": "queries/s", "m": "millions"}


def label(key: str) -> str:
    """A people-facing name with its unit: :data:`LABELS`, ``speedup_b16_x`` -> "Speed-up, batch 16", else the
    key's words with a trailing unit word moved into brackets (``hop_ms_api_intake_p50`` ->
    "Hop api intake p50 (ms)")."""
    if key in LABELS:
        return LABELS[key]
    if match := re.fullmatch(r"speedup_b(\d+)_x", key):
        return f"Speed-up, batch {match[1]}"
    words = key.split("_")
    units = [w for w in words if w in _UNITS]
    unit = units[-1] if units else None
    if unit is not None:
        words.remove(unit)
    text = " ".join(words).strip().capitalize() or key
    return f"{text} ({_UNITS[unit]})" if unit else text


def fmt(value: Any) -> str:
    """A cell as people read it: three significant figures (13.0904 -> "13.1", 1234.5 -> "1230"), integers
    as they are, True/False as yes/no, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if abs(value) >= 1000:
            return str(int(round(value, 2 - math.floor(math.log10(abs(value))))))
        return f"{value:.3g}"
    return str(value)


def present_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """``columns`` that at least one row has a value for, in order."""
    return [c for c in columns if any(row.get(c) not in (None, "") for row in rows)]


def display_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows keyed by label, every cell formatted; columns no row fills are left out."""
    shown = present_columns(rows, columns)
    return [{label(c): fmt(row.get(c)) for c in shown} for row in rows]


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    from tabulate import tabulate

    table = display_rows(rows, columns)
    return tabulate(table, headers="keys", tablefmt="github", disable_numparse=True) if table else ""


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               links: Mapping[str, str] | None = None) -> str:
    """An HTML table of ``columns`` (labels as headers, formatted cells, numbers right-aligned); a column named
    in ``links`` holds a path shown as a link with that text."""
    shown = present_columns(rows, columns)
    if not shown:
        return ""
    head = "".join(f"<th>{html.escape(label(c))}</th>" for c in shown)
    body = []
    for row in rows:
        cells = []
        for c in shown:
            value = row.get(c)
            if links and c in links and value:
                cells.append(f"<td><a href='{html.escape(str(value), quote=True)}'>{html.escape(links[c])}</a></td>")
                continue
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            text = fmt(value)
            if numeric:
                cells.append(f"<td class='num'>{text}</td>")
            else:  # a long unbroken string (a path, an error) may break anywhere rather than widen the page
                cells.append(f"<td{LONG if len(text) > LONG_TEXT else ''}>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# Cells longer than this may break inside a word.
LONG_TEXT = 24
LONG = " class='long'"
# One column of text, tables that wrap their cells instead of widening the page, images scaled to fit.
PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1150px;margin:1.5em auto;padding:0 1em;line-height:1.45;"
    "color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.2em;max-width:100%}"
    "th,td{border:1px solid #ccc;padding:4px 8px;font-size:14px;vertical-align:top}"
    "td.long{overflow-wrap:anywhere}"
    "th{background:#f3f3f3;text-align:left;font-weight:600}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "img{max-width:100%;height:auto}"
    "p.fact{margin:0.2em 0}"
    "code{overflow-wrap:anywhere}"
)


def html_page(title: str, body: Sequence[str]) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def facts_html(lines: Sequence[str]) -> str:
    """One paragraph per fact."""
    return "".join(f"<p class='fact'>{html.escape(line)}</p>" for line in lines)
