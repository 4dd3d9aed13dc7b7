"""The main job end to end at a tiny size: every artifact, report section and figure exists and agrees."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelops.artifact import load_artifact, read_manifest
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("main_job")
    out, models = root / "runs", root / "models"
    cmd = [sys.executable, "-m", "main_job", "--tiny", "--teacher-arch", "resnet18",
           "--student-arch", "mobilenet_v3_small", "--models-dir", str(models), "--output-dir", str(out),
           "--threads", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stderr[-4000:]
    return {"out": out, "models": models, "cmd": cmd, "stdout": first.stdout}


@pytest.mark.slow
def test_every_artifact_exists_and_reloads(tiny_job):
    optimized = tiny_job["models"] / "optimized"
    paths = [tiny_job["models"] / "resnet18.pt", tiny_job["models"] / "mobilenet_v3_small.pt",
             *(optimized / name for name in ("pruned.pt", "distilled.pt", "quantized.onnx", "pruned_distilled.pt",
                                             "combined.onnx"))]
    for path in paths:
        assert read_manifest(path) is not None, path
        assert load_artifact(path).num_classes == 10
    assert read_manifest(optimized / "quantized.onnx").transform["kind"] == "quantization"
    assert read_manifest(optimized / "pruned.pt").parent["path"].endswith("resnet18.pt")
    assert [t["kind"] for t in read_manifest(optimized / "combined.onnx").lineage] == [
        "pruning", "distillation", "quantization"]


@pytest.mark.slow
def test_report_has_every_section_and_its_numbers_come_from_the_stage_json(tiny_job):
    out = tiny_job["out"]
    assert "report.md" in tiny_job["stdout"]
    report_md = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    for section in ("Baseline models", "Optimization pipeline", "Benchmark", "Async serving (end to end)"):
        assert f"## {section}" in report_md, section
        assert report["sections"][section], section
    html = (out / "report.html").read_text()
    assert "<h2>Benchmark</h2>" in html and "data:image/png;base64," in html

    stages = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert set(stages) == {"baseline", "optimize", "benchmark", "flamegraph", "serve"}
    baseline_rows = report["sections"]["Baseline models"]
    assert {r["test_accuracy"] for r in baseline_rows} == {
        v["test_accuracy"] for v in stages["baseline"].values() if isinstance(v, dict) and "test_accuracy" in v}
    assert report["sections"]["Benchmark"] == stages["benchmark"]["summary"]
    serve = report["sections"]["Async serving (end to end)"]
    assert {row["model"] for row in serve} == {"original", "optimized"}
    for row in serve:
        assert row == {"model": row["model"], **stages["serve"]["load"][row["model"]]}
        assert row["succeeded"] == row["requests_sent"] > 0 and row["failed"] == 0


@pytest.mark.slow
def test_flamegraphs_are_written(tiny_job):
    flame = json.loads((tiny_job["out"] / "stages" / "flamegraph.json").read_text())
    svgs = list((tiny_job["out"] / "flamegraph").rglob("*.svg"))
    traces = list((tiny_job["out"] / "flamegraph").rglob("*trace*.json"))
    assert svgs and all(p.stat().st_size > 1000 for p in svgs), flame
    assert traces


@pytest.mark.slow
def test_second_run_reuses_every_stage(tiny_job):
    again = subprocess.run(tiny_job["cmd"], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reusing") == 5
