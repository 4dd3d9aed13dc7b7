"""OpenVINO's model cache: a second load of the same ONNX file reads the compiled blob, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.artifact import Manifest, export_onnx, load_artifact, write_manifest
from modelops.load_options import LoadOptions
from modelops.runtimes.openvino_predictor import CACHE_ENV, OpenVinoRunner, openvino_cache_dir

pytest.importorskip("openvino", reason="openvino is not installed")


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A two-layer conv net on 3x16x16 input as an ONNX artifact that asks for the OpenVINO runtime."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    export_onnx(model, path, torch.zeros(2, 3, 16, 16))
    write_manifest(path, Manifest(num_classes=4, input_shape=[3, 16, 16], runtime={"engine": "openvino"}), fmt="onnx")
    return path


def test_second_load_reads_the_cache_with_equal_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "ov_cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    model = tiny_onnx(tmp_path / "m.onnx")
    batch = torch.randn(3, 3, 16, 16)

    first = load_artifact(model, LoadOptions(threads=1))
    second = load_artifact(model, LoadOptions(threads=1))

    assert first.backend == second.backend == "openvino"
    assert not first._fn.from_cache and second._fn.from_cache
    assert first._fn.cache_dir == second._fn.cache_dir and first._fn.cache_dir.parent == cache
    assert any(first._fn.cache_dir.iterdir())
    torch.testing.assert_close(first(batch), second(batch), rtol=0, atol=0)


def test_a_changed_file_is_compiled_again(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "m.onnx", seed=0)
    assert OpenVinoRunner(model, threads=1, cache_dir=tmp_path / "c").from_cache is False
    tiny_onnx(model, seed=1)  # other weights at the same path, same size, within the same second

    again = OpenVinoRunner(model, threads=1, cache_dir=tmp_path / "c")
    fresh = OpenVinoRunner(model, threads=1, cache_dir=None)

    batch = torch.randn(2, 3, 16, 16)
    assert not again.from_cache
    torch.testing.assert_close(again(batch), fresh(batch), rtol=0, atol=0)


def test_cache_folder_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert openvino_cache_dir() == tmp_path / "modelops" / "openvino"
    monkeypatch.setenv(CACHE_ENV, "off")
    assert openvino_cache_dir() is None


def test_unwritable_cache_folder_still_loads(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    runner = OpenVinoRunner(tiny_onnx(tmp_path / "m.onnx"), threads=1, cache_dir=blocker / "cache")
    assert runner.cache_dir is None and not runner.from_cache
    assert runner(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
