"""bench_backend_options: every group's variants run and compare on tiny models with a few timed calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.errors import UsageError
from PR3_model_optimization.benchmarks import bench_backend_options as bench
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def check_rows(rows: list[dict], group: str, options: set[str]) -> None:
    assert {row["option"] for row in rows} == options
    for row in rows:
        assert row["group"] == group and row["baseline_ms_p50"] > 0 and row["option_ms_p50"] > 0
        assert row["speedup"] == pytest.approx(row["baseline_ms_p50"] / row["option_ms_p50"], rel=0.01)
        assert row["faster"] == (row["speedup"] >= 1.03)


def test_eager_channels_last_against_contiguous() -> None:
    variants = bench.eager_variants(tiny_net())
    rows = bench.compare("eager fp32", variants, torch.randn(2, 3, 16, 16), rounds=2, min_gain=0.03)
    check_rows(rows, "eager fp32", {"channels_last"})
    assert rows[0]["baseline"] == "contiguous" and rows[0]["batch_size"] == 2


def test_main_onnxruntime_and_openvino_groups_write_one_table(tmp_path: Path, capsys) -> None:
    groups = "eager,onnxruntime" + (",openvino" if bench.openvino_available() and bench.nncf_available() else "")
    args = bench.get_args_parser().parse_args([
        "--image-size", "32", "--batch-sizes", "1,2", "--rounds", "2", "--threads", "1", "--groups", groups,
        "--calibration-batches", "1", "--output", str(tmp_path / "out")])
    result = bench.main(args)
    groups_run = {row["group"] for row in result["options"]}
    assert {"eager fp32", "onnxruntime int8"} <= groups_run
    ort_options = {row["option"] for row in result["options"] if row["group"] == "onnxruntime int8"}
    assert {"allow_spinning 0", "cpu_mem_arena off", "execution_mode parallel"} <= ort_options
    if "openvino" in groups:
        assert {row["option"] for row in result["options"] if row["group"] == "openvino int8"} == {
            "THROUGHPUT", "INFERENCE_NUM_THREADS unset"}
    assert {row["batch_size"] for row in result["options"]} == {1, 2}
    printed = capsys.readouterr().out
    assert "\nCPU: " in "\n" + printed and "speedup" in printed and (tmp_path / "out" / "results.md").is_file()


@pytest.mark.slow  # four inductor compiles of the tiny net plus one AOTInductor package: over 20 s
def test_pt2e_options_against_torch_compile(tmp_path: Path) -> None:
    calibration = [torch.randn(8, 3, 16, 16)]
    graph = quantize_pt2e(tiny_net(), calibration[0][:2], QuantConfig(backend="pt2e"), calibration)
    path = tmp_path / "tiny.pt2"
    save_pt2e(graph, path, calibration[0][:2])
    variants = bench.pt2e_variants(path, calibration[0][:2], aoti=True)
    rows = bench.compare("pt2e int8", variants, torch.randn(2, 3, 16, 16), rounds=2, min_gain=0.03)
    check_rows(rows, "pt2e int8", {"channels_last input", "max_autotune", "cpp_wrapper", "AOTInductor package"})
    assert all(row["baseline"] == "torch.compile" for row in rows)
    package = next(row for row in rows if row["option"] == "AOTInductor package")
    assert package["option_setup_s"] > 0 and package["option_first_call_s"] < package["baseline_first_call_s"]


def test_bad_groups_are_refused() -> None:
    args = bench.get_args_parser().parse_args(["--groups", "tensorrt"])
    with pytest.raises(UsageError, match="Unknown --groups tensorrt"):
        bench.main(args)
