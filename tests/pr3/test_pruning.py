"""PR3 pruning: structured pruning removes channels, unstructured reaches its sparsity, fine-tuning helps."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from modelops.artifact import Manifest, load_artifact, load_module, read_manifest, save_artifact
from modelops.cli import run_cli
from modelops.models import count_parameters, create_model
from modelops.training import TrainingConfig
from PR3_model_optimization import model_pruning as mp
from PR3_model_optimization.pruning.config import PruningConfig
from PR3_model_optimization.pruning.fine_tune import fine_tune_pruned, teacher_fine_tune_step
from PR3_model_optimization.pruning.fine_tune import test_accuracy as accuracy_on_test_split
from PR3_model_optimization.pruning.latency import prune_to_target
from PR3_model_optimization.pruning.structured import build_structured_pruner, structured_step
from PR3_model_optimization.pruning.unstructured import (
    make_permanent,
    prunable_layers,
    sparsity_report,
    unstructured_prune,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "PR3_model_optimization" / "model_pruning.py"
INPUT = [3, 32, 32]


def _convs(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_pruning_config_carries_the_flags() -> None:
    args = mp.get_args_parser().parse_args(["--model", "m.pt", "--target-speedup", "1.5", "--epochs", "2",
                                            "--trust-pickle", "--threads", "1"])
    config = mp.pruning_config(args)
    assert config.targeted and config.target_speedup == 1.5 and config.threads == 1
    assert config.training.epochs == 2 and config.training.lr == 0.01  # model_pruning.py's own default lr
    assert config.load.trust_pickle and config.load.threads == 1
    assert config.training.record()["model"] == "m.pt"  # checkpoints keep the whole command line


# --------------------------------------------------------------------------- structured


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
def test_structured_pruning_removes_channels(importance: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 10).eval()
    before_params, before_convs = count_parameters(model), _convs(model)
    example = torch.randn(2, *INPUT)
    # Taylor importance scores channels by |w * dL/dw|: it needs a few batches of (images, labels).
    grads = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, *INPUT), torch.randint(0, 10, (16,))), batch_size=8)
    pruner = build_structured_pruner(model, INPUT, amount=0.3, importance=importance, round_to=8)
    structured_step(pruner, model, importance, grads)
    assert all(p.grad is None for p in model.parameters())

    assert count_parameters(model) < 0.6 * before_params
    after_convs = _convs(model)
    assert after_convs.keys() == before_convs.keys()
    narrowed = [n for n in after_convs if after_convs[n][0] < before_convs[n][0]]
    assert len(narrowed) > len(after_convs) // 2
    assert all(shape[0] % 8 == 0 for shape in after_convs.values())  # round_to=8 channel counts
    assert model(example).shape == (2, 10)
    assert model.fc.out_features == 10  # the classifier is protected


def test_structured_steps_prune_progressively() -> None:
    model = create_model("resnet18", 10).eval()
    pruner = build_structured_pruner(model, INPUT, amount=0.4, steps=2)
    counts = [count_parameters(model)]
    for _ in range(2):
        structured_step(pruner, model, "l1")
        counts.append(count_parameters(model))
    assert counts[0] > counts[1] > counts[2]


RELOAD_CODE = """
import json, sys
import torch
from modelops.artifact import load_artifact
out = {}
for path in sys.argv[1:]:
    predictor = load_artifact(path)
    torch.manual_seed(0)
    logits = predictor(torch.randn(2, 3, 32, 32))
    out[path] = {"params": sum(p.numel() for p in predictor.module.parameters()), "shape": list(logits.shape),
                 "logits": logits.flatten().tolist()}
out["torch_pruning_imported"] = any(m.startswith("torch_pruning") for m in sys.modules)
out["model_pruning_imported"] = any("model_pruning" in m or m.startswith("PR3_model_optimization.pruning")
                                  for m in sys.modules)
print(json.dumps(out))
"""


def test_pruned_artifacts_reload_in_fresh_process_without_torch_pruning(tmp_path: Path) -> None:
    """resnet18 / resnet50 / mobilenet_v3_small reload from the saved tensors alone (no pickled code)."""
    expected = {}
    for arch in ("resnet18", "resnet50", "mobilenet_v3_small"):
        torch.manual_seed(0)
        model = create_model(arch, 10).eval()
        pruner = build_structured_pruner(model, INPUT, amount=0.3)
        structured_step(pruner, model, "l1")
        path = tmp_path / f"{arch}_pruned.pt"
        save_artifact(model, path, Manifest(arch=arch, num_classes=10, input_shape=INPUT))
        torch.manual_seed(0)
        with torch.no_grad():
            expected[str(path)] = (count_parameters(model), model(torch.randn(2, *INPUT)))

    proc = subprocess.run([sys.executable, "-c", RELOAD_CODE, *expected], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_pruning_imported"] is False
    assert out["model_pruning_imported"] is False
    for path, (params, logits) in expected.items():
        assert out[path]["params"] == params
        assert out[path]["shape"] == [2, 10]
        assert torch.allclose(torch.tensor(out[path]["logits"]), logits.flatten(), atol=1e-4)


# --------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("method", ["global", "layerwise"])
def test_unstructured_reaches_sparsity_and_leaves_plain_weights(method: str) -> None:
    model = create_model("mobilenet_v3_small", 10)
    unstructured_prune(model, 0.5, method)
    assert any(name.endswith("weight_mask") for name in model.state_dict())
    make_permanent(model)

    weight_sparsity, _, per_layer = sparsity_report(model)
    assert weight_sparsity == pytest.approx(0.5, abs=0.005)
    if method == "layerwise":
        assert all(v == pytest.approx(0.5, abs=0.01) for v in per_layer.values())
    else:
        assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # one global threshold, uneven layers
    names = list(model.state_dict())
    assert not any(n.endswith(("weight_orig", "weight_mask")) for n in names)
    layers = [m for _, m in prunable_layers(model)]
    assert all(isinstance(m.weight, nn.Parameter) and not m._forward_pre_hooks for m in layers)
    assert model.eval()(torch.randn(1, *INPUT)).shape == (1, 10)


def test_iterative_unstructured_composes_to_the_target() -> None:
    model = create_model("mobilenet_v3_small", 10)
    amount, steps = 0.6, 3
    for step in range(1, steps + 1):
        done, goal = amount * (step - 1) / steps, amount * step / steps
        unstructured_prune(model, (goal - done) / (1 - done), "global")
    make_permanent(model)
    assert sparsity_report(model)[0] == pytest.approx(amount, abs=0.005)


# --------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_recovers_accuracy(digits_resnet18: Path, digits_data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = load_module(digits_resnet18)
    pruner = build_structured_pruner(model, INPUT, amount=0.5)
    structured_step(pruner, model, "l1")
    pruned_accuracy = accuracy_on_test_split(model, digits_data)

    # 2 epochs on 512 samples can leave a 50%-pruned model near chance (13.3% on an AVX512 EPYC); 1024 reach 91.9%.
    small = dataclasses.replace(digits_data, train=Subset(digits_data.train, range(1024)))
    summary = fine_tune_pruned(model, small, TrainingConfig(epochs=2, lr=0.01), batch_size=64, seed=0,
                               output_dir=tmp_path / "ft", progress=False)
    tuned_accuracy = accuracy_on_test_split(model, digits_data)
    assert summary["epochs_run"] == 2
    assert tuned_accuracy > pruned_accuracy + 5, (pruned_accuracy, tuned_accuracy)
    assert (tmp_path / "ft" / "checkpoint.pth").is_file()


def test_teacher_fine_tune_step_adds_teacher_term(digits_resnet18: Path, digits_data) -> None:
    teacher = load_artifact(digits_resnet18)
    student = create_model("resnet18", 10)
    images, targets = next(iter(torch.utils.data.DataLoader(digits_data.train, batch_size=16)))
    plain = teacher_fine_tune_step(teacher, alpha=0.0, temperature=4.0)(student, (images, targets))[0]
    step = teacher_fine_tune_step(teacher, alpha=0.5, temperature=4.0)
    mixed_loss, logits, _ = step(student, (images, targets))
    assert logits.shape == (16, 10)
    assert torch.isfinite(mixed_loss) and not torch.isclose(mixed_loss, plain)
    mixed_loss.backward()
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- the script


def test_main_structured_writes_a_smaller_artifact(digits_resnet18: Path, tmp_path: Path) -> None:
    save = tmp_path / "pruned.pt"
    args = mp.get_args_parser().parse_args([
        "--model", str(digits_resnet18), "--pruning-method", "structured", "--amount", "0.3",
        "--save-path", str(save), "--output-dir", str(tmp_path / "run"), "--latency-rounds", "2",
        "--eval-limit", "128"])
    result = mp.main(args)
    assert {"save_path", "params", "macs", "size_mb", "top1_pct", "top1_pct_before"} <= result.keys()
    assert result["params"] < 0.6 * result["params_before"]
    assert result["macs"] < 0.6 * result["macs_before"]
    assert result["size_mb"] < 0.6 * result["size_mb_before"]
    manifest = read_manifest(save)
    assert manifest.transform["kind"] == "pruning" and manifest.transform["method"] == "structured"
    assert manifest.parent["path"] == str(digits_resnet18)
    assert manifest.metrics["params"] == result["params"]
    predictor = load_artifact(save)
    assert predictor(torch.zeros(3, *INPUT)).shape == (3, 10)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["params"] == result["params"]


def test_main_global_compressed_file_is_smaller_and_loads(digits_resnet18: Path, tmp_path: Path) -> None:
    save = tmp_path / "sparse.pt"
    result = mp.main(mp.get_args_parser().parse_args([
        "--model", str(digits_resnet18), "--pruning-method", "global", "--amount", "0.5",
        "--save-path", str(save), "--output-dir", str(tmp_path / "run"), "--latency-rounds", "2",
        "--eval-limit", "128"]))
    assert result["compressed"] is True
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["params"] == result["params_before"]  # zeros are still stored: no fewer parameters
    assert result["size_mb"] < 0.75 * result["size_mb_before"]
    assert "no faster" in result["note"]
    model, manifest = load_module(save)
    assert manifest.metrics["sparsity"] == result["sparsity"]
    assert sparsity_report(model)[0] == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "run" / "layer_sparsity.csv").is_file()


def test_bad_amount_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "models/whatever.pt", "--amount", "1.5"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --amount must be a fraction in (0, 1), got 1.5"]


@pytest.mark.parametrize("argv, message", [
    (["--amount", "0"], "--amount must be a fraction in (0, 1), got 0.0"),
    (["--pruning-method", "global", "--target-speedup", "2"], "need --pruning-method structured"),
    (["--pruning-method", "layerwise", "--importance", "taylor"], "applies to structured pruning"),
    (["--distill-from", "x.pt"], "add --fine-tune"),
])
def test_bad_flags_exit_2(argv: list[str], message: str, capsys) -> None:
    code = run_cli(mp.main, mp.get_args_parser(), ["--model", "m.pt", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_unknown_method_is_rejected_by_argparse(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        mp.get_args_parser().parse_args(["--model", "m.pt", "--pruning-method", "magic"])
    assert exc.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err


@pytest.mark.parametrize("method, layers, message", [
    ("global", [nn.AdaptiveAvgPool2d(1), nn.Flatten()], "nothing to prune"),
    ("structured", [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)], "no prunable channels"),
])
def test_model_with_nothing_prunable_exits_2(method, layers, message, tmp_path: Path, capsys) -> None:
    path = tmp_path / "tiny.pt"
    save_artifact(nn.Sequential(*layers), path, Manifest(num_classes=10, input_shape=INPUT), fmt="pickle")
    code = run_cli(mp.main, mp.get_args_parser(), [
        "--model", str(path), "--trust-pickle", "--pruning-method", method,
        "--save-path", str(tmp_path / "o.pt")])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_prune_to_target_stops_when_measured_target_is_met() -> None:
    model = create_model("resnet18", 10).eval()
    original = create_model("resnet18", 10).eval()
    original.load_state_dict(model.state_dict())
    config = PruningConfig(target_speedup=1.2, amount_step=0.2, max_amount=0.6, memory_format="contiguous",
                           latency_batch_size=4, latency_rounds=3, importance="l1", round_to=8)
    pruner = build_structured_pruner(model, INPUT, amount=0.6, steps=3)
    rows = prune_to_target(pruner, model, original, config, INPUT)
    amounts = [row["amount"] for row in rows]
    assert amounts == sorted(amounts) and 1 <= len(rows) <= 3
    assert all(row["latency_ms_p50"] > 0 and row["params_ratio"] < 1 for row in rows)
    # it stops at the first step that meets the target, or runs to --max-amount
    assert all(row["speedup_x"] < 1.2 for row in rows[:-1])
    assert rows[-1]["speedup_x"] >= 1.2 or rows[-1]["amount"] == pytest.approx(0.6)
