"""optimize_pipeline.py: every stage's artifact is produced and reloads; reruns reuse them; bad input exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from modelops.artifact import load_artifact, read_manifest
from modelops.cli import run_cli
from PR3_model_optimization import optimize_pipeline

TINY = ["--epochs", "1", "--amount", "0.3", "--prune-steps", "1", "--limit", "128", "--calibration-batches", "2",
        "--speed-rounds", "3", "--large-batch", "4", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pipeline_builds_reloads_and_reuses(digits_resnet18: Path, tmp_path: Path) -> None:
    original = tmp_path / "original.pt"
    shutil.copy(digits_resnet18, original)
    shutil.copy(f"{digits_resnet18}.json", f"{original}.json")
    out = tmp_path / "out"
    argv = ["--model", str(original), "--output-dir", str(out), *TINY]
    summary = optimize_pipeline.main(optimize_pipeline.get_args_parser().parse_args(argv))

    assert set(summary["artifacts"]) == set(optimize_pipeline.ROWS)
    for name, path in summary["artifacts"].items():
        predictor = load_artifact(path)
        assert predictor(torch.zeros(2, 3, 32, 32)).shape == (2, 10), name
    rows = {row["model"]: row for row in summary["rows"]}
    assert rows["original"]["speedup_b1_x"] == 1.0 and rows["original"]["top1_change_pts"] == 0.0
    assert rows["combined"]["format"] == "onnx" and rows["quantized"]["format"] == "onnx"
    # Pruning removes channels and int8 stores a byte per weight: both physically shrink the file.
    assert rows["pruned"]["size_mb"] < rows["original"]["size_mb"]
    assert rows["combined"]["size_mb"] < rows["pruned_distilled"]["size_mb"] / 2
    lineage = [step["kind"] for step in read_manifest(summary["artifacts"]["combined"]).lineage]
    assert lineage[-3:] == ["pruning", "distillation", "quantization"] or lineage[-3:-1] == ["pruning", "distillation"]
    for fmt in ("json", "csv", "markdown"):
        assert Path(summary["results"][fmt]).is_file()
    assert json.loads(Path(summary["results"]["json"]).read_text())[0]["model"] == "original"

    assert summary["best_variant"] in rows and summary["measured"]

    # A second run reuses every stage instead of training again; --no-measure lists the same artifacts from their
    # manifests without running them, and names no best variant.
    again = optimize_pipeline.main(optimize_pipeline.get_args_parser().parse_args([*argv, "--no-measure"]))
    assert all(stage.get("reused") for stage in again["stages"].values())
    assert {r["model"] for r in again["rows"]} == set(rows)
    assert again["best_variant"] is None and not again["measured"]
    for row in again["rows"]:
        measured = rows[row["model"]]
        assert row == {k: v for k, v in measured.items() if not k.startswith(("top1", "latency_ms", "speedup"))}


def test_pipeline_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = optimize_pipeline.get_args_parser()
    assert run_cli(optimize_pipeline.main, parser, ["--model", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0] and "prepare_model.py" in err[0]
    assert run_cli(optimize_pipeline.main, parser, ["--model", str(tmp_path / "m.pt"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    assert run_cli(optimize_pipeline.main, parser, ["--model", str(tmp_path / "m.pt"), "--amount", "1.5"]) == 2
    assert "--amount" in capsys.readouterr().err
    assert run_cli(optimize_pipeline.main, parser, ["--model", str(tmp_path / "m.pt"), "--prune-steps", "0"]) == 2
    assert "--prune-steps must be > 0, got 0" in capsys.readouterr().err


def test_distillation_benchmark_averages_seeds_and_checks_targets() -> None:
    from PR3_model_optimization.benchmarks import bench_distillation as bench

    summaries = [{"seed": 0, "student_accuracy": 99.0, "baseline_accuracy": 99.5, "distillation_gain_pts": -0.5,
                  "train_s": 10.0},
                 {"seed": 1, "student_accuracy": 99.5, "baseline_accuracy": 98.5, "distillation_gain_pts": 1.0,
                  "train_s": 12.0}]
    rows = bench.seed_table(summaries)
    assert rows[-1] == {"seed": "mean", "student_accuracy": 99.25, "baseline_accuracy": 99.0,
                        "distillation_gain_pts": 0.25, "train_s": 11.0}
    checks = {c["metric"]: c["met"] for c in bench.check({"size_ratio": 0.47, "distillation_gain_pts": 0.25},
                                                         bench.DISTILL_TARGETS)}
    assert checks["size_ratio"] and checks["distillation_gain_pts"] and not checks["speedup_b1_x"]  # missing: not met
    code = run_cli(bench.main, bench.get_args_parser(), ["--seeds", "1", "1"])
    assert code == 2
