"""Bad input on the command line: exit code 2 and one readable line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PREPARE = str(REPO_ROOT / "PR3_model_optimization" / "prepare_model.py")


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def assert_one_line_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and pattern in lines[-1], result.stderr


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory, digits_resnet18):
    from modelops.artifact import load_module, save_artifact

    model, manifest = load_module(digits_resnet18)
    path = tmp_path_factory.mktemp("pickle") / "whole.pt"
    save_artifact(model, path, manifest, fmt="pickle")
    return path


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda tmp: tmp / "missing.pt", "does not exist"),
        (lambda tmp: (tmp / "model.h5").write_bytes(b"x") and tmp / "model.h5", "unsupported extension"),
        (lambda tmp: (tmp / "bad.pt").write_bytes(b"PK\x03\x04broken") and tmp / "bad.pt", "not a readable"),
    ],
    ids=["missing", "wrong-extension", "corrupt"],
)
def test_bad_model_file(tmp_path, make, pattern):
    assert_one_line_error(run("-m", "modelops.describe", str(make(tmp_path)), "--no-eval"), pattern)


def test_untrusted_pickle_names_the_flag(pickled_model):
    assert_one_line_error(run("-m", "modelops.describe", str(pickled_model), "--no-eval"), "--trust-pickle")
    trusted = run("-m", "modelops.describe", str(pickled_model), "--no-eval", "--trust-pickle")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["format"] == "pickle"


def test_unknown_architecture():
    assert_one_line_error(run(PREPARE, "--arch", "resnet9000", "--random-weights"), "Unknown architecture 'resnet9000'")


def test_unknown_dataset():
    assert_one_line_error(run(PREPARE, "--dataset", "mnist", "--random-weights"), "Unknown dataset 'mnist'")


def test_epochs_below_one():
    assert_one_line_error(run(PREPARE, "--epochs", "0"), "--epochs must be at least 1")


def test_describe_evaluates_a_trained_model(digits_resnet18):
    result = run("-m", "modelops.describe", str(digits_resnet18), "--dataset", "digits")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["arch"] == "resnet18" and summary["test_accuracy"] > 80


def test_prepare_model_writes_artifact_and_manifest(tmp_path):
    out = tmp_path / "m.pt"
    result = run(PREPARE, "--arch", "mobilenet_v3_small", "--dataset", "digits", "--image-size", "16", "--epochs", "1",
                 "--save-path", str(out), "--output-dir", str(tmp_path / "run"), "--no-augment")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    manifest = json.loads(out.with_name("m.pt.json").read_text())
    assert summary["model"] == str(out) and manifest["arch"] == "mobilenet_v3_small"
    assert manifest["input_shape"] == [3, 16, 16] and manifest["metrics"]["params"] > 0
    assert (tmp_path / "run" / "checkpoint.pth").exists() and (tmp_path / "run" / "metrics.csv").exists()


SCRIPTS = [
    "PR3_model_optimization.prepare_model", "PR3_model_optimization.model_pruning",
    "PR3_model_optimization.model_distillation", "PR3_model_optimization.model_quantization",
    "PR3_model_optimization.optimize_pipeline", "PR4_model_benchmarking.benchmark_models",
    "PR4_model_benchmarking.model_flamegraph", "PR2_async_inference.local_stack", "PR2_async_inference.load_test",
    "modelops.describe", "main_job.cli",
]


@pytest.mark.parametrize("module", SCRIPTS)
def test_every_script_has_working_help(module):
    import importlib

    text = importlib.import_module(module).get_args_parser().format_help()
    assert "usage:" in text and "(default:" in text
