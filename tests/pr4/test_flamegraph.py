"""PR4 flamegraphs: py-spy SVG of an inference-only child, Chrome traces, top-op tables, --compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelops.cli import run_cli
from PR4_model_benchmarking import model_flamegraph
from PR4_model_benchmarking.model_flamegraph import compare_ops


def _run(argv: list[str]) -> dict:
    args = model_flamegraph.get_args_parser().parse_args(argv)
    return model_flamegraph.main(args)


def test_flamegraph_svg_trace_and_top_ops(digits_resnet18, tmp_path):
    result = _run(["--model", str(digits_resnet18), "--duration", "2", "--rate", "50", "--profile-iters", "3",
                   "--native", "--threads", "1", "--output-dir", str(tmp_path)])
    model = result["models"][0]
    svg = Path(model["flamegraph"])
    text = svg.read_text()
    assert svg.stat().st_size > 1000 and "<svg" in text
    assert "inference_loop" in text  # py-spy sampled the inference loop, not the loading
    trace = json.loads(Path(model["trace"]).read_text())
    assert trace["traceEvents"] and any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    ops = model["top_ops"]
    assert ops and all(op["op"].startswith("aten::") for op in ops)
    assert ops == sorted(ops, key=lambda r: r["self_ms_per_iter"], reverse=True)
    assert any("conv" in op["op"] for op in ops[:3])  # a ResNet spends its time in convolutions
    assert Path(model["top_ops_md"]).read_text().count("| aten::") == len(ops)


@pytest.mark.slow
def test_compare_onnx_int8_with_fp32(bench_variants, tmp_path):
    result = _run(["--model", str(bench_variants["state_dict"]), "--compare", str(bench_variants["int8"]),
                   "--no-flamegraph", "--profile-iters", "3", "--threads", "1", "--output-dir", str(tmp_path)])
    fp32, int8 = result["models"]
    assert fp32["profiler"].startswith("torch.profiler") and int8["profiler"].startswith("onnxruntime")
    assert any(op["op"] == "QLinearConv" for op in int8["top_ops"])  # real int8 kernels ran
    events = json.loads(Path(int8["trace"]).read_text())
    assert any(e.get("cat") == "Node" for e in events)  # ORT's own profile, Chrome-trace format
    rows = result["compare"]["rows"]
    assert rows[-1]["op"] == "TOTAL (all ops)"
    assert "QLinearConv" in {r["op"] for r in rows}
    assert Path(result["compare"]["markdown"]).read_text().startswith("# Where the time went")


def test_compare_ops_joins_on_op_name():
    a = [{"op": "conv", "self_ms_per_iter": 3.0}, {"op": "relu", "self_ms_per_iter": 1.0}]
    b = [{"op": "conv", "self_ms_per_iter": 1.0}, {"op": "qconv", "self_ms_per_iter": 0.5}]
    rows = compare_ops(a, b, ("fp32", "int8"), top=10)
    by_op = {r["op"]: r for r in rows}
    assert by_op["conv"]["delta_ms"] == pytest.approx(-2.0)
    assert by_op["relu"]["int8_ms"] is None and by_op["qconv"]["fp32_ms"] is None
    assert by_op["TOTAL (all ops)"]["fp32_ms"] == pytest.approx(4.0)
    assert by_op["TOTAL (all ops)"]["int8_ms"] == pytest.approx(1.5)


def test_bad_input_exits_2(tmp_path, capsys):
    parser = model_flamegraph.get_args_parser()
    assert run_cli(model_flamegraph.main, parser, ["--model", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(model_flamegraph.main, parser, ["--model", str(tmp_path / "m.pt"), "--duration", "0"]) == 2
    assert run_cli(model_flamegraph.main, parser, ["--model", __file__, "--py-spy", str(tmp_path / "nope")]) == 2
    assert "py-spy not found" in capsys.readouterr().err
