"""The outside-timer check: the same fp32 / int8 pair timed by the benchmark and by a plain loop in a fresh process."""

from __future__ import annotations

import pytest

from modelops.cli import run_cli
from PR4_model_benchmarking.benchmarks import check_outside_timer
from PR4_model_benchmarking.benchmarks.pair_timing import comparison_rows, plain_loop_ms


def test_ratios_agree_within_the_tolerance_only():
    bench = {1: {"ratio": 4.0}, 16: {"ratio": 5.0}}
    outside = {1: {"ratio": 4.3}, 16: {"ratio": 6.0}}
    rows = comparison_rows(bench, outside, names=("benchmark", "outside"), tolerance=0.10)
    assert [(r["batch_size"], r["gap_pct"], r["agree"]) for r in rows] == [(1, 7.0, True), (16, 16.7, False)]


@pytest.mark.slow
def test_check_runs_both_timers_on_a_made_pair(tmp_path, capsys):
    args = check_outside_timer.get_args_parser().parse_args([
        "--image-size", "32", "--work-dir", str(tmp_path / "pair"), "--batch-sizes", "1,2", "--iters", "3",
        "--warmup", "1", "--threads", "1", "--tolerance", "1000", "--back-to-back",
        "--output-dir", str(tmp_path / "out")])
    result = check_outside_timer.main(args)
    assert [r["batch_size"] for r in result["outside_timer"]] == [1, 2]
    assert [r["batch_size"] for r in result["back_to_back"]] == [1, 2]
    for b in (1, 2):
        assert result["project"][b]["ratio"] > 0 and result["outside"][b]["ratio"] > 0
        assert result["outside"][b]["ratio"] == pytest.approx(
            result["outside"][b]["fp32_ms"] / result["outside"][b]["int8_ms"], rel=0.01)
    assert result["agree"] and "AGREE" in capsys.readouterr().out
    times = plain_loop_ms(tmp_path / "pair" / "resnet18_32_int8.onnx", 2, 4, 0, 1)
    assert len(times) == 4 and all(t > 0 for t in times)


def test_bad_input_exits_2(tmp_path, capsys):
    parser = check_outside_timer.get_args_parser()
    assert run_cli(check_outside_timer.check, parser, ["--fp32", str(tmp_path / "a.pt")]) == 2
    assert "--fp32 and --int8 go together" in capsys.readouterr().err
    assert run_cli(check_outside_timer.check, parser, ["--batch-sizes", "0"]) == 2
