"""PT2E int8 served from an AOTInductor package: packaged, loaded without a compile, outputs as the compiled path's;
a missing or foreign package falls back to torch.compile with the reason logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.artifact import Manifest, load_artifact, manifest_path, write_manifest
from modelops.runtimes import aoti
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
    predictor = load_artifact(packaged, compile=False)
    assert isinstance(predictor._fn, nn.Module) and type(predictor._fn).__name__ != "OptimizedModule"
