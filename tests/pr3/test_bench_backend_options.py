"""bench_backend_options: every group's variants, each in its own worker, compared on tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.errors import UsageError
from modelops.model_process import LocalProxy
from PR3_model_optimization.benchmarks import bench_backend_options as bench

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def check_rows(rows: list[dict], group: str, options: set[str]) -> None:
    assert {row["option"] for row in rows if row["group"] == group} == options
    for row in rows:
        if row["group"] != group:
            continue
        assert row["baseline_ms_p50"] > 0 and row["option_ms_p50"] > 0
        assert row["speedup"] == pytest.approx(row["baseline_ms_p50"] / row["option_ms_p50"], rel=0.01)
        assert row["faster"] == (row["speedup"] >= 1.03)
        assert row["baseline_first_call_s"] > 0 and row["option_first_call_s"] > 0 and row["option_setup_s"] >= 0


def args_for(*argv: str) -> object:
    args = bench.get_args_parser().parse_args(["--threads", "1", "--rounds", "2", *argv])
    bench.parse_groups(args)
    return args


def test_option_rows_compare_each_option_with_the_first_name() -> None:
    rows = bench.option_rows("g", 4, {"base": 10.0, "a": 5.0, "b": 10.1}, {"base": 1.0, "a": 2.0, "b": 3.0},
                             {"base": 0.5, "a": 0.25, "b": 0.125}, min_gain=0.03)
    assert [(r["option"], r["baseline"], r["batch_size"]) for r in rows] == [("a", "base", 4), ("b", "base", 4)]
    assert rows[0]["speedup"] == 2.0 and rows[0]["faster"] and not rows[1]["faster"]
    assert (rows[1]["baseline_first_call_s"], rows[1]["option_first_call_s"], rows[1]["option_setup_s"]) == (
        1.0, 3.0, 0.12)


def test_every_group_names_its_baseline_first_and_every_ort_option_applies() -> None:
    import onnxruntime as ort

    assert bench.group_options("eager") == ["contiguous", "channels_last"]
    assert bench.group_options("pt2e", aoti=False)[0] == "torch.compile"
    assert "AOTInductor package" not in bench.group_options("pt2e", aoti=False)
    assert bench.group_options("openvino") == ["LATENCY", "THROUGHPUT", "INFERENCE_NUM_THREADS unset"]
    changes = bench.ort_changes()
    assert next(iter(changes)).startswith("defaults (")
    for configure in changes.values():  # each one is rebuilt by name in its worker: it must apply on its own
        configure(ort.SessionOptions())


def test_eager_sessions_compare_in_turns_with_their_own_kernel_cache(tmp_path: Path, monkeypatch) -> None:
    """In this process (LocalProxy) for speed: the same session class the workers run."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "outer"))  # restored after the test
    files = bench.build_files(bench.create_model("resnet18", 1000).eval(), [3, 16, 16], tmp_path, 1, ["eager"])
    sessions = {option: LocalProxy(session=bench.OptionSession, name=option, path=str(files["eager"]),
                                   group="eager", option=option, threads=1, input_shape=[3, 16, 16],
                                   arch="resnet18", cache_dir=str(tmp_path / f"cache-{option}"))
                for option in bench.group_options("eager")}
    rows = bench.compare("eager fp32", sessions, [1, 2], rounds=2, min_gain=0.03)
    check_rows(rows, "eager fp32", {"channels_last"})
    assert [row["batch_size"] for row in rows] == [1, 2] and rows[0]["baseline"] == "contiguous"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache-channels_last")
    batch = torch.randn(2, 3, 16, 16)
    outputs = [session.session.predictor(batch) for session in sessions.values()]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)  # the same weights in both


@pytest.mark.slow  # eight spawned workers, each importing torch: 30-40 s on 2 cores
def test_main_runs_every_variant_in_its_own_process_and_writes_one_table(tmp_path: Path, capsys) -> None:
    args = bench.get_args_parser().parse_args([
        "--groups", "eager,onnxruntime", "--arch", "resnet18", "--image-size", "32", "--batch-sizes", "1",
        "--rounds", "2", "--threads", "1", "--calibration-batches", "1", "--output", str(tmp_path / "out")])
    result = bench.main(args)
    rows = result["options"]
    assert result["method"] == "per-process turns"
    check_rows(rows, "eager fp32", {"channels_last"})
    ort_options = set(bench.group_options("onnxruntime")[1:])
    assert {"allow_spinning 0", "cpu_mem_arena off", "execution_mode parallel"} <= ort_options
    check_rows(rows, "onnxruntime int8", ort_options)
    assert len(rows) == 1 + len(ort_options) and {row["batch_size"] for row in rows} == {1}
    assert {row["baseline"] for row in rows} == {"contiguous", bench.group_options("onnxruntime")[0]}
    printed = capsys.readouterr().out
    assert "\nCPU: " in "\n" + printed and "speedup" in printed and (tmp_path / "out" / "results.md").is_file()
    assert (tmp_path / "out" / "results.csv").is_file()


@pytest.mark.slow  # five cold inductor compiles of the tiny net (one an AOTInductor package), each in a worker
def test_pt2e_options_against_torch_compile(tmp_path: Path) -> None:
    args = args_for("--groups", "pt2e", "--image-size", "16", "--batch-sizes", "2")
    files = bench.build_files(tiny_net(), [3, 16, 16], tmp_path, 1, ["pt2e"])
    sessions = bench.start_group("pt2e", args, files["pt2e"], tmp_path)
    try:
        rows = bench.compare("pt2e int8", sessions, [2], rounds=2, min_gain=0.03)
    finally:
        for session in sessions.values():
            session.close()
    check_rows(rows, "pt2e int8", {"channels_last input", "max_autotune", "cpp_wrapper", "AOTInductor package"})
    assert all(row["baseline"] == "torch.compile" for row in rows)
    package = next(row for row in rows if row["option"] == "AOTInductor package")
    assert package["option_setup_s"] > 0 and package["option_first_call_s"] < package["baseline_first_call_s"]
    caches = sorted(p.name for p in (tmp_path / "inductor").iterdir())
    assert caches == [f"pt2e-{i}" for i in range(5)]  # a kernel cache of its own per worker


def test_bad_groups_are_refused() -> None:
    args = bench.get_args_parser().parse_args(["--groups", "tensorrt"])
    with pytest.raises(UsageError, match="Unknown --groups tensorrt"):
        bench.main(args)
