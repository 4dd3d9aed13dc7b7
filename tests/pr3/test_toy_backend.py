"""A backend added in one place (one registration) reaches every entry point: the ``--backend`` choices, ``auto``'s
candidates, the accuracy-aware search, a real quantization run and the shared loader (in the timing processes
too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from modelops.artifact import RuntimeHints, export_onnx, load_artifact, read_manifest
from modelops.errors import ArtifactError, UsageError
from modelops.load_options import LoadOptions
from modelops.predictor import LoadRequest, Predictor, Runtime
from modelops.runtimes.onnxruntime_predictor import load_onnxruntime
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization import optimize_pipeline
from PR3_model_optimization.quantization.backends import Backend, register_backend, unregister_backend
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.search import plan_trials

FAST = ["--threads", "1", "--calibration-batches", "3", "--latency-rounds", "2", "--latency-batch-size", "4"]


class ToyQuantizer:
    """Writes the fp32 model as ONNX (no int8 at all: the registry, not the arithmetic, is under test)."""

    def __init__(self, model: nn.Module | None, example: torch.Tensor, work_dir: Path) -> None:
        self.model = model
        self.example = example

    def build(self, config: QuantConfig, calibration: Sequence[torch.Tensor], out: Path,
              train_step: Callable | None = None) -> list[str]:
        export_onnx(self.model, out, self.example)
        return []

    def fp32_artifact(self) -> Path | None:
        return None

    def package(self, artifact: Path, config: QuantConfig) -> dict | None:
        return None


def load_toy(request: LoadRequest) -> Predictor:
    """The toy runtime: ONNX Runtime under another name, so the predictor shows which runtime served it."""
    inner = load_onnxruntime(request)
    return Predictor(inner, manifest=inner.manifest, path=request.path, backend="toy")


TOY = Backend("toy", "onnx", ".onnx", f"{__name__}:ToyQuantizer", runtime=RuntimeHints(engine="toy"),
              loader=Runtime("toy", ("onnx",), load_toy))


@pytest.fixture
def toy() -> Iterator[Backend]:
    register_backend(TOY)
    yield TOY
    unregister_backend(TOY.name)


def choices(parser, dest: str) -> str:
    action = next(a for a in parser._actions if a.dest == dest)
    return f"{action.choices} {action.help}"


def test_a_registered_backend_is_a_choice_a_candidate_and_searched(toy: Backend) -> None:
    parser = mq.get_args_parser()
    assert "toy" in choices(parser, "backend")
    assert "toy" in choices(optimize_pipeline.get_args_parser(), "quantization_backend")
    mq.check_args(parser.parse_args(["--model", "m.pt", "--backend", "toy"]))  # accepted, no UsageError
    base = QuantConfig(keep_float=("conv1",))
    settings = mq.trial_settings(parser.parse_args(["--model", "m.pt"]))
    auto, skipped = plan_trials(base, ["conv1", "fc"], settings, True, False)
    assert [c.backend for c in auto if c.backend == "toy"] == ["toy"] and "toy" not in {c.name for c in skipped}
    searched, _ = plan_trials(base, ["conv1", "fc"], settings, False, True)
    assert [c for c in searched if c.backend == "toy"] == [base.with_(backend="toy"),
                                                           base.with_(backend="toy", keep_float=())]


def test_unregistered_backends_and_runtimes_are_gone(toy: Backend) -> None:
    unregister_backend(toy.name)
    assert "toy" not in choices(mq.get_args_parser(), "backend")
    with pytest.raises(UsageError, match="Unknown backend 'toy'"):
        QuantConfig(backend="toy")


@pytest.mark.slow  # a real quantization run: the trial is timed in spawned processes
def test_a_registered_backend_quantizes_and_its_runtime_loads_it(toy: Backend, digits_resnet18: Path,
                                                                  tmp_path: Path) -> None:
    save = tmp_path / "toy.onnx"
    summary = mq.main(mq.get_args_parser().parse_args(
        ["--model", str(digits_resnet18), "--save-path", str(save), "--backend", "toy", *FAST]))
    assert summary["backend"] == "toy" and summary["latency_ms_p50_int8"] > 0  # timed by its runtime, elsewhere
    manifest = read_manifest(save)
    assert manifest.runtime == RuntimeHints(engine="toy") and manifest.transform["backend"] == "toy"
    predictor = load_artifact(save, LoadOptions(threads=1))
    assert predictor.backend == "toy" and predictor(torch.zeros(2, *manifest.input_shape)).shape == (2, 10)
    unregister_backend(toy.name)
    with pytest.raises(ArtifactError, match="runtime 'toy', which is not known here"):
        load_artifact(save)
