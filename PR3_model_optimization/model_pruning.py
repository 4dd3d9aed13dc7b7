"""Prune a model artifact: structured (whole channels removed: smaller and faster) or unstructured.

- ``--pruning-method structured`` removes whole channels with torch-pruning, which follows the
  dependency graph across residual connections so every coupled layer shrinks together. The saved
  model is physically smaller and runs faster on ordinary dense kernels, and it reloads as a plain
  torchvision module (``modelops.models.resize_to_state_dict`` rebuilds the layer shapes).
- ``--pruning-method global | layerwise`` zeroes the smallest weights (L1 magnitude) with
  ``torch.nn.utils.prune`` across all layers or per layer, then makes it permanent. Dense CPU
  kernels multiply zeros as fast as any other number, so this is NOT faster; ``--compress`` stores
  the weights deflate-compressed so the zeros at least cost no disk space.
- ``--target-speedup`` / ``--target-latency-ms`` prune structurally in small increments until the
  latency MEASURED on this machine meets the target, rather than trusting a MAC count.

    python PR3_model_optimization/model_pruning.py --model models/resnet50.pt --pruning-method global \\
        --amount 0.3 --fine-tune --save-path models/pruned_model.pt
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

from modelops.artifact import Manifest, file_size_mb, load_artifact, load_module, save_artifact
from modelops.artifact import write_manifest as write_artifact_manifest
from modelops.cli import check_positive, common_parser, run_cli, split_seed
from modelops.data import DatasetSplits, load_dataset, make_loader
from modelops.errors import UsageError
from modelops.evaluate import evaluate
from modelops.models import classifier_layer, count_macs, count_parameters
from modelops.timing import interleaved_latency, latency_stats
from modelops.training import StepFn, add_training_args, check_training_args, cross_entropy_step, fit

logger = logging.getLogger(__name__)

METHODS = ("structured", "global", "layerwise")
UNSTRUCTURED = ("global", "layerwise")
IMPORTANCES = ("l1", "l2", "bn", "taylor")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
UNSTRUCTURED_NOTE = (
    "unstructured pruning zeroes weights but keeps dense tensors: dense CPU kernels run no faster and "
    "the plain file is no smaller (use --compress for a smaller file)"
)
# channels_last must beat the default layout by this much to be recorded as the runtime hint.
CHANNELS_LAST_MIN_GAIN = 1.05
# Batches whose gradients feed the Taylor importance.
TAYLOR_BATCHES = 4


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prune a model artifact (structured channels with torch-pruning, or unstructured L1), "
                    "optionally fine-tune it, and save it as a new artifact with its manifest.",
        parents=[common_parser()], add_help=add_help,
    )
    for action in parser._actions:
        # A model should be fine-tuned and scored on the data it was trained on, not on the generic default.
        if action.dest == "dataset":
            action.default = None
            action.help = ("digits | cifar10 | imagefolder:PATH | fake "
                           "(default: the model manifest's dataset, else digits)")
    group = parser.add_argument_group("pruning")
    group.add_argument("--model", required=True,
                       help="state_dict (or trusted pickle) model artifact to prune (required)")
    group.add_argument("--pruning-method", default="structured", choices=METHODS,
                       help="structured: remove channels (smaller, faster); global / layerwise: zero the "
                            "smallest weights across all layers / in each layer (not faster) "
                            "(default: structured)")
    group.add_argument("--amount", type=float, default=0.3,
                       help="fraction to prune, in (0, 1): channels for structured, weights otherwise "
                            "(default: 0.3)")
    group.add_argument("--importance", default="l1", choices=IMPORTANCES,
                       help="structured channel ranking: l1 / l2 group magnitude, bn (BatchNorm scale), "
                            "taylor (first-order, uses a few training batches) (default: l1)")
    group.add_argument("--steps", type=int, default=1,
                       help="prune in this many equal steps, fine-tuning --epochs after each with --fine-tune"
                            " "
                            "(default: 1)")
    group.add_argument("--round-to", type=int, default=8,
                       help="keep structured channel counts multiples of this, for SIMD-friendly kernels "
                            "(default: 8)")
    group.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                       help="store weights deflate-compressed in the .pt zip so zeroed weights take no disk "
                            "space; loads unchanged with torch.load "
                            "(default: on for global/layerwise, off for structured)")
    group.add_argument("--memory-format", default="auto", choices=MEMORY_FORMATS,
                       help="runtime layout hint written to the manifest; auto measures both and keeps "
                            "channels_last only when it is faster (default: auto)")
    group.add_argument("--save-path", default="models/pruned_model.pt",
                       help="output artifact (default: models/pruned_model.pt)")
    group.add_argument("--output-dir", default="runs/prune",
                       help="fine-tuning checkpoints, metrics.csv, layer_sparsity.csv, results.json "
                            "(default: runs/prune)")

    target = parser.add_argument_group("latency target (structured only; replaces --amount)")
    exclusive = target.add_mutually_exclusive_group()
    exclusive.add_argument("--target-speedup", type=float, default=None,
                           help="prune until the measured speed-up over the original reaches this "
                                "(default: off)")
    exclusive.add_argument("--target-latency-ms", type=float, default=None,
                           help="prune until the measured median latency is at most this (default: off)")
    target.add_argument("--amount-step", type=float, default=0.05,
                        help="channel fraction added per increment (default: 0.05)")
    target.add_argument("--max-amount", type=float, default=0.8,
                        help="stop pruning at this fraction (default: 0.8)")

    timing = parser.add_argument_group("latency measurement")
    timing.add_argument("--latency-batch-size", type=int, default=1,
                        help="batch for latency checks (default: 1)")
    timing.add_argument("--latency-rounds", type=int, default=10,
                        help="interleaved timed rounds per comparison, after 3 warm-up calls (default: 10)")

    tune = parser.add_argument_group("fine-tuning")
    tune.add_argument("--fine-tune", action="store_true",
                      help="train the pruned model on the dataset's train split, keeping the best by "
                           "validation accuracy (default: off)")
    tune.add_argument("--distill-from", default=None,
                      help="teacher artifact (usually the unpruned --model) for knowledge distillation while "
                           "fine-tuning (default: off)")
    tune.add_argument("--kd-alpha", type=float, default=0.5,
                      help="weight of the distillation term; (1 - alpha) weights the label loss "
                           "(default: 0.5)")
    tune.add_argument("--kd-temperature", type=float, default=4.0,
                      help="softmax temperature for distillation (default: 4.0)")
    tune.add_argument("--eval-limit", type=int, default=None,
                      help="score accuracy on only the first N test samples (quick runs) (default: all)")
    add_training_args(parser, epochs=3, lr=0.01)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject bad values with a message that names them (exit 2), before any work starts."""
    targeted = args.target_speedup is not None or args.target_latency_ms is not None
    if not 0 < args.amount < 1:
        raise UsageError(f"--amount must be a fraction in (0, 1), got {args.amount}")
    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.round_to < 1:
        raise UsageError(f"--round-to must be at least 1, got {args.round_to}")
    if args.pruning_method in UNSTRUCTURED and args.importance != "l1":
        raise UsageError(f"--importance {args.importance} applies to structured pruning; unstructured "
                         f"{args.pruning_method} pruning ranks weights by |w| (l1)")
    if targeted:
        if args.pruning_method != "structured":
            raise UsageError(f"--target-speedup/--target-latency-ms need --pruning-method structured: "
                             f"{args.pruning_method} pruning keeps dense tensors and gets no faster")
        if args.steps > 1:
            raise UsageError("--steps does not combine with a latency target (the target picks the steps)")
        check_positive("--target-speedup", args.target_speedup)
        check_positive("--target-latency-ms", args.target_latency_ms)
        if not 0 < args.amount_step < 1 or not 0 < args.max_amount < 1:
            raise UsageError(f"--amount-step and --max-amount must be fractions in (0, 1), "
                             f"got {args.amount_step} and {args.max_amount}")
    if args.latency_batch_size < 1 or args.latency_rounds < 1:
        raise UsageError("--latency-batch-size and --latency-rounds must be at least 1")
    if not 0 <= args.kd_alpha <= 1:
        raise UsageError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
    check_positive("--kd-temperature", args.kd_temperature)
    if args.distill_from and not args.fine_tune:
        raise UsageError("--distill-from is used while fine-tuning: add --fine-tune")
    if args.resume and args.steps > 1:
        raise UsageError("--resume continues one fine-tuning run; it does not combine with --steps > 1")
    if args.fine_tune:
        check_training_args(args)


# --------------------------------------------------------------------------- unstructured


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers with a weight: what unstructured pruning may zero."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and getattr(m, "weight", None) is not None]


def unstructured_prune(model: nn.Module, amount: float, method: str = "global") -> nn.Module:
    """Zero the ``amount`` smallest-|w| weights; masks stay attached until :func:`make_permanent`.

    Applied again to an already pruned model, ``amount`` counts among the weights still unpruned
    (torch's pruning containers compose), which is what iterative pruning needs.

    Args:
        model: modified in place.
        amount: fraction in (0, 1).
        method: ``global`` (one threshold across all layers) or ``layerwise`` (the same fraction per layer).
    """
    layers = prunable_layers(model)
    if not layers:
        raise UsageError(f"{type(model).__name__} has no Conv or Linear weights: nothing to prune")
    if method == "global":
        torch_prune.global_unstructured([(m, "weight") for _, m in layers],
                                        pruning_method=torch_prune.L1Unstructured, amount=amount)
    elif method == "layerwise":
        for _, module in layers:
            torch_prune.l1_unstructured(module, "weight", amount=amount)
    else:
        raise UsageError(f"Unknown unstructured method {method!r}. Choose one of: {', '.join(UNSTRUCTURED)}")
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """``prune.remove`` every mask, leaving plain ``weight`` parameters holding the zeros."""
    for module in model.modules():
        if torch_prune.is_pruned(module):
            hooks = [h for h in module._forward_pre_hooks.values()
                     if isinstance(h, torch_prune.BasePruningMethod)]
            for hook in hooks:
                torch_prune.remove(module, hook._tensor_name)
    return model


def sparsity_report(model: nn.Module) -> tuple[float, float, dict[str, float]]:
    """(zero fraction of prunable weights, zero fraction of all parameters, per-layer zero fraction)."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in prunable_layers(model):
        weight = module.weight.detach()
        n_zero = int((weight == 0).sum())
        per_layer[name] = round(n_zero / weight.numel(), 4)
        zeros += n_zero
        total += weight.numel()
    all_zero = sum(int((p.detach() == 0).sum()) for p in model.parameters())
    all_total = count_parameters(model)
    return zeros / max(total, 1), all_zero / max(all_total, 1), per_layer


# --------------------------------------------------------------------------- structured


def build_importance(name: str):
    """torch-pruning's channel-group scorer for ``--importance``."""
    import torch_pruning as tp

    if name in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UsageError(f"Unknown importance {name!r}. Choose one of: {', '.join(IMPORTANCES)}")


def build_structured_pruner(
    model: nn.Module, input_shape: list[int], *, amount: float, steps: int = 1, importance: str = "l1",
    round_to: int = 8,
):
    """A torch-pruning ``BasePruner`` that reaches ``amount`` of channels in ``steps`` calls of ``step()``.

    The classifier layer is ignored so the model keeps its number of classes. Raises
    :class:`UsageError` when the model has no channel group that may be pruned.
    """
    import torch_pruning as tp

    ignored = []
    with contextlib.suppress(UsageError):  # no Linear head: every layer is fair game
        ignored.append(classifier_layer(model)[1])
    was_training = model.training
    model.eval()  # tracing in eval mode leaves BatchNorm running statistics alone
    pruner = tp.pruner.BasePruner(
        model, torch.zeros(1, *input_shape), importance=build_importance(importance), pruning_ratio=amount,
        iterative_steps=steps, ignored_layers=ignored, round_to=round_to,
    )
    model.train(was_training)
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                           root_module_types=pruner.root_module_types))
    if not groups:
        raise UsageError(f"{type(model).__name__} has no prunable channels (only its classifier, which is "
                         "kept): nothing to prune structurally")
    return pruner


def accumulate_taylor_gradients(model: nn.Module, loader, batches: int = TAYLOR_BATCHES) -> None:
    """Fill ``.grad`` from a few training batches: Taylor importance scores channels by |w * dL/dw|."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        if i >= batches:
            break
        F.cross_entropy(model(images), targets).backward()


def structured_step(pruner, model: nn.Module, importance: str, grad_loader=None) -> None:
    """One pruning step; Taylor importance needs fresh gradients first."""
    if importance == "taylor":
        if grad_loader is None:
            raise UsageError("--importance taylor needs training data for gradients")
        accumulate_taylor_gradients(model, grad_loader)
    pruner.step()
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- fine-tuning and measuring


def distillation_step(teacher: Callable[[torch.Tensor], torch.Tensor], *, alpha: float, temperature: float,
                      label_smoothing: float = 0.0) -> StepFn:
    """``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)`` (Hinton et al.).

    Built from the distillation module shared with ``model_distillation.py``; ``teacher`` is any
    artifact predictor (or module), run without gradients.
    """
    from PR3_model_optimization.distillation import DistillationLoss, TeacherRunner
    from PR3_model_optimization.distillation import distillation_step as kd_step

    loss = DistillationLoss(temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)
    return kd_step(loss, teacher=TeacherRunner(teacher))


def fine_tune(
    model: nn.Module, data: DatasetSplits, args: argparse.Namespace, *, output_dir: Path,
    step_fn: StepFn | None = None, desc: str = "fine-tune", progress: bool = True,
) -> dict[str, Any]:
    """``modelops.training.fit`` on the train split, best weights by validation accuracy; a summary dict."""
    train_loader = make_loader(data.train, args.batch_size, shuffle=True, seed=args.seed,
                               workers=args.workers)
    val_loader = make_loader(data.val, 256)
    result = fit(model, train_loader, val_loader, args, output_dir=output_dir, step_fn=step_fn, desc=desc,
                 progress=progress)
    model.eval()
    return {"best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history)}


def test_accuracy(model: Callable[[torch.Tensor], torch.Tensor], data: DatasetSplits,
                  limit: int | None = None) -> float:
    return evaluate(model, make_loader(data.test, 256, limit=limit))["accuracy"]


def compare_latency(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], input_shape: list[int], *,
                    batch_size: int = 1, rounds: int = 10) -> dict[str, float]:
    """Median ms per variant, measured interleaved in one run (noise on a shared machine hits all alike)."""
    batch = torch.randn(batch_size, *input_shape)
    samples = interleaved_latency(fns, batch, warmup=3, rounds=rounds)
    return {name: latency_stats(values)["latency_ms_p50"] for name, values in samples.items()}


def channels_last_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` run the way ``load_artifact`` runs a channels_last hint: weights and input in NHWC."""
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    return lambda batch: nhwc(batch.contiguous(memory_format=torch.channels_last))


def compress_in_place(path: Path) -> None:
    """Rewrite a ``torch.save`` zip with deflate: zeroed weights shrink; ``torch.load`` reads it unchanged."""
    tmp = path.with_name(path.name + ".deflate")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                          compresslevel=6) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    tmp.replace(path)


# --------------------------------------------------------------------------- the pruning runs


def prune_to_target(pruner, model: nn.Module, original: Callable, args: argparse.Namespace,
                    input_shape: list[int], grad_loader=None) -> list[dict[str, Any]]:
    """Prune structurally in ``--amount-step`` increments until the measured latency meets the target.

    ``pruner`` comes from :func:`build_structured_pruner` with ``amount=--max-amount`` and one
    step per increment. Each increment is timed interleaved with the original (and in
    channels_last when allowed), and the run stops at the first step that meets the target or at
    ``--max-amount``. Returns one row per step. The model is left at the last step taken.
    """
    from tqdm import tqdm

    n_steps = pruner.iterative_steps
    params_before = count_parameters(model)
    rows: list[dict[str, Any]] = []
    for step in tqdm(range(1, n_steps + 1), desc="prune to target", disable=not sys.stderr.isatty()):
        structured_step(pruner, model, args.importance, grad_loader)
        model.eval()
        fns = {"original": original, "pruned": model}
        if args.memory_format != "contiguous":
            fns["pruned_channels_last"] = channels_last_fn(model)
        medians = compare_latency(fns, input_shape, batch_size=args.latency_batch_size,
                                  rounds=args.latency_rounds)
        variants = {"contiguous": ("pruned",), "channels_last": ("pruned_channels_last",),
                    "auto": ("pruned", "pruned_channels_last")}[args.memory_format]
        best = min(variants, key=lambda v: medians[v])
        row = {"step": step, "amount": round(pruner.per_step_pruning_ratio[step], 4),
               "params_ratio": round(count_parameters(model) / params_before, 4),
               "latency_ms_p50_original": medians["original"], "latency_ms_p50": medians[best],
               "speedup": round(medians["original"] / medians[best], 3),
               "memory_format": "channels_last" if best.endswith("channels_last") else "contiguous"}
        rows.append(row)
        logger.info("target step %d: amount %.2f params x%.2f latency %.2f ms vs %.2f ms (%.2fx, %s)", step,
                    row["amount"], row["params_ratio"], row["latency_ms_p50"], row["latency_ms_p50_original"],
                    row["speedup"], row["memory_format"])
        met = (args.target_speedup is not None and row["speedup"] >= args.target_speedup) or (
            args.target_latency_ms is not None and row["latency_ms_p50"] <= args.target_latency_ms)
        if met:
            logger.info("target met at amount %.2f", row["amount"])
            break
    else:
        logger.warning("target not met at --max-amount %.2f: keeping the most pruned model (%.2fx)",
                       args.max_amount, rows[-1]["speedup"])
    return rows


def _resolve_dataset(args: argparse.Namespace, manifest: Manifest) -> DatasetSplits:
    name = args.dataset or manifest.dataset or "digits"
    image_size = args.image_size or manifest.input_shape[-1]
    data = load_dataset(name, image_size=image_size, seed=split_seed(args, manifest), data_dir=args.data_dir)
    if manifest.num_classes and data.num_classes != manifest.num_classes:
        raise UsageError(f"{args.model} predicts {manifest.num_classes} classes but dataset {name!r} has "
                         f"{data.num_classes}: pass the --dataset it was trained on")
    return data


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    model, manifest = load_module(args.model, trust_pickle=args.trust_pickle)
    input_shape = list(manifest.input_shape)
    method = args.pruning_method
    targeted = args.target_speedup is not None or args.target_latency_ms is not None
    if method in UNSTRUCTURED and not prunable_layers(model):
        raise UsageError(f"{args.model}: {type(model).__name__} has no Conv or Linear weights: "
                         "nothing to prune")
    output_dir = Path(args.output_dir)
    save_path = Path(args.save_path)
    if save_path.resolve() == Path(args.model).resolve():
        raise UsageError(f"--save-path {save_path} would overwrite the --model being pruned; "
                         "choose another path")

    pruner = None
    if method == "structured":
        # Built before any data work so a model with nothing to prune fails at once.
        n_steps = max(1, round(args.max_amount / args.amount_step)) if targeted else args.steps
        pruner = build_structured_pruner(
            model, input_shape, amount=args.max_amount if targeted else args.amount, steps=n_steps,
            importance=args.importance, round_to=args.round_to)

    original = copy.deepcopy(model).eval()
    if manifest.runtime.get("memory_format") == "channels_last":
        original_fn = channels_last_fn(original)
    else:
        original_fn = original
    params_before = count_parameters(model)
    macs_before = count_macs(model, input_shape)
    data = _resolve_dataset(args, manifest)
    accuracy_before = test_accuracy(original, data, args.eval_limit)
    grad_loader = make_loader(data.train, min(args.batch_size, 32), shuffle=True, seed=args.seed)

    step_fn: StepFn | None = None
    if args.fine_tune:
        step_fn = cross_entropy_step(args.label_smoothing)
        if args.distill_from:
            teacher = load_artifact(args.distill_from, trust_pickle=args.trust_pickle, threads=args.threads)
            if teacher.num_classes != manifest.num_classes:
                raise UsageError(f"--distill-from {args.distill_from} predicts {teacher.num_classes} "
                                 f"classes, the model {manifest.num_classes}")
            step_fn = distillation_step(teacher, alpha=args.kd_alpha, temperature=args.kd_temperature,
                                        label_smoothing=args.label_smoothing)

    target_rows: list[dict[str, Any]] = []
    tuning: dict[str, Any] = {}
    amount = args.amount
    accuracy_pruned: float | None = None
    if method == "structured" and targeted:
        target_rows = prune_to_target(pruner, model, original_fn, args, input_shape, grad_loader)
        amount = target_rows[-1]["amount"]
        accuracy_pruned = test_accuracy(model, data, args.eval_limit)
        if args.fine_tune:
            tuning = fine_tune(model, data, args, output_dir=output_dir / "fine_tune", step_fn=step_fn)
    elif method == "structured":
        for step in range(1, args.steps + 1):
            structured_step(pruner, model, args.importance, grad_loader)
            logger.info("structured step %d/%d: %d -> %d parameters", step, args.steps, params_before,
                        count_parameters(model))
            if step == args.steps:
                accuracy_pruned = test_accuracy(model, data, args.eval_limit)
            if args.fine_tune:
                tuning = fine_tune(model, data, args, output_dir=output_dir / f"fine_tune_step{step}",
                                   step_fn=step_fn, desc=f"fine-tune step {step}/{args.steps}")
        if count_parameters(model) == params_before:
            raise UsageError(f"--amount {amount} removed no channel (channel counts are rounded to "
                             f"multiples of --round-to {args.round_to}): raise --amount or lower --round-to")
    else:
        for step in range(1, args.steps + 1):
            done, goal = amount * (step - 1) / args.steps, amount * step / args.steps
            # torch's pruning containers count the new amount among the weights still unpruned.
            unstructured_prune(model, (goal - done) / (1 - done), method)
            if step == args.steps:
                accuracy_pruned = test_accuracy(model, data, args.eval_limit)
            if args.fine_tune:
                tuning = fine_tune(model, data, args, output_dir=output_dir / f"fine_tune_step{step}",
                                   step_fn=step_fn, desc=f"fine-tune step {step}/{args.steps}")
        make_permanent(model)
    model.eval()

    accuracy = test_accuracy(model, data, args.eval_limit)
    weight_sparsity, param_sparsity, per_layer = sparsity_report(model)
    params, macs = count_parameters(model), count_macs(model, input_shape)

    fns: dict[str, Callable] = {"original": original_fn, "pruned": model}
    if method == "structured" and args.memory_format == "auto":
        fns["pruned_channels_last"] = channels_last_fn(model)
    if method == "structured" and args.memory_format == "channels_last":
        fns["pruned"] = channels_last_fn(model)
    medians = compare_latency(fns, input_shape, batch_size=args.latency_batch_size,
                              rounds=args.latency_rounds)
    memory_format = "channels_last" if args.memory_format == "channels_last" else "contiguous"
    cl_gain = medians["pruned"] / medians.get("pruned_channels_last", math.inf)
    if cl_gain >= CHANNELS_LAST_MIN_GAIN:
        memory_format = "channels_last"
        medians["pruned"] = medians["pruned_channels_last"]
    latency_after = medians["pruned"]

    compress = args.compress if args.compress is not None else method in UNSTRUCTURED
    transform = {"kind": "pruning", "method": method, "amount": round(amount, 4),
                 "importance": args.importance if method == "structured" else "l1",
                 "steps": len(target_rows) or args.steps,
                 "round_to": args.round_to if method == "structured" else None,
                 "fine_tune_epochs": args.epochs if args.fine_tune else 0,
                 "distill_from": args.distill_from, "compressed": compress,
                 "target_speedup": args.target_speedup, "target_latency_ms": args.target_latency_ms}
    metrics = {"accuracy": accuracy, "accuracy_before": accuracy_before, "accuracy_pruned": accuracy_pruned,
               "params": params, "params_before": params_before, "macs": macs, "macs_before": macs_before,
               "sparsity": round(weight_sparsity, 4), "param_sparsity": round(param_sparsity, 4),
               "layer_sparsity": per_layer, "latency_ms_p50": latency_after,
               "latency_ms_p50_before": medians["original"], "latency_batch_size": args.latency_batch_size,
               **tuning}
    child = manifest.derive(parent_path=args.model, transform=transform, metrics=metrics,
                            split_seed=data.split_seed)
    if memory_format == "channels_last":
        child.runtime = {"memory_format": "channels_last"}
    fmt = "state_dict" if manifest.arch else "pickle"
    saved = save_artifact(model, save_path, child, fmt=fmt)
    if compress:
        compress_in_place(save_path)
        saved.metrics.pop("size_mb", None)
        saved = write_artifact_manifest(save_path, saved, fmt=fmt)

    size_before = file_size_mb(args.model)
    summary: dict[str, Any] = {
        "save_path": str(save_path), "manifest": f"{save_path}.json", "method": method,
        "amount": round(amount, 4),
        "importance": transform["importance"], "params": params, "params_before": params_before,
        "params_m": round(params / 1e6, 3), "params_ratio": round(params / params_before, 4),
        "macs": macs, "macs_before": macs_before, "macs_ratio": round(macs / max(macs_before, 1), 4),
        "sparsity": round(weight_sparsity, 4), "size_mb": saved.size_mb,
        "size_mb_before": round(size_before, 4),
        "size_ratio": round(saved.size_mb / size_before, 4) if size_before else None,
        "accuracy_before": accuracy_before, "accuracy_pruned": accuracy_pruned, "accuracy": accuracy,
        "accuracy_drop": round(accuracy_before - accuracy, 4),
        "latency_ms_p50_before": medians["original"], "latency_ms_p50": latency_after,
        "speedup": round(medians["original"] / latency_after, 3) if latency_after else math.nan,
        "latency_batch_size": args.latency_batch_size, "memory_format": memory_format, "compressed": compress,
        **{k: v for k, v in tuning.items()},
    }
    if method in UNSTRUCTURED:
        summary["note"] = UNSTRUCTURED_NOTE
    if target_rows:
        summary["target_steps"] = len(target_rows)
        last = target_rows[-1]
        summary["target_met"] = bool(
            (args.target_speedup is not None and last["speedup"] >= args.target_speedup)
            or (args.target_latency_ms is not None and last["latency_ms_p50"] <= args.target_latency_ms))
    _write_reports(output_dir, summary, per_layer, target_rows)
    print(json.dumps(summary, indent=2))
    return summary


def _write_reports(output_dir: Path, summary: dict[str, Any], per_layer: dict[str, float],
                   target_rows: list[dict[str, Any]]) -> None:
    from modelops.results import write_results

    output_dir.mkdir(parents=True, exist_ok=True)
    write_results(output_dir / "results.json", summary)
    write_results(output_dir / "layer_sparsity.csv",
                  [{"layer": k, "sparsity": v} for k, v in per_layer.items()])
    if target_rows:
        write_results(output_dir / "target_steps.csv", target_rows)
    if summary["method"] in UNSTRUCTURED:
        logger.info("sparsity per layer (%s):\n%s", output_dir / "layer_sparsity.csv",
                    "\n".join(f"  {k:40s} {v:.3f}" for k, v in per_layer.items()))
        logger.warning(UNSTRUCTURED_NOTE)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
