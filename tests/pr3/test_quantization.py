"""PR3 quantization: real int8 artifacts that reload through load_artifact and agree with fp32."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from modelops.artifact import detect_format, load_artifact, load_module, read_manifest
from modelops.cli import run_cli
from modelops.data import make_loader
from modelops.errors import UsageError
from modelops.evaluate import predict_logits, top1_agreement
from modelops.load_options import LoadOptions
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.coverage import dynamic_coverage, layer_macs
from PR3_model_optimization.quantization.detect import quantized_reason
from PR3_model_optimization.quantization.onnxruntime_backend import onnx_module_name, quantize_onnx
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e
from PR3_model_optimization.quantization.search import pick_best

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "PR3_model_optimization" / "model_quantization.py"
# Small everything: 2 cores are shared by the whole suite.
FAST = ["--threads", "1", "--calibration-batches", "4", "--latency-rounds", "3", "--latency-batch-size", "8"]


def quantize(model: Path, save: Path, *extra: str) -> dict:
    args = mq.get_args_parser().parse_args(["--model", str(model), "--save-path", str(save), *FAST, *extra])
    return mq.main(args)


def agreement_with_fp32(int8_path: Path, fp32_path: Path, data, **load_kwargs) -> float:
    """Top-1 agreement of the reloaded int8 artifact with the fp32 model on the digits val split."""
    fp32, _ = load_module(fp32_path)
    loader = make_loader(data.val, 256)
    reference, _ = predict_logits(fp32, loader)
    logits, _ = predict_logits(load_artifact(int8_path, LoadOptions(threads=1, **load_kwargs)), loader)
    return top1_agreement(logits, reference)


@pytest.fixture(scope="module")
def ort_static(digits_resnet18: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    # The user's name ends in .pt although the content is ONNX: the manifest says which.
    save = tmp_path_factory.mktemp("quant") / "quantized_model.pt"
    return save, quantize(digits_resnet18, save, "--quantization-method", "static", "--backend", "onnxruntime")


def test_static_onnxruntime_round_trip(ort_static, digits_resnet18: Path, digits_data) -> None:
    save, summary = ort_static
    manifest = read_manifest(save)
    assert manifest.format == "onnx" and detect_format(save) == "onnx"
    assert manifest.transform["kind"] == "quantization" and manifest.transform["backend"] == "onnxruntime"
    assert manifest.parent["path"] == str(digits_resnet18)
    assert manifest.lineage[-1]["method"] == "static"
    # Real int8: every quantized conv reads its weight through a DequantizeLinear of an int8 initializer.
    graph = onnx.load(str(save)).graph
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(int8_weights) >= 19
    assert summary["quantized_layers"] == len(manifest.metrics["quantized_layers"]) == 20  # all but conv1
    assert "conv1" not in manifest.metrics["quantized_layers"]
    assert 0.8 < manifest.metrics["quantized_mac_fraction"] < 1.0
    assert summary["size_ratio"] <= 0.30 and manifest.size_mb < read_manifest(digits_resnet18).size_mb * 0.3
    for key in ("val_top1_pct", "fp32_top1_pct", "top1_agreement_pct", "latency_ms_p50_fp32", "latency_ms_p50_int8",
                "speedup_x", "int8_speedup_x", "cpu_int8_outlook"):
        assert key in manifest.metrics and key in summary
    assert manifest.metrics["accuracy"] == summary["val_top1_pct"]  # the manifest's own key, which loaders read
    predictor = load_artifact(save, LoadOptions(threads=1))
    assert predictor.backend == "onnxruntime"
    assert predictor(torch.zeros(3, *manifest.input_shape)).shape == (3, 10)
    assert agreement_with_fp32(save, digits_resnet18, digits_data) >= 98.0
    assert summary["top1_drop_pts"] <= 1.0


def test_already_quantized_is_refused_by_the_script(ort_static) -> None:
    save, _ = ort_static
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(save), "--save-path", str(save.with_name("again.onnx"))],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "already quantized" in lines[0] and "Traceback" not in result.stderr


def test_quantized_onnx_without_manifest_is_detected(ort_static, tmp_path: Path) -> None:
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(ort_static[0], bare)
    assert "QuantizeLinear" in quantized_reason(bare)
    with pytest.raises(UsageError, match="already quantized"):
        mq.check_not_quantized(bare)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend", "tensorrt"], "Unknown backend 'tensorrt'. Choose one of: auto, onnxruntime, pt2e, openvino"),
        (["--calibration-batches", "0"], "needs calibration data"),
        (["--quantization-method", "dynamic"], "of the MACs"),
        (["--quantization-method", "qat", "--backend", "onnxruntime"], "--backend pt2e"),
        (["--keep-float", "nonexistent"], "no layer named nonexistent"),
        (["--quantization-method", "qat", "--keep-float", "conv1"], "not supported with"),
    ],
)
def test_bad_input_exits_2_with_one_line(flags, message, digits_resnet18: Path, tmp_path: Path, capsys) -> None:
    argv = ["--model", str(digits_resnet18), "--save-path", str(tmp_path / "q.onnx"), "--threads", "1", *flags]
    assert run_cli(mq.main, mq.get_args_parser(), argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
    assert not (tmp_path / "q.onnx").exists()


def test_no_calibration_batches_is_refused_by_both_engines(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at least one batch"):
        quantize_onnx(tmp_path / "unused.onnx", tmp_path / "out.onnx", QuantConfig(), [])
    with pytest.raises(UsageError, match="at least one batch"):
        quantize_pt2e(nn.Linear(4, 2), torch.zeros(2, 4), QuantConfig(backend="pt2e"), [])


def test_pt2e_archive_holds_no_example_batch(tmp_path: Path) -> None:
    # The example handed to save_pt2e is a slice of a calibration batch; pickling it would store the
    # whole batch's storage in the model file.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 4)).eval()
    calibration = [torch.randn(64, 3, 32, 32)]
    graph = quantize_pt2e(model, calibration[0][:2], QuantConfig(backend="pt2e"), calibration)
    path = tmp_path / "tiny.pt2"
    save_pt2e(graph, path, calibration[0][:2])
    assert path.stat().st_size < calibration[0].numel() * 4 / 4  # the batch alone would be 786 KB
    program = torch.export.load(str(path))
    assert program.example_inputs is None
    batch = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(program.module()(batch), graph(batch))


def test_dynamic_covers_linear_only_and_is_written_when_asked(digits_resnet18: Path, tmp_path: Path) -> None:
    model, manifest = load_module(digits_resnet18)
    fraction, names = dynamic_coverage(model, manifest.input_shape)
    assert names == ["fc"] and fraction < 0.001
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    assert dynamic_coverage(mlp, [3, 2, 2])[0] == pytest.approx(1.0)
    lstm_macs = layer_macs(nn.LSTM(4, 8, batch_first=True), [5, 4])
    assert lstm_macs[""] == 5 * 4 * 8 * (4 + 8)

    summary = quantize(digits_resnet18, tmp_path / "dyn.pt", "--quantization-method", "dynamic",
                       "--allow-partial-dynamic")
    manifest = read_manifest(tmp_path / "dyn.pt")
    assert manifest.transform["method"] == "dynamic" and manifest.metrics["quantized_layers"] == ["fc"]
    assert summary["quantized_mac_fraction"] < 0.001
    assert load_artifact(tmp_path / "dyn.pt", LoadOptions(threads=1))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_onnx_node_names_map_to_modules() -> None:
    assert onnx_module_name("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert onnx_module_name("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert onnx_module_name("/fc/Gemm") == "fc"


def test_pick_best_prefers_the_fastest_passing_trial() -> None:
    rows = [
        {"trial": 0, "val_top1_pct": 98.0, "speedup_x": 3.0, "meets_budget": True},
        {"trial": 1, "val_top1_pct": 97.9, "speedup_x": 3.6, "meets_budget": True},
        {"trial": 2, "val_top1_pct": 90.0, "speedup_x": 4.5, "meets_budget": False},
        {"trial": 3, "config": "broken", "error": "boom"},
    ]
    assert pick_best(rows)["trial"] == 1
    failing = [{**r, "meets_budget": False} for r in rows[:3]]
    assert pick_best(failing)["trial"] == 0  # nothing passed: the most accurate is kept
    assert pick_best([rows[3]]) is None


def test_search_stops_at_its_budget_and_keeps_the_fastest_passing(digits_resnet18: Path, tmp_path: Path) -> None:
    save = tmp_path / "searched.onnx"
    summary = quantize(digits_resnet18, save, "--max-accuracy-drop", "2.0", "--max-trials", "2",
                       "--backend", "onnxruntime")
    assert summary["trials"] == 2
    import pandas as pd

    trials = pd.read_csv(summary["trials_csv"])
    assert list(trials["trial"]) == [0, 1]
    assert list(trials["meets_budget"]) == list(trials["top1_drop_pts"] <= 2.0)
    passing = trials[trials["meets_budget"]]
    expected = passing.loc[passing["speedup_x"].idxmax(), "config"] if len(passing) else \
        trials.loc[trials["val_top1_pct"].idxmax(), "config"]
    assert summary["config"] == expected
    manifest = read_manifest(save)
    assert manifest.metrics["max_accuracy_drop"] == 2.0 and manifest.metrics["speedup_x"] == summary["speedup_x"]
    assert load_artifact(save, LoadOptions(threads=1))(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow
def test_pt2e_static_round_trip_compiled(digits_resnet18: Path, digits_data, tmp_path: Path) -> None:
    save = tmp_path / "pt2e.pt"
    summary = quantize(digits_resnet18, save, "--backend", "pt2e")
    manifest = read_manifest(save)
    assert manifest.format == "exported_program" and manifest.runtime.compile is True
    # The package stays only where it timed as fast as torch.compile here; either way the manifest says so.
    check = manifest.metrics["aoti_check"]
    assert set(check["compile_ms"]) == set(check["package_ms"]) and check["why"]
    kept = (tmp_path / "pt2e.pt.aoti.pt2").is_file()
    assert check["kept"] is kept and ((manifest.runtime.aoti or {}).get("file") == "pt2e.pt.aoti.pt2") is kept
    assert summary["size_ratio"] <= 0.30 and summary["quantized_layers"] == 20
    assert agreement_with_fp32(save, digits_resnet18, digits_data, compile=False) >= 98.0
    # The int8 ops live in the saved graph itself, not in code: the archive reloads standalone.
    program = torch.export.load(str(save))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("quantized_decomposed.") for t in targets)
    assert not any(v.dtype == torch.float32 and v.dim() == 4 and v.numel() > 10_000
                   for v in program.state_dict.values())  # no fp32 conv weights left beside the int8 ones


@pytest.mark.slow
def test_qat_fine_tunes_and_converts(digits_resnet18: Path, digits_data, tmp_path: Path) -> None:
    save = tmp_path / "qat.pt2"
    summary = quantize(digits_resnet18, save, "--quantization-method", "qat", "--qat-epochs", "0.3")
    manifest = read_manifest(save)
    assert summary["backend"] == "pt2e" and manifest.transform["method"] == "qat"
    assert summary["size_ratio"] <= 0.30
    assert agreement_with_fp32(save, digits_resnet18, digits_data, compile=False) >= 95.0
