"""Distillation: the loss against hand-computed values, a short real run, --resume, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelops.artifact import Manifest, load_artifact, read_manifest, save_artifact
from modelops.cli import run_cli
from modelops.models import create_model
from PR3_model_optimization import model_distillation
from PR3_model_optimization.distillation import DistillationLoss, HintStudent, TeacherRunner, distillation_step
from tests.conftest import REPO_ROOT

# A small, fast student and a short budget; the teacher is the session's trained ResNet-18.
TINY = ["--student-arch", "resnet18", "--limit", "512", "--batch-size", "32", "--no-augment",
        "--cache-teacher-logits", "--speed-rounds", "0", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(*argv: str):
    return model_distillation.get_args_parser().parse_args(list(argv))


# --------------------------------------------------------------------------- the loss


def test_loss_matches_hand_computed_value() -> None:
    # student logits [1, 0], teacher [0, 1], T = 2: p_s = softmax([.5, 0]), p_t = softmax([0, .5]).
    # KL(p_t || p_s) = (p_t1 - p_t0) * 0.5 with p_t1 = sigmoid(.5); CE = log(1 + e^-1).
    sig = 1 / (1 + math.exp(-0.5))
    kl = (sig - (1 - sig)) * 0.5
    ce = math.log(1 + math.exp(-1))
    expected = 0.5 * 4 * kl + 0.5 * ce  # alpha * T^2 * KL + (1 - alpha) * CE
    loss = DistillationLoss(temperature=2.0, alpha=0.5)(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.40155, abs=1e-4)


def test_loss_limits() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    targets = torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(student, targets)
    assert DistillationLoss(4.0, alpha=0.0)(student, teacher, targets).item() == pytest.approx(ce.item())
    # Matching the teacher exactly leaves no soft-target loss.
    assert DistillationLoss(4.0, alpha=1.0)(teacher, teacher, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert DistillationLoss(4.0, alpha=1.0)(student, teacher, targets).item() > 0


@pytest.mark.parametrize(("temperature", "alpha"), [(0.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_loss_rejects_bad_parameters(temperature: float, alpha: float) -> None:
    from modelops.errors import UsageError

    with pytest.raises(UsageError):
        DistillationLoss(temperature, alpha)


def test_hint_loss_trains_the_adapter() -> None:
    torch.manual_seed(0)
    teacher = create_model("resnet34", 10).eval()
    student = HintStudent(create_model("resnet18", 10), teacher_dim=512)
    step = distillation_step(DistillationLoss(), teacher=TeacherRunner(teacher, with_features=True), hint_weight=1.0)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss, logits, _ = step(student, (images, targets))
    loss.backward()
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    assert student.adapter.weight.grad is not None and student.adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_epochs_improve_accuracy_and_write_everything(digits_resnet18: Path, tmp_path: Path) -> None:
    save = tmp_path / "student.pt"
    summary = model_distillation.main(_args(
        "--teacher", str(digits_resnet18), "--save-path", str(save), "--output-dir", str(tmp_path / "run"),
        "--epochs", "2", "--baseline-student", *TINY))
    # An untrained 10-class student is at chance (~10%); two short epochs must beat that by far.
    assert summary["best_val_top1_pct"] > 30
    assert summary["student_accuracy"] > 30 and summary["baseline_accuracy"] > 0
    assert summary["distillation_gain_pts"] == pytest.approx(
        summary["student_accuracy"] - summary["baseline_accuracy"], abs=1e-3)
    manifest = read_manifest(save)
    assert manifest.transform["kind"] == "distillation"
    assert manifest.transform["teacher"] == str(digits_resnet18)
    assert manifest.parent["sha256"] == read_manifest(digits_resnet18).sha256
    assert manifest.lineage[-1]["temperature"] == 4.0
    assert manifest.arch == "resnet18" and manifest.metrics["accuracy"] == summary["student_accuracy"]
    assert manifest.split_seed == 0  # the teacher's split, so later steps test on images neither has seen
    predictor = load_artifact(save)
    assert predictor(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    csv = Path(summary["metrics_csv"]).read_text().splitlines()
    assert len(csv) == 1 + 4 and "val_top1_pct" in csv[0]  # 2 epochs x (distilled, baseline)
    assert Path(summary["curves_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(summary["baseline_model"]).is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_resume_continues_with_the_saved_optimizer_state(digits_resnet18: Path, tmp_path: Path) -> None:
    # SGD: its update is linear in the gradient, so float noise from a different in-batch order stays tiny
    # (Adam's normalised step turns it into lr-sized differences on near-zero gradients).
    common = ["--teacher", str(digits_resnet18), "--epochs", "2", *TINY, "--opt", "sgd", "--lr", "0.01"]
    common[common.index("--limit") + 1] = "32"  # one batch per epoch: batch order cannot differ
    # "Interrupted" run: --patience 0 stops after the first epoch, leaving its checkpoint.
    model_distillation.main(_args(*common, "--save-path", str(tmp_path / "a.pt"), "--output-dir",
                                  str(tmp_path / "a"), "--patience", "0"))
    checkpoint = tmp_path / "a" / "student" / "checkpoint.pth"
    first = torch.load(checkpoint, weights_only=True)
    assert first["epoch"] == 0 and first["optimizer"]["state"]  # momentum buffers were saved
    resumed = model_distillation.main(_args(*common, "--save-path", str(tmp_path / "a.pt"), "--output-dir",
                                            str(tmp_path / "a"), "--resume", str(checkpoint)))
    straight = model_distillation.main(_args(*common, "--save-path", str(tmp_path / "b.pt"), "--output-dir",
                                             str(tmp_path / "b")))
    assert resumed["epochs_run"] == straight["epochs_run"] == 2
    after = torch.load(checkpoint, weights_only=True)
    reference = torch.load(tmp_path / "b" / "student" / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 1 and after["history"][0] == first["history"][0]
    # Same optimizer state carried over => the resumed weights equal an uninterrupted run's.
    for name, tensor in reference["model"].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(after["model"][name], tensor, rtol=1e-3, atol=1e-4, msg=name)


# --------------------------------------------------------------------------- bad input


def test_missing_teacher_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "PR3_model_optimization/model_distillation.py", "--teacher", str(tmp_path / "nope.pt"),
         "--save-path", str(tmp_path / "s.pt"), "--epochs", "10"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.pt" in lines[0] and "prepare_model.py" in lines[0]


def test_bad_epochs_and_class_mismatch_exit_2(digits_resnet18: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    parser = model_distillation.get_args_parser()
    assert run_cli(model_distillation.main, parser, ["--teacher", str(digits_resnet18), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1, got 0" in capsys.readouterr().err
    # A student artifact with a 5-class head cannot learn a 10-class teacher.
    five = tmp_path / "five.pt"
    save_artifact(create_model("resnet18", 5), five,
                  Manifest(arch="resnet18", num_classes=5, input_shape=[3, 32, 32]))
    code = run_cli(model_distillation.main, parser, ["--teacher", str(digits_resnet18), "--student", str(five),
                                                     "--save-path", str(tmp_path / "s.pt"), "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "5 classes" in err[0] and "10" in err[0]
    assert run_cli(model_distillation.main, parser, ["--teacher", str(digits_resnet18), "--cache-teacher-logits"]) == 2
    assert "--no-augment" in capsys.readouterr().err
