"""The PR3 scripts on the forms users save: a bare state_dict pruned on fake data, a TorchScript teacher.

Fake data takes the model's class count and input size, so a model needs no dataset of its own here.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from modelops.artifact import load_artifact, read_manifest
from modelops.cli import run_cli
from modelops.errors import ArtifactError
from modelops.load_options import LoadOptions
from modelops.models import create_model
from PR3_model_optimization import model_distillation
from PR3_model_optimization import model_pruning as mp
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization.quantization.detect import quantized_reason

NUM_CLASSES, SIDE = 7, 32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A 7-class ResNet-18 saved the two common ways: torch.save(state_dict) and a TorchScript trace."""
    folder = tmp_path_factory.mktemp("user_models")
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES).eval()
    torch.save(model.state_dict(), folder / "bare.pt")
    torch.jit.save(torch.jit.trace(model, torch.zeros(2, 3, SIDE, SIDE)), str(folder / "scripted.pt"))
    program = torch.export.export(model, (torch.zeros(2, 3, SIDE, SIDE),),
                                  dynamic_shapes=({0: torch.export.Dim("n", max=64)},), strict=True)
    torch.export.save(program, str(folder / "model.pt2"))
    torch.onnx.export(model, (torch.zeros(2, 3, SIDE, SIDE),), str(folder / "model.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    # A small net whose head reads a 32x32 feature map: it runs only on its own input size, found by probing.
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * SIDE * SIDE, NUM_CLASSES)).eval()
    torch.jit.save(torch.jit.trace(small, torch.zeros(2, 3, SIDE, SIDE)), str(folder / "small_scripted.pt"))
    return folder


def test_a_bare_state_dict_is_pruned_on_fake_data_and_the_output_says_what_was_inferred(user_files, tmp_path):
    save = tmp_path / "pruned.pt"
    result = mp.main(mp.get_args_parser().parse_args([
        "--model", str(user_files / "bare.pt"), "--dataset", "fake", "--image-size", str(SIDE),
        "--pruning-method", "structured", "--amount", "0.3", "--save-path", str(save),
        "--output-dir", str(tmp_path / "run"), "--latency-rounds", "2", "--eval-limit", "32"]))
    assert result["params"] < result["params_before"]
    manifest = read_manifest(save)
    assert (manifest.arch, manifest.num_classes) == ("resnet18", NUM_CLASSES)
    assert manifest.inferred["arch"] == "resnet18" and "bare state_dict" in manifest.inferred["from"]
    assert load_artifact(save)(torch.zeros(2, 3, SIDE, SIDE)).shape == (2, NUM_CLASSES)


def test_pruning_a_torchscript_file_exits_2_naming_the_forms_it_takes(user_files, tmp_path, capsys):
    code = run_cli(mp.main, mp.get_args_parser(), [
        "--model", str(user_files / "scripted.pt"), "--dataset", "fake", "--save-path", str(tmp_path / "p.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "inference-only" in err and "--arch" in err and "--trust-pickle" in err


@pytest.mark.slow
def test_a_torchscript_teacher_distils_on_fake_data_with_its_own_class_count(user_files, tmp_path):
    save = tmp_path / "student.pt"
    summary = model_distillation.main(model_distillation.get_args_parser().parse_args([
        "--teacher", str(user_files / "small_scripted.pt"), "--dataset", "fake", "--save-path", str(save),
        "--output-dir", str(tmp_path / "run"), "--epochs", "1", "--student-arch", "resnet18", "--limit", "64",
        "--batch-size", "32", "--no-augment", "--speed-rounds", "0", "--threads", "1"]))
    assert "student_accuracy" in summary
    manifest = read_manifest(save)
    assert manifest.num_classes == NUM_CLASSES and manifest.input_shape == [3, SIDE, SIDE]


QUANTIZE_FLAGS = ["--dataset", "fake", "--image-size", str(SIDE), "--threads", "1", "--calibration-batches", "1",
                  "--calibration-batch-size", "4", "--latency-rounds", "1", "--latency-batch-size", "1"]


@pytest.mark.parametrize("name", ["scripted.pt", "model.onnx", "model.pt2"])
def test_a_traced_file_is_quantized_by_onnx_runtime_from_its_onnx_graph(user_files, tmp_path, name, capsys,
                                                                        monkeypatch):
    int8 = tmp_path / "int8.onnx"
    temp_root = tmp_path / "temp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))  # where the run's temporary folders go
    code = run_cli(mq.main, mq.get_args_parser(), [
        "--model", str(user_files / name), "--save-path", str(int8), "--backend", "onnxruntime", *QUANTIZE_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert list(temp_root.iterdir()) == []  # the ONNX export of a TorchScript or .pt2 file and the trials are gone
    assert quantized_reason(int8)  # real int8 nodes in the file written
    int8_model = load_artifact(int8)
    assert int8_model(torch.zeros(2, 3, SIDE, SIDE)).shape == (2, NUM_CLASSES)
    assert read_manifest(int8).num_classes == NUM_CLASSES


def test_a_backend_that_cannot_start_from_the_file_exits_2_naming_those_that_can(user_files, tmp_path, capsys):
    code = run_cli(mq.main, mq.get_args_parser(), [
        "--model", str(user_files / "model.onnx"), "--save-path", str(tmp_path / "q.out"), "--backend", "pt2e",
        *QUANTIZE_FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--backend onnxruntime or openvino" in err and "--arch" in err


@pytest.mark.slow
def test_an_exported_program_is_quantized_by_openvino_from_its_onnx_export(user_files, tmp_path, capsys):
    pytest.importorskip("openvino")
    int8 = tmp_path / "int8.onnx"
    code = run_cli(mq.main, mq.get_args_parser(), [
        "--model", str(user_files / "model.pt2"), "--save-path", str(int8), "--backend", "openvino", *QUANTIZE_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert read_manifest(int8).runtime.engine == "openvino"
    assert load_artifact(int8)(torch.zeros(2, 3, SIDE, SIDE)).shape == (2, NUM_CLASSES)


@pytest.mark.slow
def test_an_exported_program_is_quantized_by_pt2e_from_the_program_itself(user_files, tmp_path, capsys):
    int8 = tmp_path / "int8.pt2"
    code = run_cli(mq.main, mq.get_args_parser(), [
        "--model", str(user_files / "model.pt2"), "--save-path", str(int8), "--backend", "pt2e", *QUANTIZE_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert quantized_reason(int8)
    assert load_artifact(int8, LoadOptions(compile=False))(torch.zeros(2, 3, SIDE, SIDE)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("script", [mp, mq, model_distillation], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_main_called_directly_loads_a_bare_state_dict_as_its_arch_flag_says(script, user_files, tmp_path):
    """The pipeline and tests call ``main`` without ``run_cli``: ``--arch`` still reaches the loader."""
    model_flag = "--teacher" if script is model_distillation else "--model"
    args = script.get_args_parser().parse_args([
        model_flag, str(user_files / "bare.pt"), "--arch", "resnet50", "--dataset", "fake",
        "--image-size", str(SIDE), "--save-path", str(tmp_path / "out.pt")])
    with pytest.raises(ArtifactError, match="do not fit architecture 'resnet50'"):
        script.main(args)


def test_an_exported_program_with_a_fixed_batch_runs_any_multiple_and_quantizing_it_exits_2(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES).eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, SIDE, SIDE),), strict=True), str(path))
    batch = torch.randn(3, 3, SIDE, SIDE)
    torch.testing.assert_close(load_artifact(path)(batch), model(batch), rtol=1e-3, atol=1e-3)  # in slices of 1
    code = run_cli(mq.main, mq.get_args_parser(), [
        "--model", str(path), "--save-path", str(tmp_path / "q.out"), *QUANTIZE_FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "fixes its batch size at 1" in err and "dynamic_shapes" in err and "--arch" in err
