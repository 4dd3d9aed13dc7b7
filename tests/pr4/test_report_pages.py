"""The HTML reports read as documents: rendered in headless Chromium at 1400 px they are no wider than the
window, their headers are names with units (no raw keys), numbers have three significant figures and the CPU is
named once. Both PR4's report and the main job's, filled with the longest content a real run writes."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from main_job.report import write_report
from PR4_model_benchmarking.loadgen_phase import scenario_fields
from PR4_model_benchmarking.report_format import fmt, label
from PR4_model_benchmarking.reports import to_html
from PR4_model_benchmarking.scenarios import bracket_text, run_figures, search_server_rate
from PR4_model_benchmarking.summary import add_comparisons, headline, model_row, per_batch_rows
from tests.pr4.page_width import page_width

CPU = "AMD EPYC (family 25, model 1)"
ENV = {"cpu_model": CPU, "usable_cores": 2, "has_avx2": True, "has_avx512f": False, "has_avx512_vnni": False,
       "threads": 2, "device": "cpu", "isolation": "process", "python": "3.11.7", "torch": "2.13.0+cu130",
       "onnxruntime": "1.32.0", "loadgen": "6.0.17", "load_average_start": 1.93, "load_average_end": 2.07}
VARIANTS = {  # name: (what was done, size MB, batch-1 ms, batch-16 ms, top-1 %)
    "original": ("baseline", 94.4290, 13.0904, 220.118, 97.7778),
    "pruned": ("pruning", 23.8193, 6.1234, 83.1904, 97.2222),
    "distilled": ("distillation", 44.8048, 5.9876, 61.0987, 98.3333),
    "quantized": ("quantization", 23.8672, 2.1234, 30.9876, 97.5),
    "combined": ("pruning + distillation + quantization", 6.2238, 1.0123, 16.4567, 97.2222),
}
LONG_PATH = "/home/someone/projects/scaling-infrastructure/runs/main_job/benchmark/loadgen/combined/server/qps_412.5"


def _loadgen(name: str, ms: float) -> dict:
    def detail(validity: str, **figures) -> dict:
        return {"result_validity": validity, "result_query_count": 662, "result_min_duration_met": True,
                "result_min_queries_met": True, "early_stopping_met": validity == "VALID", **figures}

    def run(scenario: str, **figures) -> dict:
        return {"figures": run_figures(scenario, detail("VALID", **figures)), "max_batch": 16,
                "summary_log": f"{LONG_PATH}/{scenario}/mlperf_log_summary.txt", "settings": {}}

    def server(qps: float) -> dict:
        ok = qps < 500 / ms
        figures = run_figures("server", detail("VALID" if ok else "INVALID", **{
            "result_99.00_percentile_latency_ns": int(ms * 3.1234e6 if ok else ms * 40e6),
            "result_completed_samples_per_sec": qps * 0.98765, "effective_target_latency_ns": 65_452_000,
            "result_perf_constraints_met": ok, "result_invalid_reason": "" if ok else
            "Reduce target QPS to improve latency."}))
        return {**figures, "summary_log": f"{LONG_PATH}/mlperf_log_summary.txt"}

    search = search_server_rate(server, start_qps=500 / ms * 0.4567, ceiling_qps=1000 / ms, max_runs=5,
                                max_seconds=1e9)
    search.update(latency_bound_ms=65.452, range=bracket_text(search))
    return {"runs": {"single-stream": run("single-stream", **{"result_90.00_percentile_latency_ns": int(ms * 1.0987e6),
                                                               "early_stopping_latency_ss": int(ms * 1.1234e6)}),
                     "offline": run("offline", result_samples_per_second=16e3 / ms * 0.987654)},
            "server_search": search}


def pr4_report(out_dir: Path) -> dict:
    samples = {name: {"1": [v[2] * f for f in (0.97, 1.0, 1.03)], "16": [v[3] * f for f in (0.98, 1.0, 1.02)]}
               for name, v in VARIANTS.items()}
    per_batch = per_batch_rows(samples, {}, "original")
    loadgen = {name: _loadgen(name, v[2]) for name, v in VARIANTS.items()}
    rows = []
    for name, (what, size, _, _, top1) in VARIANTS.items():
        row = model_row(name, f"{LONG_PATH}/{name}.onnx", {"size_mb": size, "transform": what, "backend": "onnxruntime",
                                                         "weights_mb": size * 0.95}, [r for r in per_batch
                                                                                     if r["model"] == name],
                        primary=1, isolated=True)
        rows.append({**row, "top1_pct": top1, "model_rss_mb": 138.9123, "error": None,
                     **scenario_fields(loadgen[name])})
    rows.append({"model": "broken_variant_with_a_long_name", "path": f"{LONG_PATH}/broken.onnx",
                 "error": "ArtifactError: " + "could not parse the ONNX protobuf, the file is truncated; " * 4})
    models = add_comparisons(rows, 1.0, primary=1)
    return {"created_at": "2026-12-06T10:00:00+00:00", "interrupted": False, "environment": ENV,
            "config": {"batch_sizes": [1, 16], "primary_batch_size": 1, "dataset": "digits", "seed": 0,
                       "output_dir": str(out_dir)},
            "models": models, "per_batch": per_batch, "samples_ms": samples, "loadgen": loadgen,
            "headline": headline(models, ENV, 1.0, primary=1),
            "notes": ["A note long enough to wrap over several lines of the page. " * 6]}


class _Page(HTMLParser):
    """The page's table headers, table cells and visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.cells: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("th", "td", "style", "script"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "th":
            self.headers.append(data.strip())
        elif self._in == "td":
            self.cells.append(data.strip())
        if self._in not in ("style", "script"):
            self.text.append(data)


def check_page(page: Path, tmp_path: Path) -> _Page:
    widths = page_width(page, tmp_path, window_width=1400)
    assert widths["scroll"] <= widths["inner"], f"{page.name} is {widths['scroll']} px wide in a 1400 px window"
    parsed = _Page()
    parsed.feed(page.read_text())
    assert parsed.headers and not [h for h in parsed.headers if "_" in h], parsed.headers  # no raw keys
    decimals = [c for c in parsed.cells if re.fullmatch(r"-?\d*\.\d+", c)]
    assert decimals and all(len(re.sub(r"\D", "", c).lstrip("0")) <= 3 for c in decimals), decimals  # 3 figures
    assert "".join(parsed.text).count(CPU) == 1  # one line per fact
    return parsed


def test_benchmark_page_fits_the_window_and_reads_as_a_document(tmp_path):
    page = tmp_path / "benchmark.html"
    page.write_text(to_html(pr4_report(tmp_path)))
    parsed = check_page(page, tmp_path)
    text = "".join(parsed.text)
    assert label("single_stream_latency_ms_p90") in parsed.headers and "pruning + distillation + quantization" in text
    assert "13.1" in parsed.cells and "97.8" in parsed.cells  # 13.0904 ms, 97.7778 %
    assert "Server, combined (99th percentile bound 65.5 ms, " in text and "VALID at" in text


@pytest.mark.parametrize("hops", [True, False])
def test_main_job_page_fits_the_window_and_reads_as_a_document(tmp_path, hops):
    out = tmp_path / "runs"
    (out / "benchmark").mkdir(parents=True)
    bench = pr4_report(out / "benchmark")
    (out / "benchmark" / "benchmark.json").write_text(json.dumps(bench))
    load = {"requests_sent": 200, "succeeded": 200, "failed": 0, "expired": 0, "errors": 0, "concurrency": 8,
            "wall_s": 6.946123, "throughput_rps": 28.791234, "latency_ms_p50": 208.216234, "latency_ms_p95": 709.0131,
            "latency_ms_p99": 742.6349, "latency_ms_mean": 257.3643, "batch_size_mean": 4.8123}
    if hops:  # the per-hop figures PR2's load test adds: in the JSON, not the page
        load.update({f"hop_ms_{hop}_p{p}": 1.234567 for hop in ("api_intake", "api_produce", "queue", "forward",
                                                                "result") for p in (50, 95, 99)})
    results = {
        "baseline": {arch: {"arch": arch, "model": f"{LONG_PATH}/{arch}.pt", "test_accuracy": 97.7778,
                            "size_mb": 94.429123, "params_m": 23.529123, "train_s": 92.91234}
                     for arch in ("resnet50", "resnet18")},
        "optimize": {"rows": [{"model": name, "arch": "resnet50", "format": "onnx", "size_mb": v[1],
                               "size_pct_of_original": 100 * v[1] / 94.429, "params_m": 23.5291,
                               "top1_pct": v[4], "top1_change_pts": v[4] - 97.7778,
                               "description": f"{v[0]} (static int8, measured-fastest backend, 6 epochs)",
                               "path": f"{LONG_PATH}/{name}.onnx"} for name, v in VARIANTS.items()]},
        "benchmark": {"summary": bench["models"], "headline": bench["headline"],
                      "reports": {"json": str(out / "benchmark" / "benchmark.json"),
                                  "html": str(out / "benchmark" / "benchmark.html")}},
        "serve": {"load": {"original": load, "optimized": load}},
    }
    summary = write_report(out, results)
    parsed = check_page(Path(summary["report_html"]), tmp_path)
    assert label("throughput_rps") in parsed.headers and fmt(28.791234) == "28.8" and "28.8" in parsed.cells
    report = json.loads((out / "report.json").read_text())
    if hops:  # every figure stays in the JSON
        assert "hop_ms_queue_p99" in report["sections"]["Async serving (end to end)"][0]
