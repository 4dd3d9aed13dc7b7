"""The model registry: serving binds to what it names (a fallback only with the same input shape and labels), and
its ``default_model`` is one of its models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from modelops.artifact import Manifest, write_manifest
from modelops.errors import UsageError
from PR2_async_inference.registry import ModelSpec, Registry, load_registry, model_manifest, write_registry

PR2 = Path(__file__).resolve().parents[2] / "PR2_async_inference"


def artifact(path: Path, input_shape: list[int], labels: list[str]) -> Path:
    path.write_bytes(b"weights")  # the registry reads manifests only; no model is loaded here
    write_manifest(path, Manifest(num_classes=len(labels), input_shape=input_shape, labels=labels))
    return path


def registry(tmp_path: Path, **entry) -> Path:
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"artifact": "int8.onnx", **entry}}}))
    return path


def test_a_missing_artifact_without_fallback_names_its_path(tmp_path):
    spec = load_registry(registry(tmp_path)).get("m")
    assert spec.resolve() is None
    assert str(tmp_path / "int8.onnx") in spec.unavailable_reason()
    with pytest.raises(FileNotFoundError, match=r"int8\.onnx"):
        model_manifest(spec)


def test_a_fallback_with_other_inputs_is_never_served(tmp_path):
    artifact(tmp_path / "resnet18.pt", [3, 32, 32], ["a", "b"])
    spec = load_registry(registry(tmp_path, fallbacks=["resnet18.pt"], input_shape=[3, 224, 224],
                                  labels=["a", "b"])).get("m")
    assert spec.resolve() is None
    assert "no fallback declares its input shape [3, 224, 224]" in spec.unavailable_reason()


def test_a_fallback_is_not_checked_against_nothing(tmp_path):
    artifact(tmp_path / "resnet18.pt", [3, 224, 224], ["a", "b"])
    spec = load_registry(registry(tmp_path, fallbacks=["resnet18.pt"])).get("m")
    assert spec.resolve() is None
    assert "declares no input_shape and labels" in spec.unavailable_reason()


def test_a_fallback_with_the_same_inputs_and_labels_is_served(tmp_path):
    fallback = artifact(tmp_path / "fp32.onnx", [3, 224, 224], ["a", "b"])
    spec = load_registry(registry(tmp_path, fallbacks=["fp32.onnx"], input_shape=[3, 224, 224],
                                  labels=["a", "b"])).get("m")
    assert spec.resolve() == fallback and spec.unavailable_reason() is None
    assert model_manifest(spec)[0] == fallback
    artifact(tmp_path / "int8.onnx", [3, 224, 224], ["a", "b"])
    assert spec.resolve() == tmp_path / "int8.onnx"  # the named artifact wins once it exists


def test_the_default_model_is_the_named_one_else_the_first_and_always_a_model(tmp_path):
    models = {"original": tmp_path / "a.pt", "optimized": tmp_path / "b.pt"}
    assert load_registry(write_registry(tmp_path / "first.yaml", models)).default_model == "original"
    assert load_registry(write_registry(tmp_path / "named.yaml", models, "optimized")).default_model == "optimized"
    with pytest.raises(UsageError, match="default_model 'image_classification' is not one of its models: "
                                         "optimized, original"):
        write_registry(tmp_path / "bad.yaml", models, "image_classification")
    bad = tmp_path / "hand_written.yaml"
    bad.write_text(yaml.safe_dump({"default_model": "gone", "models": {"m": {"artifact": "a.pt"}}}))
    with pytest.raises(UsageError, match=f"registry {bad}: default_model 'gone' is not one of its models: m"):
        load_registry(bad)
    with pytest.raises(ValidationError, match="default_model 'gone' is not one of its models: m"):
        Registry(default_model="gone", models={"m": ModelSpec(name="m", artifact=tmp_path / "a.pt")})


def test_the_shipped_registry_serves_pr3s_int8_model_by_default_and_nothing_in_its_place(tmp_path):
    """A request without model_name gets the shipped registry's default model, image_classification, PR3's
    quantized_model.pt; while that file is absent the answer is the 503 that names both, though another model
    with a manifest lies beside it."""
    from fastapi.testclient import TestClient

    from PR2_async_inference.api.main import create_app
    from PR2_async_inference.settings import Settings

    copy = tmp_path / "registry" / "model_registry.yaml"  # ../models/ is tmp_path/models, whatever the repo's holds
    copy.parent.mkdir()
    shutil.copy(PR2 / "model_registry.yaml", copy)
    (tmp_path / "models").mkdir()
    artifact(tmp_path / "models" / "resnet18.pt", [3, 224, 224], [str(i) for i in range(1000)])
    with TestClient(create_app(Settings(model_registry=copy), start_kafka=False)) as client:
        assert [m["name"] for m in client.get("/models").json() if m["default"]] == ["image_classification"]
        response = client.post("/inference", json={"data": [[[0.0]]]})
    assert response.status_code == 503, response.text
    detail = response.json()["detail"]
    assert detail.endswith("artifact quantized_model.pt of model 'image_classification' does not exist"), detail


def test_an_entry_names_the_arch_of_a_bare_state_dict_that_fits_several(tmp_path):
    """A pruned ResNet-50 fits resnet50, resnext50 and wide_resnet50 alike: the entry's ``arch`` picks one."""
    import torch

    from modelops.models import create_model
    from PR2_async_inference.worker.inference import load_predictors

    torch.manual_seed(0)
    state_dict = create_model("resnet50", 3).state_dict()
    for key in [k for k in state_dict if k.endswith("conv2.weight")]:  # half the 3x3 filters, as pruning leaves
        conv2 = state_dict[key]
        state_dict[key] = conv2[: conv2.shape[0] // 2].clone()
        bn = key.replace("conv2.weight", "bn2")
        for part in ("weight", "bias", "running_mean", "running_var"):
            state_dict[f"{bn}.{part}"] = state_dict[f"{bn}.{part}"][: conv2.shape[0] // 2].clone()
        conv3 = key.replace("conv2", "conv3")
        state_dict[conv3] = state_dict[conv3][:, : conv2.shape[0] // 2].clone()
    torch.save(state_dict, tmp_path / "pruned.pt")
    ambiguous = load_registry(registry(tmp_path, artifact="pruned.pt"))
    assert "fits several architectures" in load_predictors(ambiguous, threads=1)[1]["m"]
    named = load_registry(registry(tmp_path, artifact="pruned.pt", arch="resnet50"))
    assert named.get("m").arch == "resnet50"
    predictors, errors = load_predictors(named, threads=1)
    assert errors == {} and predictors["m"].manifest.arch == "resnet50"
    assert predictors["m"](torch.zeros(1, *predictors["m"].input_shape)).shape == (1, 3)
