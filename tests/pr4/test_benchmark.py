"""PR4 benchmark: statistics, verdicts, reports in every format, every artifact format, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from modelops.cli import run_cli
from modelops.errors import UsageError
from modelops.timing import latency_stats
from PR4_model_benchmarking import benchmark_models
from PR4_model_benchmarking.report_format import label
from PR4_model_benchmarking.report_schema import BenchmarkReport, report_json_schema
from PR4_model_benchmarking.reports import SAMPLES_CSV, SUMMARY_COLUMNS
from PR4_model_benchmarking.summary import verdicts

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "PR4_model_benchmarking" / "benchmark_models.py"


# ---------------------------------------------------------------------- statistics and verdicts


def test_percentiles_on_known_data():
    stats_ = latency_stats(list(range(1, 101)))  # 1..100 ms
    assert stats_["latency_ms_p50"] == pytest.approx(50.5)
    assert stats_["latency_ms_p90"] == pytest.approx(90.1)
    assert stats_["latency_ms_p95"] == pytest.approx(95.05)
    assert stats_["latency_ms_p99"] == pytest.approx(99.01)
    assert stats_["latency_ms_mean"] == pytest.approx(50.5)
    assert stats_["latency_ms_std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1), abs=1e-3)


def test_verdicts():
    rows = [{"model": "a"}, {"speedup_b1_x": 3.0, "size_ratio": 0.25, "top1_change_pts": -0.2},
            {"speedup_b1_x": 1.5, "size_ratio": 1.0, "top1_change_pts": 0.0},
            {"speedup_b1_x": 1.0, "size_ratio": 0.5, "top1_change_pts": 0.0},
            {"speedup_b1_x": 4.0, "size_ratio": 0.2, "top1_change_pts": -5.0}, {"error": "boom"}]
    assert verdicts(rows, speed="speedup_b1_x") == ["baseline", "best", "faster", "smaller", "worse", "failed"]


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("spec, message", [
    ("original", "Malformed --models entry"),
    ("a:x.pt,a:y.pt", "Duplicate model name"),
    ("a:does/not/exist.pt", "does not exist"),
    ("a:model.txt", "extension"),
])
def test_bad_models_spec(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("x.pt", "y.pt", "model.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UsageError, match=message):
        benchmark_models.parse_models(spec)


def test_bad_input_exits_2_with_one_line(digits_resnet18, tmp_path, capsys):
    parser = benchmark_models.get_args_parser()
    out = ["--output-dir", str(tmp_path), "--no-progress"]
    assert run_cli(benchmark_models.main, parser, ["--models", f"a:{digits_resnet18},a:{digits_resnet18}", *out]) == 2
    assert "Duplicate model name 'a'" in capsys.readouterr().err
    # digits_resnet18 takes 32x32; a 64x64 dataset does not fit it
    assert run_cli(benchmark_models.main, parser, ["--models", f"a:{digits_resnet18}", "--image-size", "64",
                                                   *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "expects input (3, 32, 32)" in err and "(3, 64, 64)" in err and len(err.splitlines()) == 1
    assert run_cli(benchmark_models.main, parser, ["--models", f"a:{digits_resnet18}", "--report-format", "pdf",
                                                   *out]) == 2
    assert "Unknown --report-format value pdf" in capsys.readouterr().err
    assert run_cli(benchmark_models.main, parser, ["--models", f"a:{digits_resnet18}", "--batch-sizes", "1,x",
                                                   *out]) == 2


def test_script_as_written_rejects_a_malformed_spec():
    done = subprocess.run([sys.executable, str(SCRIPT), "--models", "original-models/resnet50.pt"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: Malformed --models entry")


# ---------------------------------------------------------------------- a real run over every format


def test_quick_run_in_process(digits_resnet18, tmp_path):
    """The fast path: one model, no worker process, single-stream and offline on LoadGen, markdown + JSON."""
    args = benchmark_models.get_args_parser().parse_args([
        "--models", f"base:{digits_resnet18}", "--isolation", "none", "--iters", "3", "--warmup", "1",
        "--batch-sizes", "1,2", "--scenarios", "single-stream,offline", "--min-duration-ms", "100",
        "--accuracy-samples", "32", "--threads", "1", "--output-dir", str(tmp_path), "--no-progress"])
    result = benchmark_models.main(args)
    (row,) = result["models"]
    assert row["error"] is None and row["verdict"] == "baseline"
    assert row["single_stream_latency_ms_p90"] > 0 and row["single_stream_result"] in ("VALID", "INVALID")
    assert row["offline_batch_size"] in (1, 2) and row["offline_samples_per_s"] > 0
    assert "peak_rss_mb" not in row and row["weights_mb"] > 40  # shared process: the weights, no RSS figure
    assert set(result["reports"]) == {"markdown", "json"}
    report = BenchmarkReport.model_validate_json(Path(result["reports"]["json"]).read_text())
    assert [b.batch_size for b in report.per_batch] == [1, 2]
    assert set(report.loadgen["base"]["runs"]) == {"single-stream", "offline"}
    assert (tmp_path / "loadgen" / "base" / "offline" / "mlperf_log_summary.txt").is_file()


@pytest.fixture(scope="module")
def full_run(bench_variants, tmp_path_factory):
    """One quick run: state_dict, TorchScript, ExportedProgram, ONNX, int8 ONNX and a corrupt file."""
    out = tmp_path_factory.mktemp("bench_out")
    broken = out / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    order = ["state_dict", "torchscript", "exported_program", "onnx", "int8"]
    spec = ",".join(f"{name}:{bench_variants[name]}" for name in order) + f",broken:{broken}"
    args = benchmark_models.get_args_parser().parse_args([
        "--models", spec, "--quick", "--iters", "4", "--warmup", "1", "--batch-sizes", "1,4",
        "--accuracy-samples", "64", "--scenarios", "server", "--min-duration-ms", "100", "--min-query-count", "10",
        "--server-search-runs", "1", "--threads", "1", "--report-format", "markdown,html,csv,json",
        "--output-dir", str(out), "--no-progress"])
    return benchmark_models.main(args), out, order


@pytest.mark.slow
def test_every_format_is_measured(full_run):
    result, _, order = full_run
    rows = {row["model"]: row for row in result["models"]}
    assert [r["model"] for r in result["models"]] == [*order, "broken"]
    formats = {name: rows[name]["format"] for name in order}
    assert formats == {"state_dict": "state_dict", "torchscript": "torchscript",
                       "exported_program": "exported_program", "onnx": "onnx", "int8": "onnx"}
    for name in order:
        row = rows[name]
        assert row["error"] is None
        assert row["latency_ms_p50"] > 0 and row["best_samples_per_s"] > 0
        assert row["peak_rss_mb"] > row["model_rss_mb"] > 0  # own worker process: its own peak
        assert row["weights_mb"] > 0 and row["load_rss_mb"] is not None
        assert row["top1_pct"] > 50 and row["server_latency_ms_p99"] > 0
        assert row["server_result"] in ("VALID", "INVALID") and row["server_runs"] == 1
    for name in ("torchscript", "exported_program", "onnx"):  # same weights: same answers
        assert rows[name]["top1_agreement_pct"] >= 98
        assert rows[name]["size_ratio"] == pytest.approx(1.0, abs=0.05)
    assert rows["int8"]["size_ratio"] < 0.35  # int8 weights: about a quarter of fp32
    assert rows["state_dict"]["verdict"] == "baseline" and rows["state_dict"]["speedup_b1_x"] == 1.0
    assert rows["broken"]["error"] and rows["broken"]["verdict"] == "failed"


@pytest.mark.slow
def test_json_report_holds_every_figure(full_run):
    result, _, order = full_run
    report = json.loads(Path(result["reports"]["json"]).read_text())
    jsonschema.validate(report, report_json_schema())
    BenchmarkReport.model_validate(report)
    assert report["environment"]["cpu_model"] and report["environment"]["torch"]
    assert report["environment"]["threads"] == 1
    for row in report["per_batch"]:  # stats are the stats of the raw samples kept beside them
        raw = report["samples_ms"][row["model"]][str(row["batch_size"])]
        assert row["iters"] == len(raw) == 4
        expected = latency_stats(raw)
        assert row["latency_ms_p99"] == pytest.approx(expected["latency_ms_p99"])
        assert row["samples_per_s"] == pytest.approx(row["batch_size"] * 1e3 / expected["latency_ms_mean"], rel=1e-3)
    assert {r["model"] for r in report["per_batch"]} == set(order)
    assert set(report["loadgen"]) == set(order)  # every model ran on LoadGen in its own worker
    (run,) = report["loadgen"]["state_dict"]["server_search"]["runs"]
    assert Path(run["summary_log"]).is_file() and run["settings"]["scenario"] == "Server"


@pytest.mark.slow
def test_markdown_csv_html_reports(full_run):
    result, out, order = full_run
    md = Path(result["reports"]["markdown"]).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    keys = {"latency_ms_p50", "speedup_b1_x", "speedup_b4_x", "size_mb", "verdict", "error"}
    assert columns[0] == "Model" and {label(key) for key in keys} <= set(columns)
    assert set(columns) <= {label(key) for key in (*SUMMARY_COLUMNS, "speedup_b1_x", "speedup_b4_x")}
    assert len(columns) <= 13
    for name in [*order, "broken"]:
        assert any(line.startswith(f"| {name} ") for line in md.splitlines())
    csv = pd.read_csv(result["reports"]["csv"])
    assert len(csv[csv["error"].isna()]) == len(order) * 2  # one row per model and batch size
    assert {"latency_ms_p50", "b_latency_ms_p50", "samples_per_s", "batch_size"} <= set(csv.columns)
    samples = pd.read_csv(out / SAMPLES_CSV)
    assert len(samples) == len(order) * 2 * 4

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

    parser = Images()
    parser.feed(Path(result["reports"]["html"]).read_text())
    assert len(parser.images) == 3 and all(src.startswith("data:image/png;base64,") for src in parser.images)
