"""A benchmark with no dataset: two user TorchScript files without manifests, timed on their own input shape."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modelops.cli import run_cli
from PR4_model_benchmarking import benchmark_models
from PR4_model_benchmarking.measure import NO_DATASET


def save_scripted(path: Path, stride: int) -> None:
    """A tiny 10-class net that runs at any size, saved as a user would: a trace, no manifest."""
    torch.manual_seed(stride)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=stride), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)).eval()
    torch.jit.save(torch.jit.trace(net, torch.zeros(2, 3, 64, 64)), str(path))


def test_two_manifestless_torchscript_models_without_a_dataset_are_timed_and_accuracy_is_not_measured(
        tmp_path, capsys):
    original, small = tmp_path / "a.pt", tmp_path / "b.pt"
    save_scripted(original, 1)
    save_scripted(small, 2)
    out = tmp_path / "bench"
    code = run_cli(benchmark_models.main, benchmark_models.get_args_parser(), [
        "--models", f"original:{original},small:{small}", "--isolation", "none", "--iters", "2", "--warmup", "1",
        "--batch-sizes", "1", "--scenarios", "none", "--threads", "1", "--output-dir", str(out),
        "--report-format", "markdown,json", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    markdown = next(out.glob("*.md")).read_text()
    assert NO_DATASET in markdown
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["config"]["dataset"] is None and report["config"]["accuracy"] == NO_DATASET
    rows = {row["model"]: row for row in report["models"]}
    assert set(rows) == {"original", "small"}
    assert all(row["error"] is None and row["latency_ms_p50"] > 0 for row in rows.values())
    assert all(row.get("top1_pct") is None for row in rows.values())
