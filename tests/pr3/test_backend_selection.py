"""``--backend auto``, the OpenVINO runtime and bf16: real artifacts, an injected timer for the choice."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from modelops.artifact import RuntimeHints, load_artifact, read_manifest, write_manifest
from modelops.cli import run_cli
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.model_process import ProcessTimes
from modelops.runtimes.openvino_predictor import OpenVinoRunner
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization.quantization import auto
from PR3_model_optimization.quantization.backends import REGISTRY
from PR3_model_optimization.quantization.bf16 import bf16_support

openvino = pytest.importorskip("openvino", reason="openvino is not installed")

FAST = ["--threads", "1", "--calibration-batches", "3", "--latency-rounds", "2", "--latency-batch-size", "4"]
BF16, BF16_WHY = bf16_support()


def quantize(model: Path, save: Path, *extra: str) -> dict:
    args = mq.get_args_parser().parse_args(["--model", str(model), "--save-path", str(save), *FAST, *extra])
    return mq.main(args)


class FakeTimer:
    """Stands in for time_artifacts: each model 'takes' a set number of ms; records the batch sizes asked.

    The real artifacts still load and run once here: a candidate that cannot fails as it would in its worker.
    """

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms
        self.batch_sizes: list[int] = []
        self.models: list[set[str]] = []

    def __call__(self, artifacts, batch_sizes, rounds: int, *, options: LoadOptions | None = None) -> ProcessTimes:
        self.batch_sizes = list(batch_sizes)
        self.models.append(set(artifacts))
        times = ProcessTimes()
        for name, path in artifacts.items():
            try:
                predictor = load_artifact(path, options)
                predictor(torch.zeros(batch_sizes[0], *predictor.input_shape))
            except Exception as exc:
                times.errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            times.infos[name] = {"cold_start_s": 0.0}
            times.samples_ms[name] = {b: [self.ms[name] * b] * rounds for b in batch_sizes}
        return times


@pytest.fixture(scope="module")
def built(digits_resnet18: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, Path, object]]:
    """Real int8 artifacts from two backends (ONNX Runtime and OpenVINO/NNCF), with their trial rows."""
    out = tmp_path_factory.mktemp("candidates")
    trials = []
    for backend in ("onnxruntime", "openvino"):
        save = out / f"{backend}.onnx"
        summary = quantize(digits_resnet18, save, "--backend", backend)
        config = mq.QuantConfig(backend=backend, keep_float=("conv1",), calibration_batches=3)
        row = {"backend": backend, "val_top1_pct": summary["val_top1_pct"], "top1_drop_pts": summary["top1_drop_pts"],
               "speedup_x": summary["speedup_x"], "meets_budget": True, "size_mb": summary["size_mb"]}
        trials.append((row, save, config))
    return trials


def select(built, fp32, timer, budget: float = 1.0, failed=()) -> auto.Selection:
    return auto.select(fp32, built, list(failed), budget, [1, 4], rounds=2, options=LoadOptions(threads=1),
                       timer=timer)


@pytest.fixture(scope="module")
def fp32(digits_resnet18: Path) -> Path:
    return digits_resnet18


def test_openvino_artifact_runs_on_openvino_and_agrees(built, digits_resnet18: Path, digits_data) -> None:
    _, save, _ = built[1]
    manifest = read_manifest(save)
    assert manifest.runtime == RuntimeHints(engine="openvino") and manifest.transform["backend"] == "openvino"
    predictor = load_artifact(save, LoadOptions(threads=1))
    assert predictor.backend == "openvino"
    assert predictor(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    assert manifest.metrics["quantized_layers_count"] >= 19  # NNCF put int8 weights on every conv but conv1
    assert manifest.metrics["top1_drop_pts"] <= 2.0


@pytest.mark.parametrize("fastest", ["onnxruntime", "openvino"])
def test_auto_keeps_the_measured_fastest_and_records_every_candidate(built, fp32, fastest: str) -> None:
    ms = {"fp32": 10.0, "onnxruntime-static": 4.0, "openvino-static": 4.0}
    ms[f"{fastest}-static"] = 2.0
    timer = FakeTimer(ms)
    selection = select(built, fp32, timer)
    assert selection.chosen is not None and selection.chosen.config.backend == fastest
    assert timer.batch_sizes == [1, 4]
    assert all(models == {"fp32", "onnxruntime-static", "openvino-static"} for models in timer.models)
    assert [r["backend"] for r in selection.rows] == ["onnxruntime", "openvino"]
    for row in selection.rows:
        assert row["latency_ms_p50_b1"] and row["latency_ms_p50_b4"] and row["cold_start_s"] is not None
        assert row["chosen"] == (row["backend"] == fastest)
    record = selection.record
    assert record["chosen"] == f"{fastest}-static" and fastest in record["reason"]
    assert record["latency_ms_p50_fp32"] == {"1": 10.0, "4": 40.0} and record["cpu_model"]
    assert set(record["isa_flags"]) <= set(auto.ISA_FLAGS)
    assert "| onnxruntime" in selection.table and "fp32 eager: b1 10.00 ms" in selection.table


def test_auto_respects_the_accuracy_budget(built, fp32) -> None:
    over = [(dict(row, top1_drop_pts=1.5 if row["backend"] == "openvino" else 0.2), path, config)
            for row, path, config in built]
    selection = select(over, fp32, FakeTimer({"fp32": 10.0, "onnxruntime-static": 5.0, "openvino-static": 1.0}),
                       budget=1.0)
    assert selection.chosen.config.backend == "onnxruntime"
    assert "openvino-static (drop 1.50 > 1.00)" in selection.reason


def test_unavailable_and_failing_backends_are_skipped_with_a_note(built, fp32, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "pt2e", dataclasses.replace(REGISTRY["pt2e"], requires="no_such_runtime_here"))
    runnable, skipped = auto.unavailable_candidates(auto.auto_candidates(mq.QuantConfig(), ["pt2e", "openvino"]))
    assert [c.backend for c in runnable] == ["openvino"]
    assert "no_such_runtime_here is not installed" in skipped[0].error
    # A candidate whose artifact cannot be loaded (a truncated file) drops out at timing; the next one wins.
    (row, path, config), ort = built[1], built[0]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:2000])
    write_manifest(broken, read_manifest(path))
    timer = FakeTimer({"fp32": 10.0, "onnxruntime-static": 5.0, "openvino-static": 1.0})
    selection = select([ort, (row, broken, config)], fp32, timer, failed=skipped)
    assert selection.chosen.config.backend == "onnxruntime"
    errors = {r["backend"]: r["error"] for r in selection.rows}
    assert errors["openvino"].startswith("load failed") and errors["pt2e"].startswith("unavailable")
    assert "not chosen: " in selection.reason and "pt2e-static (unavailable" in selection.reason


def test_auto_end_to_end_without_pt2e_writes_the_winner_and_its_record(digits_resnet18: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    # PT2E is real but compiles for minutes on 2 shared cores: the slow test below runs it.
    monkeypatch.setitem(REGISTRY, "pt2e", dataclasses.replace(REGISTRY["pt2e"], requires="pt2e_left_to_slow_test"))
    summary = quantize(digits_resnet18, tmp_path / "auto.onnx")
    manifest = read_manifest(tmp_path / "auto.onnx")
    record = manifest.metrics["backend_selection"]
    assert summary["backend"] == manifest.transform["backend"] == record["chosen"].split("-")[0]
    assert {r["backend"] for r in record["candidates"]} == {"onnxruntime", "openvino", "pt2e"}
    assert record["batch_sizes"] == [1, 4] and "max_accuracy_drop" in record
    assert load_artifact(tmp_path / "auto.onnx", LoadOptions(threads=1))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.skipif(not BF16, reason=f"no bf16 units on this CPU: {BF16_WHY}")
def test_bf16_on_openvino_needs_no_calibration_and_keeps_accuracy(digits_resnet18: Path, tmp_path: Path) -> None:
    save = tmp_path / "bf16.onnx"
    summary = quantize(digits_resnet18, save, "--quantization-method", "bf16", "--backend", "openvino")
    manifest = read_manifest(save)
    assert manifest.runtime == RuntimeHints(engine="openvino", precision="bf16")
    assert manifest.transform["dtype"] == "bf16" and summary["quantized_layers"] == 0
    assert load_artifact(save, LoadOptions(threads=1)).backend == "openvino"
    assert OpenVinoRunner(save, threads=1, precision="bf16").precision == "bf16"
    assert summary["top1_drop_pts"] <= 0.6  # two val images of 360 at most


def test_bf16_without_bf16_units_exits_2(digits_resnet18: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(mq, "bf16_support", lambda: (False, "Test CPU has neither AVX512-BF16 nor AMX-BF16"))
    argv = ["--model", str(digits_resnet18), "--save-path", str(tmp_path / "q.onnx"), "--quantization-method", "bf16"]
    assert run_cli(mq.main, mq.get_args_parser(), argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --quantization-method bf16 needs a CPU with AVX512-BF16 or AMX-BF16: Test CPU has "
                   "neither AVX512-BF16 nor AMX-BF16"]
    with pytest.raises(UsageError, match="not onnxruntime"):
        mq.QuantConfig(backend="onnxruntime", method="bf16")


@pytest.mark.slow
def test_auto_with_every_backend_including_pt2e(digits_resnet18: Path, tmp_path: Path) -> None:
    summary = quantize(digits_resnet18, tmp_path / "auto_all.onnx")
    rows = {r["backend"]: r for r in summary["candidates"]}
    assert set(rows) == {"onnxruntime", "pt2e", "openvino"}
    assert all(not r["error"] and r["latency_ms_p50_b1"] for r in rows.values())
    assert sum(r["chosen"] for r in rows.values()) == 1 and summary["auto_reason"]


@pytest.mark.slow
@pytest.mark.skipif(not BF16, reason=f"no bf16 units on this CPU: {BF16_WHY}")
def test_bf16_auto_measures_openvino_and_inductor(digits_resnet18: Path, tmp_path: Path) -> None:
    summary = quantize(digits_resnet18, tmp_path / "bf16_auto.onnx", "--quantization-method", "bf16")
    rows = {r["backend"]: r for r in summary["candidates"]}
    assert set(rows) == {"openvino", "pt2e"} and all(r["method"] == "bf16" for r in rows.values())
    chosen = [r for r in rows.values() if r["chosen"]]
    assert len(chosen) == 1 and summary["backend"] == chosen[0]["backend"]
