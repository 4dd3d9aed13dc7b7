"""Every form a model is saved in, end to end through each script that runs it: the benchmark, the flamegraph
and serving (the worker's loading and one batch, the API's manifest for the same registry). Each cell works,
or exits 2 (serving: reports the model unavailable) with a message that says what to do.

Forms: bare state_dict (architecture identified, or named where several fit), state_dict + manifest, pickle
(trusted or not), TorchScript, ONNX, ExportedProgram (the traced ones without a manifest, as a user saves them).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelops.cli import run_cli
from modelops.errors import ArtifactError
from modelops.models import create_model
from PR2_async_inference.api.state import ModelUnavailable, ServiceState
from PR2_async_inference.codec import decode_input
from PR2_async_inference.messaging.messages import RequestMessage
from PR2_async_inference.registry import load_registry, write_registry
from PR2_async_inference.settings import Settings
from PR2_async_inference.worker.inference import load_predictors, predict_batch
from PR4_model_benchmarking import benchmark_models, model_flamegraph
from tests.core.test_model_forms import FORMS, NUM_CLASSES, SIDE, save_form

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: cell -> (form, the script flags it needs, what the flags leave out: None when it works, else the advice)
CELLS = {
    "bare_identified": ("bare_state_dict", [], None),
    "bare_several_fit": ("pruned_resnet50", [], "--arch NAME"),
    "bare_arch_named": ("pruned_resnet50", ["--arch", "resnet50"], None),
    "state_dict_manifest": ("state_dict_manifest", [], None),
    "pickle_untrusted": ("pickle", [], "--trust-pickle"),
    "pickle_trusted": ("pickle", ["--trust-pickle"], None),
    "torchscript": ("torchscript", [], None),
    "onnx": ("onnx", [], None),
    "exported_program": ("exported_program", [], None),
}
#: The same advice where serving gives it: a registry entry's field, not a flag.
REGISTRY_ADVICE = {"--arch NAME": "arch: NAME in a model registry entry",
                   "--trust-pickle": "trust_pickle: true in a model registry entry"}


def pruned_resnet50(path: Path) -> Path:
    """A ResNet-50 with half its 3x3 filters, as structured pruning leaves it: ResNeXt-50 and Wide ResNet-50 fit
    its parameter names and kernel sizes too, so only a named architecture loads it."""
    torch.manual_seed(0)
    state_dict = create_model("resnet50", NUM_CLASSES).state_dict()
    for key in [k for k in state_dict if k.endswith("conv2.weight")]:
        kept = state_dict[key].shape[0] // 2
        state_dict[key] = state_dict[key][:kept].clone()
        for part in ("weight", "bias", "running_mean", "running_var"):
            bn = key.replace("conv2.weight", f"bn2.{part}")
            state_dict[bn] = state_dict[bn][:kept].clone()
        conv3 = key.replace("conv2", "conv3")
        state_dict[conv3] = state_dict[conv3][:, :kept].clone()
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("forms_e2e")
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES).eval()
    saved = {form: save_form(model, form, folder) for form in FORMS}
    saved["pruned_resnet50"] = pruned_resnet50(folder / "pruned.pt")
    return saved


def check_outcome(cell: str, code: int, err: str) -> None:
    advice = CELLS[cell][2]
    if advice is None:
        assert code == 0, err
    else:
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error:") and advice in err, err


# ---------------------------------------------------------------------- the benchmark


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_the_benchmark_runs_every_form_or_says_what_to_pass(cell, files, tmp_path, capsys):
    """In its default isolation: the model is loaded in a spawned worker, which gets ``--arch`` and ``--image-size``."""
    form, flags, _ = CELLS[cell]
    out = tmp_path / "bench"
    code = run_cli(benchmark_models.main, benchmark_models.get_args_parser(), [
        "--models", f"{cell}:{files[form]}", *flags, "--image-size", str(SIDE), "--batch-sizes", "1",
        "--warmup", "1", "--iters", "2", "--calls-per-turn", "1", "--settle-ms", "0", "--scenarios",
        "none", "--accuracy-samples", "0", "--threads", "1", "--report-format", "json",
        "--output-dir", str(out), "--no-progress"])
    check_outcome(cell, code, capsys.readouterr().err)
    if code == 0:
        (row,) = json.loads(next(out.glob("*.json")).read_text())["models"]
        assert row["error"] is None and row["latency_ms_p50"] > 0, row
        # MACs are counted on the input the worker chose (the traced forms have none): 32x32, not 224x224 (50x more)
        assert row["macs_m"] is None or row["macs_m"] < 100, row
        if "--arch" in flags:
            assert row["arch"] == flags[flags.index("--arch") + 1], row


# ---------------------------------------------------------------------- the flamegraph


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_the_flamegraph_profiles_every_form_or_says_what_to_pass(cell, files, tmp_path, capsys):
    """The operator profile here and the py-spy child both load the model with the script's flags."""
    form, flags, _ = CELLS[cell]
    code = run_cli(model_flamegraph.main, model_flamegraph.get_args_parser(), [
        "--model", str(files[form]), *flags, "--image-size", str(SIDE), "--duration", "1", "--rate", "20",
        "--profile-iters", "1", "--warmup", "1", "--top", "3", "--threads", "1", "--output-dir", str(tmp_path)])
    check_outcome(cell, code, capsys.readouterr().err)
    if code == 0:
        (model,) = json.loads((tmp_path / "flamegraph_summary.json").read_text())["models"]
        assert Path(model["flamegraph"]).stat().st_size > 1000 and Path(model["trace"]).is_file()


def test_the_flamegraph_child_loads_with_the_flags_of_the_parent(files, capsys):
    """What the py-spy target runs: named architecture and input side reach its loader."""
    from PR4_model_benchmarking import inference_loop

    code = run_cli(inference_loop.main, inference_loop.get_args_parser(), [
        "--model", str(files["pruned_resnet50"]), "--arch", "resnet50", "--image-size", str(SIDE),
        "--seconds", "0", "--warmup", "1", "--threads", "1"])
    assert code == 0, capsys.readouterr().err


# ---------------------------------------------------------------------- serving


def png_b64() -> str:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((40, 40, 3)) * 255).astype("uint8")).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def registry_entry(cell: str, files: dict[str, Path]) -> dict:
    form, flags, _ = CELLS[cell]
    entry: dict = {"artifact": files[form]}
    if "--arch" in flags:
        entry["arch"] = flags[flags.index("--arch") + 1]
    if "--trust-pickle" in flags:
        entry["trust_pickle"] = True
    return entry


@pytest.fixture(scope="module")
def served(files, tmp_path_factory):
    """One registry naming every cell, loaded as the worker loads it; and the API's state for it."""
    path = write_registry(tmp_path_factory.mktemp("serve") / "model_registry.yaml",
                          {cell: registry_entry(cell, files) for cell in CELLS})
    registry = load_registry(path)
    predictors, errors = load_predictors(registry, threads=1)
    return predictors, errors, ServiceState(Settings(model_registry=path), registry)


@pytest.mark.parametrize("cell", CELLS)
def test_serving_runs_every_form_or_says_what_to_set(cell, served):
    predictors, errors, state = served
    advice = CELLS[cell][2]
    if advice is not None:
        assert cell not in predictors and REGISTRY_ADVICE[advice] in errors[cell], errors.get(cell)
        with pytest.raises(ModelUnavailable, match=REGISTRY_ADVICE[advice]) as raised:
            state.manifest(cell)
        assert isinstance(raised.value.__cause__, ArtifactError)
        return
    assert cell not in errors, errors[cell]
    predictor = predictors[cell]
    _, manifest = state.manifest(cell)  # what the API validates and decodes requests with
    assert manifest.input_shape == predictor.input_shape and manifest.num_classes == NUM_CLASSES
    message = RequestMessage("r1", cell, decode_input(png_b64(), manifest), deadline=2e9, enqueued_at=1e9)
    outcome = predict_batch(predictor, cell, [message])
    (request, logits, error) = outcome.results[0]
    assert request is message
    assert error is None and logits.shape == (NUM_CLASSES,) and np.isfinite(logits).all()
