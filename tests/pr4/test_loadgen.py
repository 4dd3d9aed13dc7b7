"""The scenarios on MLPerf LoadGen: every scenario on a tiny model, LoadGen's verdict and logs in the report, a
rate the model cannot serve reported INVALID, the accuracy mode scored from LoadGen's log, the server search."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from modelops.cli import run_cli
from PR4_model_benchmarking import benchmark_models
from PR4_model_benchmarking.loadgen_sut import ACCURACY_LOG, SUMMARY_LOG
from PR4_model_benchmarking.scenarios import (
    P99_EARLY_STOPPING_QUERIES,
    bracket_text,
    run_seconds,
    search_server_rate,
)
from tests.conftest import tiny_classifier

SIDE = 16


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 10-class net of a few hundred parameters, saved as a user would: TorchScript, no manifest."""
    net = tiny_classifier(SIDE)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 3, SIDE, SIDE)), str(path))
    return path


def _run(models: str, out: Path, *flags: str) -> dict:
    args = benchmark_models.get_args_parser().parse_args([
        "--models", models, "--isolation", "none", "--iters", "5", "--warmup", "1", "--batch-sizes", "1,8",
        "--threads", "1", "--min-duration-ms", "100", "--server-search-runs", "1", "--output-dir", str(out),
        "--report-format", "markdown,json,html", "--no-progress", *flags])
    return benchmark_models.main(args)


def _summary_verdict(path: str) -> str:
    return re.search(r"Result is : (\w+)", Path(path).read_text())[1]


def test_every_scenario_runs_on_loadgen_and_the_report_carries_its_verdict(tiny_model, tmp_path):
    out = tmp_path / "bench"
    result = _run(f"tiny:{tiny_model}", out, "--image-size", str(SIDE), "--latency-bound-ms", "200",
                  "--scenarios", "single-stream,multi-stream,offline,server")
    (row,) = result["models"]
    runs = result["report"]["loadgen"]["tiny"]["runs"]
    assert set(runs) == {"single-stream", "multi-stream", "offline"}
    (server,) = result["report"]["loadgen"]["tiny"]["server_search"]["runs"]
    for scenario, run in [*runs.items(), ("server", server)]:
        figures = run.get("figures", run)
        # LoadGen's verdict, as its own summary prints it, and its logs beside the report
        assert figures["result"] in ("VALID", "INVALID")
        assert _summary_verdict(run["summary_log"]) == figures["result"]
        assert out / "loadgen" / "tiny" / scenario in Path(run["summary_log"]).parents
        assert Path(run["detail_log"]).is_file() and run["settings"]["min_duration_ms"] == 100
        assert (figures["result"] == "VALID") == (figures["invalid_reason"] is None)
        # LoadGen's own minimum query count, raised to what early stopping needs in the p99 scenarios
        wanted = P99_EARLY_STOPPING_QUERIES if scenario in ("multi-stream", "server") else 100
        assert run["settings"]["min_query_count"] == (1 if scenario == "offline" else wanted)
    assert runs["single-stream"]["figures"]["query_count"] >= 100
    assert runs["single-stream"]["figures"]["early_stopping_met"] is True  # 64 queries suffice for a p90
    assert runs["multi-stream"]["settings"]["samples_per_query"] == 8
    assert runs["offline"]["figures"]["query_count"] == 1 and runs["offline"]["max_batch"] in (1, 8)
    assert row["single_stream_latency_ms_p90"] > 0 and row["offline_samples_per_s"] > 0
    assert row["single_stream_result"] == runs["single-stream"]["figures"]["result"]
    assert row["server_result"] == server["result"] and row["server_latency_bound_ms"] == 200
    markdown = Path(result["reports"]["markdown"]).read_text()
    assert "## MLPerf scenarios (run by MLPerf LoadGen)" in markdown and "loadgen/tiny/offline/" in markdown
    assert "LoadGen's settings are its defaults except: minimum duration (ms) 100" in markdown


def test_a_rate_above_what_the_model_serves_is_invalid(digits_resnet18, tmp_path):
    # 2000 queries/s for a ResNet-18 on one thread (it serves a few hundred): 200 queries arrive in 0.1 s and
    # wait in a queue that the model drains in a second or more
    result = _run(f"r18:{digits_resnet18}", tmp_path, "--scenarios", "server", "--target-qps", "2000",
                  "--latency-bound-ms", "20", "--min-query-count", "200", "--accuracy-samples", "0",
                  "--batch-sizes", "1")
    (row,) = result["models"]
    search = result["report"]["loadgen"]["r18"]["server_search"]
    (run,) = search["runs"]
    assert run["result"] == "INVALID" and run["perf_constraints_met"] is False
    assert "99th percentile latency over the bound" in run["invalid_reason"]
    assert run["latency_ms_p99"] > 20 and _summary_verdict(run["summary_log"]) == "INVALID"
    assert row["server_result"] == "INVALID" and row["server_highest_valid_qps"] is None
    assert row["server_lowest_invalid_qps"] == 2000 and run["query_count"] == 200
    assert row["server_range"] == "no VALID rate: INVALID down to 2e+03 queries/s"


def test_accuracy_mode_scores_loadgens_accuracy_log(digits_resnet18, tmp_path):
    result = _run(f"r18:{digits_resnet18}", tmp_path, "--scenarios", "none", "--loadgen-mode", "accuracy",
                  "--accuracy-samples", "48", "--batch-sizes", "8")
    (row,) = result["models"]
    accuracy = result["report"]["loadgen"]["r18"]["accuracy"]
    entries = json.loads((Path(accuracy["detail_log"]).parent / ACCURACY_LOG).read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(48))  # every sample once
    # the same 48 test images through LoadGen and through the benchmark's own accuracy pass
    assert accuracy["accuracy_samples"] == 48 and row["loadgen_top1_pct"] == row["top1_pct"]
    assert (Path(accuracy["summary_log"]).parent / SUMMARY_LOG).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--loadgen-mode", "accuracy"], "--loadgen-mode accuracy scores LoadGen's accuracy log against a dataset"),
    (["--scenarios", "streaming"], "Unknown --scenarios value streaming"),
    (["--min-duration-ms", "0"], "--min-duration-ms"),
])
def test_bad_loadgen_input_exits_2(argv, message, tiny_model, tmp_path, capsys):
    code = run_cli(benchmark_models.main, benchmark_models.get_args_parser(), [
        "--models", f"tiny:{tiny_model}", "--image-size", str(SIDE), "--output-dir", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_server_search_brackets_the_highest_valid_rate():
    """A server that LoadGen would call VALID below 70 queries/s: the bracket holds 70, every VALID rate tried is
    below it and every INVALID one above, and the runs stop when the bracket is within 5%."""
    tried: list[float] = []

    def run(qps: float) -> dict:
        tried.append(qps)
        return {"result": "VALID" if qps < 70 else "INVALID"}

    search = search_server_rate(run, start_qps=50, ceiling_qps=100, max_runs=10, max_seconds=1e9)
    assert tried[:3] == [50, 100, 75]  # the start, the ceiling, then bisection
    assert search["highest_valid_qps"] < 70 <= search["lowest_invalid_qps"]
    assert search["lowest_invalid_qps"] - search["highest_valid_qps"] <= 0.05 * search["highest_valid_qps"]
    assert search["stopped"] == "bracket narrow enough" and len(tried) < 10
    assert bracket_text(search).startswith("VALID at 68") and "INVALID at 71" in bracket_text(search)


def test_server_search_never_claims_more_than_it_measured():
    clock = iter(range(0, 10_000, 50))  # each run takes 50 "seconds"
    search = search_server_rate(lambda q: {"result": "INVALID"}, start_qps=40, ceiling_qps=80, max_runs=5,
                                max_seconds=250, clock=lambda: next(clock),
                                expected_seconds=lambda q: run_seconds(q, None, 662))  # 662 queries / rate
    # halving: 40 (16.6 s), 20 (33 s), 10 (66 s); 5 queries/s would need 132 s and end after 250 s
    assert [r["target_qps"] for r in search["runs"]] == [40, 20, 10]
    assert search["stopped"] == "time limit" and search["highest_valid_qps"] is None
    assert bracket_text(search) == "no VALID rate: INVALID down to 10 queries/s"
    always = search_server_rate(lambda q: {"result": "VALID"}, start_qps=40, ceiling_qps=80, max_runs=3,
                                max_seconds=1e9)
    assert [r["target_qps"] for r in always["runs"]] == [40, 80, 160] and always["lowest_invalid_qps"] is None
    assert bracket_text(always) == "VALID up to 160 queries/s; no INVALID rate tried"
