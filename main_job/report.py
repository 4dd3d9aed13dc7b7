"""The main job's report: one md, html and json file whose every figure is read from the stage summaries."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from modelops.cpu import cpu_info
from modelops.results import markdown_table, write_results


def report_sections(results: dict[str, dict]) -> dict[str, list[dict]]:
    """The report's tables, as rows, from the stage summaries (so report and JSON always agree)."""
    sections: dict[str, list[dict]] = {}
    if "baseline" in results:
        sections["Baseline models"] = [
            {"model": r.get("arch"), "path": r.get("model"), "test_accuracy": r.get("test_accuracy"),
             "size_mb": r.get("size_mb"), "params_m": r.get("params_m"), "train_s": r.get("train_s")}
            for key, r in results["baseline"].items() if isinstance(r, dict) and "arch" in r]
    if "optimize" in results and results["optimize"].get("rows"):
        # Every speed-up in the report is the benchmark's (one timing, one source); the pipeline's own
        # latency figures stay in its stage summary.
        sections["Optimization pipeline"] = [{k: v for k, v in row.items()
                                              if not k.startswith(("speedup", "latency_ms"))}
                                             for row in results["optimize"]["rows"]]
    if "benchmark" in results and results["benchmark"].get("summary"):
        sections["Benchmark"] = results["benchmark"]["summary"]
    if "serve" in results:
        sections["Async serving (end to end)"] = [{"model": name, **stats}
                                                  for name, stats in results["serve"].get("load", {}).items()]
    return sections


def headline_lines(results: dict[str, dict]) -> list[str]:
    """The benchmark report's headline (what was done, best variant, size, speed-ups, accuracy, CPU), if it ran."""
    bench_json = Path(results.get("benchmark", {}).get("reports", {}).get("json", "missing.json"))
    if not bench_json.exists():
        return []
    from PR4_model_benchmarking.reports import headline_lines as benchmark_headline

    return benchmark_headline(json.loads(bench_json.read_text()))


def write_report(out: Path, results: dict[str, dict]) -> dict:
    env = cpu_info()
    sections = report_sections(results)
    head = headline_lines(results)
    md = ["# Main job report", "", *head, "",
          f"Measured on {env['cpu_model']} ({env['usable_cores']} usable cores). Every figure below is read from "
          f"the stage summaries in `{out / 'stages'}`.", ""]
    html = ["<html><head><meta charset='utf-8'><title>Main job report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body><h1>Main job report</h1>",
            *[f"<p>{escape(line)}</p>" for line in head],
            f"<p>Measured on {env['cpu_model']} ({env['usable_cores']} usable cores).</p>"]
    import pandas as pd

    for title, rows in sections.items():
        md += [f"## {title}", "", markdown_table(rows), ""]
        html += [f"<h2>{title}</h2>", pd.DataFrame(rows).to_html(index=False, na_rep="")]
    links = {}
    bench = results.get("benchmark", {})
    for key in ("html", "markdown", "json", "csv"):
        if bench.get("reports", {}).get(key):
            links[f"benchmark {key}"] = bench["reports"][key]
    for profiled in results.get("flamegraph", {}).get("models", []):
        for kind in ("flamegraph", "trace"):
            if profiled.get(kind):
                links[f"{kind} of {Path(profiled['model']).name}"] = profiled[kind]
    if links:
        md += ["## Files", ""] + [f"- {k}: `{v}`" for k, v in links.items()] + [""]
        html += ["<h2>Files</h2><ul>"] + [f"<li>{k}: <a href='{Path(v).resolve().as_uri()}'>{v}</a></li>"
                                          for k, v in links.items()] + ["</ul>"]
    bench_json = Path(bench.get("reports", {}).get("json", out / "benchmark" / "missing.json"))
    if bench_json.exists():
        from PR4_model_benchmarking.reports import plots

        for name, png in plots(json.loads(bench_json.read_text())).items():
            html.append(f'<h3>{name}</h3><img alt="{name}" src="data:image/png;base64,{png}" style="max-width:100%">')
    html.append("</body></html>")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text("\n".join(html))
    write_results(out / "report.json", {"environment": env, "headline": results.get("benchmark", {}).get("headline"),
                                        "sections": sections}, "json")
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "report_json": str(out / "report.json"), "sections": list(sections)}
