"""PT2E int8 served from an AOTInductor package: packaged, loaded without a compile, outputs as the compiled path's;
a missing or foreign package falls back to torch.compile with the reason logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.artifact import Manifest, load_artifact, manifest_path, read_manifest, write_manifest
from modelops.load_options import LoadOptions
from modelops.model_process import ProcessTimes
from modelops.runtimes import aoti
from PR3_model_optimization.quantization import aoti_check as check
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.pt2e_backend import package_for_serving, quantize_pt2e, save_pt2e

pytest.importorskip("torchao", reason="torchao is not installed")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PT2E int8 conv net saved as an artifact, with its AOTInductor package and manifest entry."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    calibration = [torch.randn(16, 3, 16, 16)]
    graph = quantize_pt2e(model, calibration[0][:2], QuantConfig(backend="pt2e"), calibration)
    path = tmp_path_factory.mktemp("aoti") / "tiny.pt2"
    save_pt2e(graph, path, calibration[0][:2])
    entry = package_for_serving(path, calibration[0])
    assert entry is not None
    write_manifest(path, Manifest(num_classes=4, input_shape=[3, 16, 16], runtime={"compile": True, "aoti": entry}),
                   fmt="exported_program")
    return path


def with_runtime(path: Path, tmp_path: Path, drop: bool = False, **changes) -> Path:
    """A copy of the artifact and its package whose manifest's ``runtime.aoti`` entry is changed (or dropped)."""
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    aoti.package_path(copy).write_bytes(aoti.package_path(path).read_bytes())
    manifest = json.loads(manifest_path(path).read_text())
    manifest["runtime"]["aoti"].update(changes)
    if drop:
        del manifest["runtime"]["aoti"]
    manifest_path(copy).write_text(json.dumps(manifest))
    return copy


@pytest.mark.slow  # torch.compile of the comparison model: about 6 s beside the 12 s package build
def test_package_loads_without_compile_and_matches_torch_compile(packaged: Path, tmp_path: Path) -> None:
    entry = json.loads(manifest_path(packaged).read_text())["runtime"]["aoti"]
    assert entry == {"file": "tiny.pt2.aoti.pt2", "torch": aoti.torch_release(), "isa": aoti.host_isa()}

    served = load_artifact(packaged)
    compiled = load_artifact(with_runtime(packaged, tmp_path, drop=True))
    assert isinstance(served._fn, aoti.PackagedModel)
    assert type(compiled._fn).__name__ == "OptimizedModule"  # torch.compile's wrapper
    for batch_size in (1, 5):  # the package keeps the program's dynamic batch
        batch = torch.randn(batch_size, 3, 16, 16)
        torch.testing.assert_close(served(batch), compiled(batch), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("change", "reason"), [
    ({"file": "gone.aoti.pt2"}, "gone.aoti.pt2 is missing"),
    ({"torch": "1.0.0"}, "built with torch 1.0.0"),
    ({"isa": "an ISA no CPU has"}, "which this CPU lacks"),
])
def test_unusable_package_falls_back_to_torch_compile_with_the_reason(
        packaged: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict, reason: str) -> None:
    artifact = with_runtime(packaged, tmp_path, **change)
    with caplog.at_level(logging.WARNING, logger="modelops.runtimes.aoti"):
        predictor = load_artifact(artifact)
    assert type(predictor._fn).__name__ == "OptimizedModule"  # torch.compile's wrapper
    assert reason in caplog.text and "compiling with torch.compile" in caplog.text


def test_corrupt_package_falls_back(packaged: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    artifact = with_runtime(packaged, tmp_path)
    aoti.package_path(artifact).write_bytes(b"not a package")
    with caplog.at_level(logging.WARNING, logger="modelops.runtimes.aoti"):
        predictor = load_artifact(artifact)
    assert type(predictor._fn).__name__ == "OptimizedModule" and "does not load" in caplog.text


def test_eager_load_ignores_the_package(packaged: Path) -> None:
    predictor = load_artifact(packaged, LoadOptions(compile=False))
    assert isinstance(predictor._fn, nn.Module) and type(predictor._fn).__name__ != "OptimizedModule"


class PackageTimer:
    """Stands in for time_artifacts in the package check: fixed ms per variant, after checking what it was given
    (two copies of the artifact, only one of them with the package beside it and in its manifest)."""

    def __init__(self, compile_ms: float, package_ms: float | None) -> None:
        self.ms = {check.COMPILED: compile_ms, check.PACKAGED: package_ms}

    def __call__(self, artifacts, batch_sizes, rounds: int, *, options: LoadOptions | None = None) -> ProcessTimes:
        compiled, packaged = Path(artifacts[check.COMPILED]), Path(artifacts[check.PACKAGED])
        assert "aoti" not in json.loads(manifest_path(compiled).read_text())["runtime"]
        assert json.loads(manifest_path(packaged).read_text())["runtime"]["aoti"]["file"] == "tiny.pt2.aoti.pt2"
        assert aoti.package_path(packaged).is_file() and not aoti.package_path(compiled).is_file()
        times = ProcessTimes()
        for name, ms in self.ms.items():
            if ms is None:
                times.errors[name] = "RuntimeError: the package would not load"
            else:
                times.samples_ms[name] = {b: [ms * b] * rounds for b in batch_sizes}
        return times


@pytest.mark.parametrize(("compile_ms", "package_ms", "kept"), [
    (10.0, 9.0, True),    # faster
    (10.0, 10.4, True),   # within the tolerance its cold start is worth
    (10.0, 50.0, False),  # five times slower, as a ResNet-50 package measured on one CPU
    (10.0, None, False),  # does not run
])
def test_a_package_is_kept_only_where_it_times_as_fast_as_torch_compile(
        packaged: Path, compile_ms: float, package_ms: float | None, kept: bool) -> None:
    manifest = read_manifest(packaged)
    keep, record = check.check_package(packaged, manifest, manifest.runtime.aoti, [1, 4, 4], rounds=3,
                                       timer=PackageTimer(compile_ms, package_ms))
    assert keep is kept and record["kept"] is kept and record["why"]
    if package_ms is not None:
        assert record["compile_ms"] == {1: compile_ms, 4: compile_ms * 4}
        assert record["speed_vs_compile"] == pytest.approx(compile_ms / package_ms, rel=1e-3)
