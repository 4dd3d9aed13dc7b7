"""Every form a model is saved in, through every way in: it works, or it exits 2 saying what to do.

Forms: bare state_dict, state_dict artifact with manifest, trusted pickle, TorchScript, ONNX, ExportedProgram
(the traced ones without a manifest, as a user saves them). Ways in: the shared loaders that serving (the
registry), the benchmark, the flamegraph and a distillation teacher use (a forward pass), and the eager loader
that pruning uses.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from modelops.artifact import Manifest, load_artifact, load_module, save_artifact
from modelops.cli import run_cli
from modelops.errors import ArtifactError
from modelops.load_options import LoadOptions
from modelops.models import create_model
from PR2_async_inference.registry import ModelSpec, model_manifest

FORMS = ("bare_state_dict", "state_dict_manifest", "pickle", "torchscript", "onnx", "exported_program")
NUM_CLASSES, SIDE = 7, 32


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", NUM_CLASSES).eval()


def save_form(model: torch.nn.Module, form: str, folder) -> tuple:
    """The file a user would have for ``form``; traced files without a manifest."""
    example = torch.zeros(2, 3, SIDE, SIDE)
    if form == "bare_state_dict":
        path = folder / "bare.pt"
        torch.save(model.state_dict(), path)
    elif form == "state_dict_manifest":
        path = folder / "artifact.pt"
        save_artifact(model, path, Manifest(arch="resnet18", num_classes=NUM_CLASSES, input_shape=[3, SIDE, SIDE]))
    elif form == "pickle":
        path = folder / "whole.pth"
        torch.save(model, path)
    elif form == "torchscript":
        path = folder / "scripted.pt"
        torch.jit.save(torch.jit.trace(model, example), str(path))
    elif form == "onnx":
        path = folder / "model.onnx"
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    else:
        path = folder / "model.pt2"
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("n", max=64)},),
                                       strict=True)
        torch.export.save(exported, str(path))
    return path


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("forms")
    return {form: save_form(tiny_model, form, folder) for form in FORMS}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_runs_a_forward_pass_with_its_class_count(form, saved, tiny_model):
    """Serving, the benchmark, the flamegraph and a distillation teacher all load through load_artifact."""
    predictor = load_artifact(saved[form], LoadOptions(trust_pickle=form == "pickle"))
    assert predictor.num_classes == NUM_CLASSES  # a TorchScript teacher predicted "0 classes" before
    batch = torch.randn(3, *predictor.input_shape)
    torch.testing.assert_close(predictor(batch), tiny_model(batch), rtol=1e-3, atol=1e-3)
    if form in ("onnx", "exported_program"):
        assert predictor.input_shape == [3, SIDE, SIDE]  # declared by the file
    if form != "state_dict_manifest":
        assert predictor.manifest.inferred["num_classes"] == NUM_CLASSES


@pytest.mark.parametrize("form", FORMS)
def test_every_form_serves_through_the_registry(form, saved, tiny_model):
    spec = ModelSpec(name="m", artifact=saved[form])
    path = spec.resolve()
    assert path == saved[form]
    predictor = load_artifact(path, LoadOptions(trust_pickle=form == "pickle"))
    assert predictor(torch.zeros(1, *predictor.input_shape)).shape == (1, NUM_CLASSES)
    if form == "state_dict_manifest":
        assert model_manifest(spec)[1].num_classes == NUM_CLASSES


@pytest.mark.parametrize("form", FORMS)
def test_pruning_takes_eager_forms_and_refuses_traced_ones_in_one_line(form, saved, capsys):
    """Pruning (and distillation's student) need an eager module: traced files exit 2 naming the forms."""
    def main(args: argparse.Namespace) -> None:
        load_module(saved[form], LoadOptions(trust_pickle=args.trust_pickle))

    parser = argparse.ArgumentParser()
    parser.add_argument("--trust-pickle", action="store_true")
    code = run_cli(main, parser, ["--trust-pickle"] if form == "pickle" else [])
    err = capsys.readouterr().err
    if form in ("torchscript", "onnx", "exported_program"):
        assert code == 2
        assert err.count("\n") == 1 and "inference-only" in err and "--arch" in err and "--trust-pickle" in err
    else:
        assert code == 0, err


def test_a_pickle_without_trust_says_which_flag(saved):
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        load_artifact(saved["pickle"])


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.mkdir(), "is a directory, not a model file"),
    (lambda p: p.write_bytes(b""), "is an empty file"),
    (lambda p: p.write_bytes(b"\x00garbage" * 10), "not a readable model file"),
])
def test_a_message_says_what_the_file_is(tmp_path, make, says):
    path = tmp_path / "model.onnx"
    make(path)
    with pytest.raises(ArtifactError, match=says):
        load_artifact(path)


def test_image_size_flag_picks_the_input_of_a_torchscript_file_that_runs_at_any_size(saved):
    from modelops.cli import common_parser, load_options

    shapes = []

    def main(args: argparse.Namespace) -> None:  # a script passes its --image-size down explicitly
        shapes.append(load_artifact(saved["torchscript"], load_options(args)).input_shape)

    assert run_cli(main, common_parser(), ["--image-size", "48"]) == 0
    assert run_cli(main, common_parser(), []) == 0
    assert shapes == [[3, 48, 48], [3, 224, 224]]


@pytest.mark.parametrize(("form", "kind"), [
    ("bare_state_dict", "eager"), ("state_dict_manifest", "eager"), ("pickle", "eager"),
    ("torchscript", "onnx"), ("onnx", "onnx"), ("exported_program", "exported_program"),
])
def test_every_form_gives_a_quantizer_something_to_start_from(form, kind, saved, tiny_model, tmp_path):
    from modelops.quantization_input import load_for_quantization

    start = load_for_quantization(saved[form], LoadOptions(trust_pickle=form == "pickle"), work_dir=tmp_path)
    assert start.kind == kind and start.manifest.num_classes == NUM_CLASSES
    batch = torch.randn(2, *start.manifest.input_shape)  # a TorchScript file's probed 224x224 is fixed in its ONNX
    if kind == "eager":
        out = start.module(batch)
    elif kind == "exported_program":
        out = start.exported.module()(batch)
    else:
        out = load_artifact(start.onnx_path)(batch)
    torch.testing.assert_close(out, tiny_model(batch), rtol=1e-3, atol=1e-3)


def test_the_onnx_export_of_a_torchscript_file_goes_with_its_temporary_folder(saved, tmp_path, monkeypatch):
    import tempfile

    from modelops.quantization_input import load_for_quantization

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the temp root it uses
    with load_for_quantization(saved["torchscript"]) as start:
        assert start.onnx_path.is_file() and start.onnx_path.parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    start.close()  # a second close is a no-op
    with load_for_quantization(saved["torchscript"], work_dir=tmp_path / "mine") as start:
        pass
    assert start.onnx_path.is_file()  # a folder the caller gave stays


def test_an_exported_program_goes_to_the_onnx_quantizers_through_its_onnx_export(saved, tiny_model, tmp_path):
    from modelops.quantization_input import exported_to_onnx

    onnx_path = exported_to_onnx(torch.export.load(str(saved["exported_program"])), tmp_path / "fp32.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx"]  # one file, weights inside
    batch = torch.randn(3, 3, SIDE, SIDE)  # the program's dynamic batch is kept
    torch.testing.assert_close(load_artifact(onnx_path)(batch), tiny_model(batch), rtol=1e-3, atol=1e-3)
    fixed = torch.export.export(tiny_model, (torch.zeros(1, 3, SIDE, SIDE),), strict=True)
    with pytest.raises(ArtifactError, match=r"fixes its batch size at 1.*dynamic_shapes.*--arch"):
        exported_to_onnx(fixed, tmp_path / "fixed.onnx")


def test_a_torchscript_file_is_quantized_by_onnx_runtime_through_its_onnx_export(saved, tiny_model, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    from modelops.quantization_input import load_for_quantization

    start = load_for_quantization(saved["torchscript"], work_dir=tmp_path)
    calibration = [torch.randn(4, *start.manifest.input_shape).numpy()]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    int8 = tmp_path / "int8.onnx"
    quantize_static(str(start.onnx_path), str(int8), Reader(), weight_type=QuantType.QInt8)
    logits = load_artifact(int8)(torch.from_numpy(calibration[0]))
    assert logits.shape == (4, NUM_CLASSES)
    assert (logits.argmax(1) == tiny_model(torch.from_numpy(calibration[0])).argmax(1)).float().mean() >= 0.5
