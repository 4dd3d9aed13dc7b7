"""The API serves a model file without a manifest beside it (a bare ``torch.save(model.state_dict())``): it lists
the model as available with the manifest the worker's loader works out for the same registry entry, caches it
until the file changes, and accepts requests for it."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modelops.artifact import Manifest, write_manifest
from modelops.models import create_model
from PR2_async_inference.api import state as api_state
from PR2_async_inference.async_fastapi_server import create_app
from PR2_async_inference.registry import load_registry, write_registry
from PR2_async_inference.settings import Settings
from PR2_async_inference.worker.inference import load_predictors
from tests.pr2.conftest import make_topics, suite_settings

NUM_CLASSES = 7

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bare_state_dict(path: Path, num_classes: int = NUM_CLASSES) -> Path:
    torch.manual_seed(0)
    torch.save(create_model("resnet18", num_classes).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bare_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``inferred``: a bare state_dict whose architecture its parameters identify; ``named``: the entry says it."""
    folder = tmp_path_factory.mktemp("own_model")
    bare = bare_state_dict(folder / "bare.pt")
    return write_registry(folder / "model_registry.yaml", {
        "inferred": {"artifact": bare, "max_batch_size": 2},
        "named": {"artifact": bare, "arch": "resnet18"},
    })


def test_models_lists_a_bare_state_dict_with_the_manifest_the_worker_loads(bare_registry):
    assert not Path(f"{load_registry(bare_registry).get('inferred').artifact}.json").exists()
    predictors, errors = load_predictors(load_registry(bare_registry), threads=1)
    assert errors == {}
    settings = Settings(model_registry=bare_registry)
    app = create_app(settings, start_kafka=False)
    # No lifespan (it runs the results reader, which needs a broker): the state it would build, set here.
    app.state.service = api_state.ServiceState(settings, load_registry(bare_registry))
    listed = {info["name"]: info for info in TestClient(app).get("/models").json()}
    for name in ("inferred", "named"):
        info, worker = listed[name], predictors[name].manifest
        assert info["available"] is True, info
        assert (info["artifact"], info["format"]) == ("bare.pt", "state_dict")
        assert info["num_classes"] == worker.num_classes == NUM_CLASSES
        assert info["input_shape"] == worker.input_shape  # the API validates what the worker will be fed
    assert predictors["inferred"].manifest.inferred["arch"] == "resnet18"


def test_the_derived_manifest_is_built_once_per_version_of_the_file(tmp_path, monkeypatch):
    path = bare_state_dict(tmp_path / "bare.pt")
    registry = load_registry(write_registry(tmp_path / "model_registry.yaml", {"m": path}))
    monkeypatch.setattr(api_state, "MANIFEST_RECHECK_S", 0.0)  # every call looks at the files
    service = api_state.ServiceState(Settings(), registry)
    first = service.manifest("m")[1]
    assert service.manifest("m")[1] is first  # same file: not rebuilt
    bare_state_dict(path, num_classes=5)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))
    assert service.manifest("m")[1].num_classes == 5  # replaced: derived again
    write_manifest(path, Manifest(arch="resnet18", num_classes=5, input_shape=[3, 32, 32], labels=list("abcde")))
    assert service.manifest("m")[1].labels == list("abcde")  # a manifest written beside it wins once it is there


def png_b64(size: tuple[int, int] = (40, 40)) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((*size, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.slow
def test_a_request_for_a_bare_state_dict_is_accepted(broker, bare_registry):
    settings = suite_settings(broker.info["bootstrap"], "own-model", bare_registry)
    make_topics(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.service.reader.caught_up.wait(30), "results reader never caught up"
        for name in ("inferred", "named"):
            response = client.post("/inference", json={"model_name": name, "data": png_b64()})
            assert response.status_code == 202, response.text
            status = client.get(f"/inference/{response.json()['request_id']}").json()
            assert status["status"] == "queued" and status["model_name"] == name
