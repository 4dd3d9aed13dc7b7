"""The artifact contract: every format round-trips, manifests say what they must, bad files fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from modelops.artifact import (
    FORMATS,
    Manifest,
    detect_format,
    load_artifact,
    load_module,
    manifest_path,
    read_manifest,
    save_artifact,
)
from modelops.errors import ArtifactError, UsageError
from modelops.load_options import LoadOptions
from modelops.models import create_model, resize_to_state_dict

SUFFIX = {"state_dict": ".pt", "torchscript": ".pt", "exported_program": ".pt2", "onnx": ".onnx", "pickle": ".pt"}


@pytest.fixture(scope="module")
def small_model() -> tuple[torch.nn.Module, Manifest]:
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    manifest = Manifest(arch="resnet18", num_classes=10, input_shape=[3, 32, 32], dataset="digits",
                        labels=[str(i) for i in range(10)], preprocessing={"size": 32, "mean": [0.3] * 3,
                                                                           "std": [0.4] * 3})
    return model, manifest


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_with_same_logits(tmp_path, small_model, fmt):
    model, manifest = small_model
    path = tmp_path / f"model{SUFFIX[fmt]}"
    written = save_artifact(model, path, manifest, fmt=fmt)
    assert written.format == fmt
    assert detect_format(path) == ("state_dict" if fmt == "pickle" else fmt)

    predictor = load_artifact(path, LoadOptions(trust_pickle=(fmt == "pickle")))
    batch = torch.randn(3, 3, 32, 32)  # batch size other than the export example: dynamic batch works
    with torch.no_grad():
        expected = model(batch)
    got = predictor(batch)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert predictor.manifest.sha256 == written.sha256


def test_manifest_records_file_facts_and_lineage(tmp_path, small_model):
    model, manifest = small_model
    parent_path = tmp_path / "base.pt"
    parent = save_artifact(model, parent_path, manifest.model_copy(update={"metrics": {"accuracy": 97.5}}))
    on_disk = json.loads(manifest_path(parent_path).read_text())
    for key in ("format", "file", "arch", "num_classes", "input_shape", "input_dtype", "preprocessing", "labels",
                "transform", "metrics", "sha256", "size_mb", "created_at", "versions"):
        assert key in on_disk, key
    assert on_disk["file"] == "base.pt" and on_disk["metrics"]["accuracy"] == 97.5
    assert on_disk["size_mb"] == pytest.approx(parent_path.stat().st_size / 1e6, rel=1e-3)

    child_manifest = parent.derive(parent_path=parent_path, transform={"kind": "quantization", "method": "static"})
    child = save_artifact(model, tmp_path / "child.onnx", child_manifest)
    assert child.parent == {"path": str(parent_path), "sha256": parent.sha256, "format": "state_dict"}
    assert child.lineage == [{"kind": "quantization", "method": "static"}]
    assert child.metrics == {"size_mb": child.size_mb}  # parent's metrics are not inherited
    assert read_manifest(tmp_path / "child.onnx").format == "onnx"


def test_structurally_smaller_state_dict_reloads_as_eager_module(tmp_path, small_model):
    model, manifest = small_model
    pruned = create_model("resnet18", 10)
    # Halve the stem's output channels and everything that consumes them, as structured pruning would.
    state = pruned.state_dict()
    state["conv1.weight"] = state["conv1.weight"][:32]
    for key in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        state[key] = state[key][:32]
    for block in ("layer1.0.conv1.weight", "layer1.1.conv1.weight"):
        state[block] = state[block][:, :32]
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"][:32]
    state["layer1.1.conv2.weight"] = state["layer1.1.conv2.weight"][:32]
    for bn in ("layer1.0.bn2", "layer1.1.bn2"):
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{bn}.{key}"] = state[f"{bn}.{key}"][:32]
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :32]
    state["layer2.0.downsample.0.weight"] = state["layer2.0.downsample.0.weight"][:, :32]
    smaller = resize_to_state_dict(create_model("resnet18", 10), state)
    smaller.load_state_dict(state)
    path = tmp_path / "pruned.pt"
    save_artifact(smaller, path, manifest)
    reloaded, _ = load_module(path)
    assert reloaded.conv1.out_channels == 32
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())
    assert reloaded(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_untrusted_pickle_is_refused_and_names_the_flag(tmp_path, small_model):
    model, manifest = small_model
    path = tmp_path / "whole.pt"
    save_artifact(model, path, manifest, fmt="pickle")
    manifest_path(path).unlink()  # no manifest: the loader must still refuse the pickle
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        load_artifact(path)
    assert load_artifact(path, LoadOptions(trust_pickle=True))(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_traced_formats_are_refused_where_an_eager_model_is_needed(tmp_path, small_model):
    model, manifest = small_model
    path = tmp_path / "model.onnx"
    save_artifact(model, path, manifest)
    with pytest.raises(ArtifactError, match="inference-only"):
        load_module(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pt", None, "does not exist"),
        ("model.txt", b"hello", "unsupported extension"),
        ("corrupt.pt", b"PK\x03\x04 this is not really a zip", "corrupt|not a readable"),
        ("garbage.onnx", b"\x00\x01\x02 not a model", "not a readable model file"),
    ],
)
def test_bad_model_files_raise_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_truncated_state_dict_is_reported_as_corrupt(tmp_path, small_model):
    model, manifest = small_model
    path = tmp_path / "model.pt"
    save_artifact(model, path, manifest)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_wrong_input_shape_is_a_usage_error(tmp_path, small_model):
    model, manifest = small_model
    path = tmp_path / "model.pt"
    save_artifact(model, path, manifest)
    predictor = load_artifact(path)
    with pytest.raises(UsageError, match=r"expects input of shape \(N, 3, 32, 32\)"):
        predictor.check_input(torch.randn(1, 3, 64, 64))


def test_artifact_loads_in_a_fresh_process(tmp_path, small_model):
    model, manifest = small_model
    path = tmp_path / "model.pt"
    save_artifact(model, path, manifest)
    code = (
        "import torch, sys; from modelops import load_artifact; "
        f"p = load_artifact({str(path)!r}); print(tuple(p(torch.zeros(2, 3, 32, 32)).shape))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(2, 10)")


def test_fresh_model_batchnorm_statistics_follow_the_data_within_a_short_run():
    # torchvision's MobileNetV3 ships momentum 0.01: 30 steps would leave the running mean at 26% of the data's.
    model = create_model("mobilenet_v3_small", 10).train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    bn.register_forward_hook(lambda module, args, out: seen.append(args[0].mean(dim=(0, 2, 3))))
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(30):
            model(torch.randn(8, 3, 32, 32) + 2.0)
    data_mean = torch.stack(seen).mean(0)
    assert torch.allclose(bn.running_mean, data_mean, atol=0.1 * float(data_mean.abs().max()))
    assert all(m.momentum == 0.1 for m in create_model("resnet18", 10).modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # PyTorch's default stays as it is
