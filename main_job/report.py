"""The main job's report: one md, html and json file whose every figure is read from the stage summaries.

The JSON keeps every figure of every section; the Markdown and HTML show the columns in :data:`SHOWN` under
people-facing names (PR4's :mod:`~PR4_model_benchmarking.report_format`), so the page reads as a document and
fits its window.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from main_job.sizing import saving_line, sizing_rows
from modelops.cpu import cpu_info
from modelops.results import write_results
from PR4_model_benchmarking.report_format import facts_html, html_page, html_table, markdown_table
from PR4_model_benchmarking.reports import headline_lines, plots

SIZING = "Worker sizing"
# The columns each section shows, in order; the rest are in report.json.
SHOWN = {
    "Baseline models": ("model", "top1_pct", "size_mb", "params_m", "train_s"),
    "Optimization pipeline": ("model", "description", "size_mb", "size_pct_of_original", "params_m"),
    "Benchmark": ("model", "transform", "size_mb", "top1_pct", "top1_change_pts", "speedup_b1_x",
                  "speedup_b16_x", "single_stream_latency_ms_p90", "single_stream_result", "offline_samples_per_s",
                  "offline_result", "verdict", "error"),
    "Async serving (end to end)": ("model", "requests_sent", "succeeded", "failed", "throughput_rps",
                                   "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "batch_size_mean"),
    SIZING: ("model", "variant", "throughput_per_replica_rps", "batch_size", "lag_threshold", "min_replicas",
             "max_replicas", "replicas_at_peak", "cores", "memory_request", "replicas_saved", "replica_ratio_x",
             "throughput_ratio_x", "error"),
}
PLOT_TITLES = {"latency_distribution": "Latency distribution", "throughput": "Throughput vs batch size",
               "tradeoff": "Size / speed / accuracy trade-off"}


def report_sections(results: dict[str, dict]) -> dict[str, list[dict]]:
    """The report's tables, as rows, from the stage summaries (so report and JSON always agree)."""
    sections: dict[str, list[dict]] = {}
    if "baseline" in results:
        sections["Baseline models"] = [
            {"model": r.get("arch"), "path": r.get("model"), "top1_pct": r.get("test_accuracy"),
             "size_mb": r.get("size_mb"), "params_m": r.get("params_m"), "train_s": r.get("train_s")}
            for key, r in results["baseline"].items() if isinstance(r, dict) and "arch" in r]
    if "optimize" in results and results["optimize"].get("rows"):
        # What each stage built. Every accuracy and speed figure in the report is the benchmark's (one
        # measurement, one source): the job runs the pipeline with --no-measure, and a stage summary kept from a
        # run that measured keeps its own figures to itself.
        sections["Optimization pipeline"] = [{k: v for k, v in row.items()
                                              if not k.startswith(("top1", "speedup", "latency_ms"))}
                                             for row in results["optimize"]["rows"]]
    if "benchmark" in results and results["benchmark"].get("summary"):
        sections["Benchmark"] = results["benchmark"]["summary"]
    if "serve" in results:
        sections["Async serving (end to end)"] = [{"model": name, **stats}
                                                  for name, stats in results["serve"].get("load", {}).items()]
    if "sizing" in results:
        sections[SIZING] = sizing_rows(results["sizing"])
    return sections


def section_notes(results: dict[str, dict]) -> dict[str, list[str]]:
    """Lines shown under a section's heading, above its table."""
    notes = {}
    if "sizing" in results:
        o = results["sizing"]["objective"]
        notes[SIZING] = [saving_line(results["sizing"]),
                         f"PR1's size_deployment on the benchmark report's figures, headroom {o['headroom']:g} "
                         f"(peak load: {o['peak_rps_from']}; base load: {o['base_rps_from']}); each model's "
                         "sizing.md shows every number, its measurement and its formula."
                         if "headroom" in o else "PR1's size_deployment on the benchmark report's figures."]
    return notes


def _benchmark_report(results: dict[str, dict]) -> dict | None:
    bench_json = Path(results.get("benchmark", {}).get("reports", {}).get("json", "missing.json"))
    return json.loads(bench_json.read_text()) if bench_json.exists() else None


def _links(out: Path, results: dict[str, dict]) -> dict[str, str]:
    links = {}
    for key in ("html", "markdown", "json", "csv"):
        if results.get("benchmark", {}).get("reports", {}).get(key):
            links[f"Benchmark report ({key})"] = results["benchmark"]["reports"][key]
    for profiled in results.get("flamegraph", {}).get("models", []):
        for kind in ("flamegraph", "trace"):
            if profiled.get(kind):
                links[f"{kind.capitalize()} of {Path(profiled['model']).name}"] = profiled[kind]
    for name, entry in results.get("sizing", {}).get("models", {}).items():
        for key, what in (("sizing_md", "Worker sizing"), ("overlay", "Kustomize overlay")):
            if entry.get(key):
                links[f"{what} for the {name} model"] = entry[key]
    return links


def write_report(out: Path, results: dict[str, dict]) -> dict:
    env = cpu_info()
    sections = report_sections(results)
    bench = _benchmark_report(results)
    # The benchmark report's headline (what was done, best variant, size, speed-ups, top-1 change, CPU) when it
    # ran, else the CPU alone: the CPU is named once.
    head = headline_lines(bench) if bench is not None else [
        f"CPU: {env['cpu_model']} ({env['usable_cores']} usable cores)."]
    source = f"Every figure is read from the stage summaries in {out / 'stages'}" + (
        f" and the sizing in {out / 'sizing' / 'sizing.json'}." if "sizing" in results else ".")
    notes = section_notes(results)
    md = ["# Main job report", "", *head, "", source, ""]
    html = ["<h1>Main job report</h1>", facts_html([*head, source])]
    for title, rows in sections.items():
        columns = SHOWN.get(title) or tuple(dict.fromkeys(k for row in rows for k in row))
        md += [f"## {title}", "", *(line for note in notes.get(title, []) for line in (note, "")),
               markdown_table(rows, columns), ""]
        html += [f"<h2>{escape(title)}</h2>", facts_html(notes.get(title, [])), html_table(rows, columns)]
    links = _links(out, results)
    if links:
        md += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in links.items()] + [""]
        html += ["<h2>Files</h2><ul>"] + [f"<li><a href='{escape(Path(v).resolve().as_uri(), quote=True)}'>"
                                          f"{escape(k)}</a></li>" for k, v in links.items()] + ["</ul>"]
    if bench is not None:
        for name, png in plots(bench).items():
            title = PLOT_TITLES.get(name, name)
            html.append(f'<h2>{escape(title)}</h2><img alt="{escape(title)}" src="data:image/png;base64,{png}">')
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(html_page("Main job report", html))
    write_results(out / "report.json", {"environment": env, "headline": results.get("benchmark", {}).get("headline"),
                                        "sections": sections, "sizing": results.get("sizing")}, "json")
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "report_json": str(out / "report.json"), "sections": list(sections)}
