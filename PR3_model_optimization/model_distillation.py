"""Distil a teacher model into a smaller student: Hinton soft targets, optional feature hints.

    python PR3_model_optimization/model_distillation.py --teacher models/resnet50.pt \\
        --save-path models/distilled_model.pt --epochs 10

The teacher is any artifact (it only runs inference); the student is a torchvision architecture
(``--student-arch``, default: picked for the teacher, at most half its size) or an existing
state_dict artifact (``--student``, e.g. a pruned model). Writes the student artifact with lineage to
the teacher, per-epoch metrics (CSV), loss/accuracy curves (PNG) and a JSON summary. With
``--baseline-student`` the same student is also trained without the teacher on the same budget.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from modelops.artifact import Manifest, Predictor, load_artifact, load_module, read_manifest, save_artifact
from modelops.cli import check_positive, common_parser, load_model_dataset, load_options, run_cli, training_config
from modelops.data import AugmentedDataset, DatasetSplits, make_loader, train_augmentation
from modelops.errors import UsageError
from modelops.evaluate import evaluate
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.models import check_arch, classifier_layer, count_macs, count_parameters, create_model
from modelops.results import speedup_key, write_results
from modelops.timed_modules import Timer, medians_or_raise
from modelops.training import add_training_args, check_training_config, cross_entropy_step, fit
from PR3_model_optimization.distillation import (
    DistillationLoss,
    HintStudent,
    IndexedDataset,
    TeacherCache,
    TeacherRunner,
    distillation_step,
)

logger = logging.getLogger(__name__)

# Default student per teacher architecture: at most half the teacher's parameters. resnet50 -> resnet18 is the
# pairing the PR3 README measures (size, speed and accuracy against the teacher). For a resnet18 teacher,
# mobilenet_v3_small has far fewer parameters, but on tiny inputs such as 32x32 per-op overhead dominates, so it
# need not be faster at batch 1: users of tiny inputs pick --student-arch themselves.
DEFAULT_STUDENTS = {
    "resnet50": "resnet18", "resnet101": "resnet18", "resnet152": "resnet18", "wide_resnet50_2": "resnet18",
    "resnext50_32x4d": "resnet18", "resnet34": "resnet18", "resnet18": "mobilenet_v3_small",
}
# Tried in order for other teachers: the first with at most half the teacher's parameters wins.
FALLBACK_STUDENTS = ("resnet18", "mobilenet_v3_large", "mobilenet_v3_small")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a smaller student model from a teacher's soft targets (knowledge distillation).",
        parents=[common_parser()], add_help=add_help,
    )
    models = parser.add_argument_group("models")
    models.add_argument("--teacher", default="models/resnet50.pt",
                        help="teacher artifact, any format (default: models/resnet50.pt)")
    student = models.add_mutually_exclusive_group()
    student.add_argument("--student-arch", default="auto",
                         help="torchvision architecture for a fresh student; 'auto' picks one at most half the "
                              "teacher's size (resnet50 -> resnet18) (default: auto)")
    student.add_argument("--student", default=None,
                         help="start from this state_dict artifact instead, e.g. a pruned model (default: none)")
    models.add_argument("--save-path", default="models/distilled_model.pt",
                        help="where to write the student artifact (default: models/distilled_model.pt)")
    models.add_argument("--output-dir", default=None,
                        help="checkpoints, metrics.csv, curves.png, summary.json (default: runs/distill_<student>)")
    kd = parser.add_argument_group("distillation")
    kd.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T (default: 4.0)")
    kd.add_argument("--alpha", type=float, default=0.7,
                    help="weight of the teacher's soft-target term; 1 - alpha weights the labels (default: 0.7)")
    kd.add_argument("--hint-weight", type=float, default=0.0,
                    help="weight of an MSE hint on the penultimate features through a linear adapter "
                         "(torch teachers only; default: 0.0 = off)")
    kd.add_argument("--cache-teacher-logits", action="store_true",
                    help="run the teacher once per training sample instead of every epoch; needs --no-augment "
                         "(default: off)")
    kd.add_argument("--baseline-student", action="store_true",
                    help="also train the same student without the teacher, same budget, and report both "
                         "(default: off)")
    kd.add_argument("--limit", type=int, default=None,
                    help="use only the first N training samples (quick runs) (default: all)")
    kd.add_argument("--speed-rounds", type=int, default=20,
                    help="interleaved timing rounds of teacher vs student at batch 1 and 16; 0 skips (default: 20)")
    add_training_args(parser, epochs=10, lr=0.001)
    # AdamW: the T^2-scaled soft term's gradients are up to T times those of plain cross-entropy while the
    # student is far from the teacher, which made SGD at 0.05 diverge here; Adam's step size ignores that scale.
    parser.set_defaults(opt="adamw")
    return parser


def check_args(args: argparse.Namespace) -> None:
    check_training_config(training_config(args))
    check_positive("--temperature", args.temperature)
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be within [0, 1], got {args.alpha}")
    check_positive("--hint-weight", args.hint_weight, allow_zero=True)
    check_positive("--limit", args.limit)
    check_positive("--speed-rounds", args.speed_rounds, allow_zero=True)
    if args.cache_teacher_logits and not args.no_augment:
        raise UsageError("--cache-teacher-logits needs a deterministic input pipeline: add --no-augment "
                         "(with augmentation the teacher must see every augmented image)")
    if Path(args.teacher).suffix and not Path(args.teacher).exists():
        raise UsageError(f"Teacher model {args.teacher} does not exist. Create it with: python "
                         f"PR3_model_optimization/prepare_model.py --arch resnet50 --save-path {args.teacher}")


def pick_student_arch(teacher_arch: str | None, num_classes: int, teacher_params: int) -> str:
    """The default student for a teacher: a measured pairing, else the first fallback at most half its size."""
    if teacher_arch in DEFAULT_STUDENTS:
        return DEFAULT_STUDENTS[teacher_arch]
    for arch in FALLBACK_STUDENTS:
        if count_parameters(create_model(arch, num_classes)) <= teacher_params / 2:
            return arch
    return FALLBACK_STUDENTS[-1]


def build_student(args: argparse.Namespace, teacher: Predictor) -> tuple[nn.Module, str, Any]:
    """(student module, its arch, its own manifest or None) with a head that fits the teacher's classes."""
    num_classes = teacher.num_classes
    if args.student:
        student, manifest = load_module(args.student, load_options(args))
        student_classes = classifier_layer(student)[1].out_features
        if student_classes != num_classes:
            raise UsageError(f"Student {args.student} predicts {student_classes} classes but teacher {args.teacher} "
                             f"predicts {num_classes}: they must match")
        if list(manifest.input_shape) != teacher.input_shape:
            raise UsageError(f"Student {args.student} takes input {manifest.input_shape} but teacher "
                             f"{args.teacher} takes {teacher.input_shape}: they must match")
        return student.train(), manifest.arch or type(student).__name__.lower(), manifest
    if args.student_arch == "auto":
        teacher_params = teacher.manifest.metrics.get("params") or (
            count_parameters(teacher.module) if teacher.module is not None else 0)
        arch = pick_student_arch(teacher.manifest.arch, num_classes, int(teacher_params))
        logger.info("Student architecture for teacher %s: %s", teacher.manifest.arch, arch)
    else:
        arch = check_arch(args.student_arch)
    return create_model(arch, num_classes), arch, None


def load_data(args: argparse.Namespace, teacher: Predictor) -> DatasetSplits:
    data = load_model_dataset(args, teacher.manifest)  # fake data takes the teacher's classes and size
    if data.num_classes != teacher.num_classes:
        raise UsageError(f"Dataset {args.dataset} has {data.num_classes} classes but teacher {args.teacher} "
                         f"predicts {teacher.num_classes}: pass the dataset the teacher was trained on")
    if data.input_shape != teacher.input_shape:
        raise UsageError(f"Teacher {args.teacher} takes input {teacher.input_shape}, --image-size gives "
                         f"{data.input_shape}")
    return data


def _train_set(args: argparse.Namespace, data: DatasetSplits):
    train = data.train
    if args.limit is not None and args.limit < len(train):
        train = Subset(train, range(args.limit))
    if not args.no_augment:
        train = AugmentedDataset(train, train_augmentation(data.image_size))
    return train


def distill(
    student: nn.Module, teacher: Predictor, data: DatasetSplits, args: argparse.Namespace, output_dir: Path,
    *, progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``student`` against ``teacher``; returns the student (best validation weights) and its history."""
    loss_fn = DistillationLoss(args.temperature, args.alpha, args.label_smoothing)
    hint = args.hint_weight > 0
    teacher_fn = teacher.module if teacher.backend == "torch" else teacher
    if hint and teacher.backend != "torch":
        raise UsageError(f"--hint-weight needs an eager (state_dict) teacher; {args.teacher} is {teacher.backend}")
    train = _train_set(args, data)
    runner, cache = None, None
    if args.cache_teacher_logits:
        started = time.perf_counter()
        cache = TeacherCache.build(teacher_fn, train, with_features=hint, progress=progress)
        logger.info("Cached teacher outputs for %d samples in %.1fs", len(cache.logits), time.perf_counter() - started)
        train = IndexedDataset(train)
    else:
        runner = TeacherRunner(teacher_fn, with_features=hint)
    model: nn.Module = student
    if hint:
        teacher_dim = cache.features.shape[1] if cache is not None else runner.feature_dim
        model = HintStudent(student, teacher_dim)
    step = distillation_step(loss_fn, teacher=runner, cache=cache, hint_weight=args.hint_weight)
    train_loader = make_loader(train, args.batch_size, shuffle=True, seed=args.seed, workers=args.workers)
    val_loader = make_loader(data.val, 256)
    result = fit(model, train_loader, val_loader, training_config(args), output_dir=output_dir, step_fn=step,
                 desc="distill", progress=progress)
    return student.eval(), {"history": result.history, "best_val_top1_pct": result.best_accuracy,
                            "best_epoch": result.best_epoch, "stopped_early": result.stopped_early}


def train_baseline(
    student: nn.Module, data: DatasetSplits, args: argparse.Namespace, output_dir: Path, *, progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """The same student, same data and epochs, labels only: what the student learns without a teacher."""
    checkpoint = output_dir / "checkpoint.pth"
    # A resumed run continues the baseline from its own checkpoint, not the distilled student's.
    config = training_config(args, resume=str(checkpoint) if args.resume and checkpoint.is_file() else None)
    loader = make_loader(_train_set(args, data), args.batch_size, shuffle=True, seed=args.seed, workers=args.workers)
    result = fit(student, loader, make_loader(data.val, 256), config, output_dir=output_dir,
                 step_fn=cross_entropy_step(args.label_smoothing), desc="baseline", progress=progress)
    return student.eval(), {"history": result.history, "best_val_top1_pct": result.best_accuracy,
                            "best_epoch": result.best_epoch}


def plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Training loss and validation accuracy per epoch, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = [row["epoch"] + 1 for row in history]
        loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label=f"{name} train loss")
        acc_ax.plot(epochs, [row["val_top1_pct"] for row in history], marker="o", label=f"{name} val")
        acc_ax.plot(epochs, [row["train_top1_pct"] for row in history], linestyle="--", label=f"{name} train")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_speed(artifacts: dict[str, str | Path], rounds: int, batch_sizes: tuple[int, ...] = (1, 16), *,
                  threads: int | None = None, trust_pickle: bool = False, timer: Timer = time_artifacts,
                  ) -> dict[str, float]:
    """Median latency of each artifact at each batch size: each loaded only in its own process, timed in
    interleaved turns (:func:`modelops.model_process.time_artifacts`)."""
    times = timer(artifacts, list(batch_sizes), rounds, options=LoadOptions(threads=threads, trust_pickle=trust_pickle))
    out: dict[str, float] = {}
    for batch_size in batch_sizes:
        for name, ms in medians_or_raise(times, batch_size).items():
            out[f"{name}_latency_ms_p50_b{batch_size}"] = round(ms, 3)
    return out


def baseline_student(args: argparse.Namespace, teacher: Predictor, data: DatasetSplits, arch: str,
                     student_manifest: Any, initial_state: dict, output_dir: Path) -> tuple[nn.Module, dict]:
    """The same student (same initial weights, data and budget) trained on the labels alone."""
    fresh = (create_model(arch, teacher.num_classes) if student_manifest is None
             else load_module(args.student, load_options(args))[0])
    fresh.load_state_dict(initial_state)
    return train_baseline(fresh.train(), data, args, output_dir / "baseline")


def save_student(student: nn.Module, args: argparse.Namespace, teacher: Predictor, data: DatasetSplits, arch: str,
                 student_manifest: Any, metrics: dict[str, Any]) -> Manifest:
    """Write the student artifact; its manifest names the teacher and the distillation settings."""
    parent_manifest, parent_path = (student_manifest, args.student) if student_manifest else (
        teacher.manifest, args.teacher)
    transform = {"kind": "distillation", "teacher": str(args.teacher), "teacher_arch": teacher.manifest.arch,
                 "teacher_sha256": teacher.manifest.sha256, "temperature": args.temperature, "alpha": args.alpha,
                 "hint_weight": args.hint_weight, "epochs": args.epochs,
                 "cached_teacher_logits": bool(args.cache_teacher_logits)}
    manifest = parent_manifest.derive(parent_path=parent_path, transform=transform, arch=arch, format="state_dict",
                                      input_shape=data.input_shape, preprocessing=data.preprocessing,
                                      split_seed=data.split_seed)
    manifest.metrics = metrics
    if student_manifest is not None:  # a pruned student keeps its measured memory-format hint
        manifest.runtime = student_manifest.runtime.model_copy()
    return save_artifact(student, Path(args.save_path), manifest)


def save_baseline(baseline: nn.Module, args: argparse.Namespace, teacher: Predictor, data: DatasetSplits, arch: str,
                  student_manifest: Any, accuracy: float, output_dir: Path) -> Path:
    """Write the teacher-less student beside the run's outputs."""
    parent_path = args.student if student_manifest else args.teacher
    baseline_path = output_dir / "baseline_student.pt"
    base_manifest = (student_manifest or teacher.manifest).derive(
        parent_path=parent_path, transform={"kind": "baseline", "source": "trained", "epochs": args.epochs},
        arch=arch, format="state_dict", input_shape=data.input_shape, preprocessing=data.preprocessing,
        split_seed=data.split_seed)
    base_manifest.metrics = {"accuracy": accuracy, "params": count_parameters(baseline)}
    save_artifact(baseline, baseline_path, base_manifest)
    return baseline_path


def speed_summary(args: argparse.Namespace) -> dict[str, Any]:
    """Teacher and saved student files, each in its own process, timed in turns at batch 1 and 16; the speed-ups
    (``speedup_b1_x``, ``speedup_b16_x``: the teacher's median latency over the student's)."""
    speed = compare_speed({"teacher": args.teacher, "student": args.save_path}, args.speed_rounds,
                          threads=args.threads, trust_pickle=args.trust_pickle)
    for b in (1, 16):
        speed[speedup_key(b)] = round(speed[f"teacher_latency_ms_p50_b{b}"] / speed[f"student_latency_ms_p50_b{b}"], 3)
    return speed


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    teacher = load_artifact(args.teacher, load_options(args))
    data = load_data(args, teacher)
    # Seeded here too (not only by run_cli) so callers of main() such as the pipeline get the same student.
    torch.manual_seed(args.seed)
    student, arch, student_manifest = build_student(args, teacher)
    output_dir = Path(args.output_dir or f"runs/distill_{arch}")
    save_path = Path(args.save_path)
    initial_state = copy.deepcopy(student.state_dict()) if args.baseline_student else None

    started = time.perf_counter()
    student, run = distill(student, teacher, data, args, output_dir / "student")
    train_s = time.perf_counter() - started
    histories = {"distilled": run["history"]}

    test_loader = make_loader(data.test, 256)
    teacher_accuracy = evaluate(teacher, test_loader)["accuracy"]
    student_accuracy = evaluate(student, test_loader)["accuracy"]
    summary: dict[str, Any] = {
        "teacher": str(args.teacher), "teacher_arch": teacher.manifest.arch, "student_arch": arch,
        "seed": args.seed, "split_seed": data.split_seed,
        "model": str(save_path), "manifest": f"{save_path}.json",
        "teacher_accuracy": teacher_accuracy, "student_accuracy": student_accuracy,
        "accuracy_delta_pts": round(student_accuracy - teacher_accuracy, 4),
        "best_val_top1_pct": run["best_val_top1_pct"], "best_epoch": run["best_epoch"],
        "epochs_run": len(run["history"]), "stopped_early": run["stopped_early"], "train_s": round(train_s, 1),
    }
    baseline = None
    if args.baseline_student:
        baseline, base_run = baseline_student(args, teacher, data, arch, student_manifest, initial_state, output_dir)
        histories["baseline (no teacher)"] = base_run["history"]
        summary["baseline_accuracy"] = evaluate(baseline, test_loader)["accuracy"]
        summary["distillation_gain_pts"] = round(student_accuracy - summary["baseline_accuracy"], 4)

    params = count_parameters(student)
    manifest = save_student(student, args, teacher, data, arch, student_manifest, {
        "accuracy": student_accuracy, "teacher_accuracy": teacher_accuracy, "params": params,
        "macs": count_macs(student, data.input_shape), "best_val_top1_pct": run["best_val_top1_pct"],
        "train_s": round(train_s, 1),
        **({"baseline_accuracy": summary["baseline_accuracy"]} if baseline is not None else {}),
    })
    if baseline is not None:
        summary["baseline_model"] = str(save_baseline(baseline, args, teacher, data, arch, student_manifest,
                                                      summary["baseline_accuracy"], output_dir))
    teacher_size = teacher.manifest.size_mb or read_manifest(args.teacher).size_mb
    summary.update({
        "size_mb": manifest.size_mb, "teacher_size_mb": teacher_size,
        "size_ratio": round(manifest.size_mb / teacher_size, 4) if teacher_size else None,
        "params_m": round(params / 1e6, 3),
        "teacher_params_m": round(teacher.manifest.metrics.get("params", 0) / 1e6, 3) or None,
    })
    if args.speed_rounds:
        summary.update(speed_summary(args))
    return write_outputs(summary, histories, output_dir)


def write_outputs(summary: dict[str, Any], histories: dict[str, list[dict[str, float]]], output_dir: Path) -> dict:
    """metrics.csv, curves.png and summary.json in ``output_dir``; the summary is printed and returned."""
    summary["metrics_csv"] = str(write_results(output_dir / "metrics.csv", _merged_history(histories)))
    summary["curves_png"] = str(plot_curves(histories, output_dir / "curves.png"))
    summary["summary_json"] = str(output_dir / "summary.json")
    write_results(output_dir / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    return summary


def _merged_history(histories: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    return [{"run": name, **row} for name, history in histories.items() for row in history]


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
