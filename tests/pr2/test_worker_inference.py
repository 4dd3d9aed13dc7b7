"""The worker's forward passes: every model is warmed up before the worker joins the consumer group (a
torch.compile'd model has compiled for batch 1 and its max batch size by then, so no request pays that compile),
a forward pass adds its CPU time to the counter, and torch keeps one thread when runtimes run every model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from modelops.artifact import Manifest, write_manifest
from modelops.load_options import LoadOptions
from PR2_async_inference.registry import load_registry, write_registry
from PR2_async_inference.worker.inference import load_predictors, torch_only_preprocesses

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compiled_program(path: Path) -> Path:
    """A tiny ExportedProgram with a dynamic batch whose manifest asks the loader to torch.compile it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    program = torch.export.export(model.eval(), (torch.zeros(2, 3, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, str(path))
    write_manifest(path, Manifest(num_classes=3, input_shape=[3, 8, 8], runtime={"compile": True}),
                   fmt="exported_program")
    return path


def test_models_are_compiled_for_batch_one_and_their_max_batch_before_serving(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "model_registry.yaml", {
        "tiny": {"artifact": compiled_program(tmp_path / "tiny.pt2"), "max_batch_size": 5}})
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    predictors, errors = load_predictors(load_registry(registry), threads=1)

    assert errors == {} and type(predictors["tiny"]._fn).__name__ == "OptimizedModule"
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled >= 2  # batch 1 and batch 5, both before any request
    for batch_size in (1, 5):
        assert predictors["tiny"](torch.randn(batch_size, 3, 8, 8)).shape == (batch_size, 3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled  # requests compile nothing


def test_a_forward_pass_adds_its_process_cpu_time_to_the_counter(pr2_model):
    from prometheus_client import REGISTRY

    from modelops.artifact import load_artifact
    from PR2_async_inference.worker.inference import forward

    def counted() -> float:
        return REGISTRY.get_sample_value("inference_forward_cpu_seconds_total", {"model": "unit-cpu"}) or 0.0

    predictor = load_artifact(pr2_model, LoadOptions(threads=1))
    before = counted()
    logits, _ = forward(predictor, [np.zeros(predictor.input_shape, dtype=np.float32)] * 4, "unit-cpu")
    assert logits.shape[0] == 4
    assert counted() > before


def test_the_worker_keeps_one_torch_thread_when_every_model_runs_on_its_own_runtime_pool():
    ort, openvino, eager = (SimpleNamespace(backend=b) for b in ("onnxruntime", "openvino", "torch"))
    assert torch_only_preprocesses({"a": ort, "b": openvino}) is True
    assert torch_only_preprocesses({"a": ort, "b": eager}) is False  # torch runs a model: its threads stay
    assert torch_only_preprocesses({"a": eager}) is False
    assert torch_only_preprocesses({}) is False  # nothing loaded: nothing to decide from
