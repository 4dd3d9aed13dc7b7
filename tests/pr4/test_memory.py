"""Memory that belongs to the model: a tiny and a large model, each in its own worker, report their own figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelops.artifact import Manifest, save_artifact
from modelops.memory import onnx_weight_bytes, peak_rss_mb, reset_peak_rss, rss_mb, weight_bytes
from modelops.models import create_model
from PR4_model_benchmarking import benchmark_models


def _random_artifact(arch: str, out: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, 10).eval()
    path = out / f"{arch}.pt"
    save_artifact(model, path, Manifest(arch=arch, num_classes=10, input_shape=[3, 32, 32], dataset="digits"))
    return path


def test_weights_are_counted_from_the_loaded_model(digits_resnet18, bench_variants):
    from modelops.artifact import load_artifact

    fp32 = weight_bytes(load_artifact(digits_resnet18))
    params = sum(p.numel() for p in load_artifact(digits_resnet18).module.parameters())
    assert params * 4 <= fp32 <= params * 4 * 1.01  # fp32 parameters plus batch-norm buffers
    int8 = onnx_weight_bytes(bench_variants["int8"])
    assert 0.2 < int8 / fp32 < 0.35  # int8 weights with fp32 biases and scales: about a quarter


def test_peak_rss_resets_to_the_current_footprint():
    if not reset_peak_rss():
        pytest.skip("this OS cannot reset a process's peak RSS")
    block = bytearray(200 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
    high = peak_rss_mb()
    del block
    reset_peak_rss()
    assert high - peak_rss_mb() > 150 and peak_rss_mb() < rss_mb() + 20


@pytest.mark.slow
def test_tiny_and_large_model_report_their_own_memory(tmp_path):
    tiny, large = _random_artifact("mobilenet_v3_small", tmp_path), _random_artifact("resnet50", tmp_path)
    args = benchmark_models.get_args_parser().parse_args([
        "--models", f"tiny:{tiny},large:{large}", "--isolation", "process", "--iters", "2", "--warmup", "1",
        "--batch-sizes", "1,8", "--scenarios", "none", "--accuracy-samples", "0", "--threads", "1",
        "--settle-ms", "0", "--report-format", "json", "--output-dir", str(tmp_path / "out"), "--no-progress"])
    result = benchmark_models.main(args)
    rows = {row["model"]: row for row in result["models"]}
    weights = {name: rows[name]["weights_mb"] for name in rows}
    assert weights["large"] > 80 and weights["tiny"] < 8  # ResNet-50 ~90 MB, MobileNetV3-small ~6 MB of fp32
    gap = weights["large"] - weights["tiny"]
    # the process that holds only the large model rises by about its weights more than the tiny one's
    assert rows["large"]["model_rss_mb"] - rows["tiny"]["model_rss_mb"] > 0.6 * gap
    assert rows["large"]["load_rss_mb"] - rows["tiny"]["load_rss_mb"] > 0.6 * gap
    assert rows["tiny"]["model_rss_mb"] < 0.5 * rows["large"]["model_rss_mb"]
    peaks = {(r["model"], r["batch_size"]): r["peak_rss_mb"] for r in result["report"]["per_batch"]}
    assert set(peaks) == {("tiny", 1), ("tiny", 8), ("large", 1), ("large", 8)}
    assert peaks[("large", 8)] > peaks[("tiny", 8)] + 0.6 * gap
