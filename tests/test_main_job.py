"""The main job end to end at a tiny size: every artifact, report section and figure exists and agrees, the
worker sizing of the original and the optimized model included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from main_job.cli import get_args_parser, main
from modelops.artifact import load_artifact, read_manifest
from modelops.cli import run_cli
from PR1_horizontal_pod_autoscaling.manifest_checks.schema import check_schema, render_kustomization
from PR1_horizontal_pod_autoscaling.validate_manifests import DEFAULT_KUBE_VERSIONS
from tests.conftest import REPO_ROOT

KUBECTL = shutil.which("kubectl")


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
    assert {r["top1_pct"] for r in baseline_rows} == {
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


def _written_sizing(folder) -> dict:
    """The Sizing that size_deployment wrote at the end of ``folder/sizing.md``."""
    text = (folder / "sizing.md").read_text()
    return json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])


@pytest.mark.slow
def test_sizing_saving_is_the_difference_of_the_two_sizings_written(tiny_job):
    out = tiny_job["out"]
    sizing = json.loads((out / "sizing" / "sizing.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["sizing"] == sizing
    bench = json.loads((out / "stages" / "benchmark.json").read_text())
    assert {name: entry["variant"] for name, entry in sizing["models"].items()} == {
        "original": "original", "optimized": bench["best_variant"]}
    written = {name: _written_sizing(out / "sizing" / name) for name in ("original", "optimized")}
    for name, s in written.items():
        assert s == sizing["models"][name]["sizing"], name
        # the figures are the benchmark stage's PR4 report, at one objective and load for both models
        assert s["source"] == bench["reports"]["json"] == sizing["report"]
        assert {k: s[k] for k in ("p95_ms", "base_rps", "peak_rps", "headroom")} == {
            k: sizing["objective"][k] for k in ("p95_ms", "base_rps", "peak_rps", "headroom")}
    original, optimized = written["original"], written["optimized"]
    # the default peak load is what the original serves with one replica per requests partition
    assert original["replicas_peak"] == original["partitions"]
    saved = original["replicas_peak"] - optimized["replicas_peak"]
    rows = {row["model"]: row for row in report["sections"]["Worker sizing"]}
    assert rows["optimized"]["replicas_saved"] == saved == sizing["saving"]["replicas_saved"]
    assert rows["optimized"]["replica_ratio_x"] == original["replicas_peak"] / optimized["replicas_peak"]
    for name, s in written.items():
        assert (rows[name]["throughput_per_replica_rps"], rows[name]["min_replicas"], rows[name]["max_replicas"],
                rows[name]["lag_threshold"], rows[name]["cores"]) == (
            s["samples_per_s"], s["min_replicas"], s["max_replicas"], s["lag_threshold"], s["cpu"])
    assert "## Worker sizing" in (out / "report.md").read_text()
    assert "<h2>Worker sizing</h2>" in (out / "report.html").read_text()
    # the terminal's one line on the saving
    assert f"worker replicas at peak {original['replicas_peak']} for the original, " \
           f"{optimized['replicas_peak']} for the optimized model ({bench['best_variant']}): {saved} saved" \
           in tiny_job["stdout"]


@pytest.mark.slow
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (needed for kustomize)")
def test_each_sizing_overlay_renders_and_validates(tiny_job):
    for name in ("original", "optimized"):
        folder = tiny_job["out"] / "sizing" / name
        s = _written_sizing(folder)
        docs, problems = render_kustomization(folder, KUBECTL)
        assert not problems, problems
        for doc in docs:
            assert not check_schema(doc, DEFAULT_KUBE_VERSIONS[-1:]), doc.label()
        objects = {f"{d.body['kind']}/{d.body['metadata']['name']}": d.body for d in docs}
        hpa = objects["HorizontalPodAutoscaler/inference-worker"]["spec"]
        (lag,) = [m for m in hpa["metrics"] if m["type"] == "Pods"]
        assert (hpa["minReplicas"], hpa["maxReplicas"], lag["pods"]["target"]["averageValue"]) == (
            s["min_replicas"], s["max_replicas"], str(s["lag_threshold"])), name
        scaled = objects["ScaledObject/inference-worker"]["spec"]
        (kafka,) = [t for t in scaled["triggers"] if t["type"] == "kafka"]
        assert kafka["metadata"]["lagThreshold"] == str(s["lag_threshold"]), name
        (container,) = objects["Deployment/inference-worker"]["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"] == s["cpu"], name


def test_an_objective_out_of_range_exits_2_before_any_stage(tmp_path, capsys):
    out = tmp_path / "runs"
    code = run_cli(main, get_args_parser(), ["--tiny", "--models-dir", str(tmp_path / "models"), "--output-dir",
                                             str(out), "--base-rps", "10", "--peak-rps", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: --base-rps 10 is above --peak-rps 5"
    assert not (out / "stages").exists()
