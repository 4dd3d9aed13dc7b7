"""A 1000-class 224x224 model saved as a bare state_dict goes through quantize -> benchmark on fake data."""

from __future__ import annotations

import pytest
import torch

from modelops.artifact import load_artifact, read_manifest
from modelops.models import create_model
from PR3_model_optimization import model_quantization as mq
from PR4_model_benchmarking import benchmark_models

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_a_1000_class_model_is_quantized_and_benchmarked_on_fake_data(tmp_path):
    torch.manual_seed(0)
    fp32 = tmp_path / "resnet18.pt"
    torch.save(create_model("resnet18", 1000).eval().state_dict(), fp32)
    int8 = tmp_path / "resnet18_int8.onnx"
    mq.main(mq.get_args_parser().parse_args([
        "--model", str(fp32), "--save-path", str(int8), "--dataset", "fake", "--backend", "onnxruntime",
        "--threads", "1", "--calibration-batches", "1", "--calibration-batch-size", "4", "--latency-rounds", "1",
        "--latency-batch-size", "1"]))
    manifest = read_manifest(int8)
    assert (manifest.num_classes, manifest.input_shape) == (1000, [3, 224, 224])
    assert manifest.inferred["arch"] == "resnet18"  # what was identified travels with the output
    assert load_artifact(int8)(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)

    result = benchmark_models.main(benchmark_models.get_args_parser().parse_args([
        "--models", f"original:{fp32},int8:{int8}", "--dataset", "fake", "--isolation", "none", "--iters", "2",
        "--warmup", "1", "--batch-sizes", "1", "--scenarios", "none", "--accuracy-samples", "8",
        "--threads", "1", "--output-dir", str(tmp_path / "bench"), "--report-format", "markdown",
        "--no-progress"]))
    rows = {row["model"]: row for row in result["models"]}
    assert set(rows) == {"original", "int8"}
    assert all(row["error"] is None and row["latency_ms_p50"] > 0 for row in rows.values())
