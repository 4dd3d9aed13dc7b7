"""Quantize a model artifact to int8 (or bf16) and say plainly what it did for it.

    python PR3_model_optimization/model_quantization.py --model models/resnet50.pt \\
        --quantization-method static --save-path models/quantized_model.pt

Methods: ``static`` (post-training, calibrated on ``--calibration-batches`` real batches of the train
split), ``dynamic`` (Linear/LSTM only: refused for models where those layers carry little of the
compute), ``qat`` (a short fine-tune with fake quantization, then convert), ``bf16`` (no calibration:
the float model run in bfloat16; only on CPUs with AVX512-BF16 or AMX-BF16, elsewhere it exits 2).

Backends: ``onnxruntime`` (QDQ ONNX), ``pt2e`` (torchao, a ``torch.export`` archive the loader runs through
``torch.compile``), ``openvino`` (NNCF int8 ONNX, or the fp32 ONNX in bf16, run by OpenVINO). The saved
file keeps the name it is given whatever its format; the manifest says the format and the runtime.
``--backend auto`` (the default for static and bf16) quantizes with every backend installed, times
each backend's result beside fp32 eager on this host at batch 1 and ``--latency-batch-size``, and keeps the
fastest within ``--max-accuracy-drop`` (default 1 point for int8, 0.1 for bf16); it prints a table of the
candidates and records them, the CPU model and its ISA flags, the choice and why in the manifest
(``metrics.backend_selection``). The CPU outlook printed first is only a hint: the measurement decides.

Inputs: a state_dict (artifact or bare, ``--arch`` where several architectures fit) or trusted pickle goes to every
backend; an fp32 ONNX file (and a TorchScript file, through its ONNX export) to the ONNX backends, which start from
it; a ``.pt2`` ExportedProgram to PT2E, which starts from the program, and to the ONNX backends through its ONNX
export (the dynamo exporter). Other pairs exit 2 naming what works.

``--max-accuracy-drop X`` also tries several configurations per backend and keeps the FASTEST one whose
validation accuracy is within X points of fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modelops.artifact import FORMAT_NAMES, Manifest, load_artifact
from modelops.cli import check_positive, common_parser, load_model_dataset, load_options, run_cli
from modelops.cpu import int8_outlook
from modelops.data import DatasetSplits
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.quantization_input import load_for_quantization
from modelops.results import markdown_table, write_results
from PR3_model_optimization.quantization.auto import (
    AUTO,
    AUTO_DEFAULT_MAX_DROP,
)
from PR3_model_optimization.quantization.backends import (
    REGISTRY,
    backend_names,
    backends_for,
    base_backend,
    method_refusal,
)
from PR3_model_optimization.quantization.bf16 import bf16_support
from PR3_model_optimization.quantization.config import (
    ACTIVATION_TYPES,
    CALIBRATION_METHODS,
    METHODS,
    QuantConfig,
    check_choice,
)
from PR3_model_optimization.quantization.coverage import dynamic_coverage, sensitive_layers
from PR3_model_optimization.quantization.detect import quantized_reason
from PR3_model_optimization.quantization.run import (
    TRIAL_COLUMNS,
    Outcome,
    Plan,
    default_save_path,
    run_trials,
    trials_paths,
)
from PR3_model_optimization.quantization.settings import TrialSettings

logger = logging.getLogger(__name__)

# Below this share of MACs in Linear/LSTM layers, dynamic int8 cannot make a model noticeably faster.
DYNAMIC_MIN_MAC_FRACTION = 0.5


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Quantize a model artifact to int8 or bf16 with the backend measured fastest here (ONNX Runtime, "
                    "torchao PT2E, OpenVINO) and report what it gained.",
        parents=[common_parser()], add_help=add_help,
    )
    # The data must match the model: default to the dataset recorded in its manifest.
    parser.set_defaults(dataset=None)
    q = parser.add_argument_group("quantization")
    q.add_argument("--model", required=True, help="fp32 model: a state_dict (artifact or bare), a TorchScript or "
                   "ONNX file (onnxruntime, openvino) or a .pt2 ExportedProgram (every backend)")
    q.add_argument("--quantization-method", default="static", choices=METHODS,
                   help="static: calibrated post-training int8; dynamic: Linear/LSTM only; qat: short fine-tune "
                        "with fake quantization; bf16: bf16 execution, no calibration, on CPUs with AVX512-BF16 or "
                        "AMX-BF16 (default: static)")
    q.add_argument("--backend", default=None,
                   help=f"{' | '.join((AUTO, *backend_names()))}: auto quantizes with every backend installed, "
                        "times them on this host and keeps the fastest within --max-accuracy-drop (default: auto; "
                        "onnxruntime for dynamic, pt2e for qat)")
    q.add_argument("--save-path", default=None,
                   help="where to write the int8 model; the name is kept even if the format differs, the manifest "
                        "says the format (default: <model dir>/<model name>_int8.onnx|.pt2)")
    q.add_argument("--calibration-batches", type=int, default=10,
                   help="batches of real train-split data for calibration (default: 10)")
    q.add_argument("--calibration-batch-size", type=int, default=32, help="calibration batch size (default: 32)")
    q.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS,
                   help="activation range estimator, ONNX Runtime only (default: minmax)")
    q.add_argument("--activation-type", default="quint8", choices=ACTIVATION_TYPES,
                   help="int8 activation type, ONNX Runtime only (default: quint8)")
    q.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per output channel (default: per channel)")
    q.add_argument("--keep-float", nargs="*", default=["first"], metavar="LAYER",
                   help="layers left in fp32: module names, or 'first' (the first conv, which sees raw pixels: "
                        "int8 there cost ~3 points on digits), 'classifier', 'sensitive' (both), 'none' "
                        "(default: first)")
    q.add_argument("--allow-partial-dynamic", action="store_true",
                   help="write a dynamic int8 model even when Linear/LSTM layers carry under "
                        f"{DYNAMIC_MIN_MAC_FRACTION:.0%}% of the MACs (default: refuse)")
    q.add_argument("--no-aoti", action="store_true", help="pt2e int8: write no AOTInductor package "
                   "(<save-path>.aoti.pt2; the loader then compiles on the first call) (default: write one, "
                   "kept where it times within 5%% of torch.compile's speed here)")
    qat = parser.add_argument_group("quantization-aware training")
    qat.add_argument("--qat-epochs", type=float, default=1.0, help="fine-tuning epochs, may be fractional (default: 1)")
    qat.add_argument("--qat-lr", type=float, default=1e-3, help="SGD learning rate for QAT (default: 0.001)")
    search = parser.add_argument_group("accuracy-aware search")
    search.add_argument("--max-accuracy-drop", type=float, default=None,
                        help="accuracy budget in points on the val split: try configurations and keep the fastest "
                             "within it (default: off, one configuration)")
    search.add_argument("--max-trials", type=int, default=None, help="stop the search after N trials (default: all)")
    search.add_argument("--search-time-s", type=float, default=None,
                        help="start no new trial after this many seconds (default: no limit)")
    report = parser.add_argument_group("report")
    report.add_argument("--latency-batch-size", type=int, default=16,
                        help="batch size of the quick before/after latency check (default: 16)")
    report.add_argument("--latency-rounds", type=int, default=10,
                        help="interleaved timing rounds of that check (default: 10)")
    report.add_argument("--results", default=None, help="also write the summary to this .json/.csv/.md (default: none)")
    return parser


# --------------------------------------------------------------------------- checks


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flag values before any work, naming the value and the allowed set."""
    check_choice("quantization method", args.quantization_method, METHODS)
    if args.backend is not None:
        check_choice("backend", args.backend, (AUTO, *backend_names()))
    check_positive("--calibration-batch-size", args.calibration_batch_size)
    if args.calibration_batches < 1 and args.quantization_method == "static":
        raise UsageError(f"Static quantization needs calibration data: --calibration-batches must be at least 1, "
                         f"got {args.calibration_batches}")
    check_positive("--latency-batch-size", args.latency_batch_size)
    check_positive("--latency-rounds", args.latency_rounds)
    check_positive("--qat-epochs", args.qat_epochs)
    check_positive("--qat-lr", args.qat_lr)
    check_positive("--max-accuracy-drop", args.max_accuracy_drop, allow_zero=True)
    check_positive("--max-trials", args.max_trials)
    if args.max_accuracy_drop is not None and args.quantization_method not in ("static", "bf16"):
        raise UsageError("--max-accuracy-drop searches static int8 or bf16 candidates; "
                         f"drop it or use --quantization-method static (got {args.quantization_method})")
    if args.backend not in (None, AUTO) and args.quantization_method not in REGISTRY[args.backend].methods:
        raise UsageError(method_refusal(args.quantization_method, args.backend))


def check_not_quantized(path: Path) -> None:
    if not path.is_file():
        return  # the loader gives the 'does not exist' message
    reason = quantized_reason(path)
    if reason:
        raise UsageError(f"{path} is already quantized ({reason}). Quantize the fp32 artifact it was made from.")


def resolve_backend(args: argparse.Namespace) -> str:
    """``--backend``, else auto for the methods auto chooses for, else the first backend that makes the method
    (onnxruntime for dynamic, pt2e for qat)."""
    method = args.quantization_method
    return args.backend or (AUTO if method in AUTO_DEFAULT_MAX_DROP else backends_for(method)[0])


def resolve_keep_float(tokens: Sequence[str], model: nn.Module, arch: str | None) -> tuple[str, ...]:
    """Turn ``--keep-float`` words (first, classifier, sensitive, none) and module names into module names."""
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    classifier = next((n for n in sensitive_layers(model) if n != first), None)
    words = {"none": [], "first": [first], "classifier": [classifier], "sensitive": [first, classifier]}
    names = [n for token in tokens for n in words.get(token, [token]) if n]
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise UsageError(f"--keep-float: no layer named {', '.join(unknown)} in {arch}; use module names such as "
                         f"{', '.join(sensitive_layers(model))} or one of: first, classifier, sensitive, none")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- the work


def check_bf16_support(method: str) -> None:
    if method == "bf16":
        supported, why = bf16_support()
        if not supported:
            raise UsageError(f"--quantization-method bf16 needs a CPU with AVX512-BF16 or AMX-BF16: {why}")
        logger.info("CPU check: %s", why)


@dataclass
class Fp32Model:
    """The fp32 model to quantize: the reference it is compared with, and what the quantizers start from.

    ``model`` is an eager module (state_dict, pickle) or, for a traced input, the input run as it is; ``start``
    is ``eager``, ``onnx`` (``onnx_path``: ONNX and TorchScript inputs) or ``exported_program`` (``exported``).
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    manifest: Manifest
    start: str = "eager"
    form: str | None = None
    onnx_path: Path | None = None
    exported: torch.export.ExportedProgram | None = None


def load_quantization_input(path: Path, options: LoadOptions, work_dir: Path | None = None) -> Fp32Model:
    """Any saved form, as :func:`~modelops.quantization_input.load_for_quantization` gives it with ``options``; a
    TorchScript file's ONNX conversion is written in ``work_dir``."""
    start = load_for_quantization(path, options, work_dir=work_dir)
    if start.module is not None:
        return Fp32Model(start.module, start.manifest)
    form = FORMAT_NAMES.get(start.manifest.format, start.manifest.format)
    # The reference as the file runs: on the CPU, uncompiled, each runtime's default threads.
    reference = load_artifact(path, LoadOptions(compile=False, arch=options.arch, image_size=options.image_size))
    if start.exported is not None:
        return Fp32Model(reference, start.manifest, "exported_program", form, exported=start.exported)
    return Fp32Model(reference, start.manifest, "onnx", form, onnx_path=start.onnx_path)


def load_fp32(args: argparse.Namespace, first_backend: str,
              work_dir: Path | None = None) -> tuple[Fp32Model, Path, Path, DatasetSplits]:
    """The fp32 model, its path, the save path and the data it was trained on (checked)."""
    model_path = Path(args.model)
    check_not_quantized(model_path)
    fp32 = load_quantization_input(model_path, load_options(args), work_dir)
    manifest = fp32.manifest
    # auto names the file after the winner's format once it is known; this path only guards the fp32 file.
    save_path = Path(args.save_path) if args.save_path else \
        default_save_path(model_path, first_backend, args.quantization_method)
    if save_path.resolve() == model_path.resolve():
        raise UsageError(f"--save-path {save_path} would overwrite the fp32 model; choose another path")
    image_size = manifest.input_shape[-1]
    if args.image_size and args.image_size != image_size:
        raise UsageError(f"--image-size {args.image_size} does not match the model's input {manifest.input_shape}")
    dataset = args.dataset or manifest.dataset or "digits"
    data = load_model_dataset(args, manifest, dataset=dataset)  # fake data takes the model's classes and size
    if data.num_classes != manifest.num_classes:
        raise UsageError(f"Dataset {dataset!r} has {data.num_classes} classes but the model predicts "
                         f"{manifest.num_classes}; pass the --dataset the model was trained on")
    return fp32, model_path, save_path, data


def keep_float_layers(args: argparse.Namespace, model: Callable, manifest: Manifest) -> tuple[str, ...]:
    """``--keep-float`` as module names, for the method at hand."""
    method = args.quantization_method
    if not isinstance(model, nn.Module):  # a traced input: no module names to keep in float
        if [t for t in args.keep_float if t not in ("first", "none")]:
            form = FORMAT_NAMES.get(manifest.format, manifest.format)
            raise UsageError(f"--keep-float names modules, which a {form} file does not have; drop it, "
                             "or quantize the model's state_dict (with --arch)")
        return ()
    # Dynamic int8 never touches convolutions, so the default 'first conv in float' means nothing there;
    # QAT learns its ranges, and torchao's QAT conv-bn rewrite fails on a conv left without a config.
    if method in ("dynamic", "qat") and args.keep_float == ["first"]:
        return ()
    keep_float = resolve_keep_float(args.keep_float, model, manifest.arch)
    if method == "qat" and keep_float:
        raise UsageError("--keep-float is not supported with --quantization-method qat (torchao's QAT rewrite "
                         "needs every conv quantized); drop it or use static")
    return keep_float


def check_dynamic_coverage(args: argparse.Namespace, model: Callable, manifest: Manifest) -> None:
    """Refuse dynamic int8 where Linear/LSTM layers carry too little of the compute to matter."""
    if args.quantization_method != "dynamic" or not isinstance(model, nn.Module):
        return
    fraction, names = dynamic_coverage(model, manifest.input_shape)
    message = (f"Dynamic int8 only quantizes Linear/LSTM layers; in this {manifest.arch} they carry "
               f"{fraction:.2%} of the MACs ({len(names)} layer(s))")
    if fraction >= DYNAMIC_MIN_MAC_FRACTION:
        logger.info(message)
    elif not args.allow_partial_dynamic:
        raise UsageError(f"{message}, so it cannot make the model faster. Use --quantization-method static "
                         "(or pass --allow-partial-dynamic to write it anyway)")
    else:
        logger.warning("%s: expect no speed-up; writing it because --allow-partial-dynamic was given", message)


def make_plan(args: argparse.Namespace, work_dir: Path | None = None) -> Plan:
    """Check everything that can be checked before the first trial, and settle what to try; a TorchScript input's
    ONNX conversion is written in ``work_dir``, which must outlive the trials."""
    method = args.quantization_method
    backend = resolve_backend(args)
    auto = backend == AUTO
    check_bf16_support(method)
    first_backend = base_backend(method) if auto else backend
    fp32, model_path, save_path, data = load_fp32(args, first_backend, work_dir)
    model, manifest = fp32.model, fp32.manifest
    likely, outlook = int8_outlook()
    (logger.info if likely else logger.warning)("CPU check: %s", outlook)
    keep_float = keep_float_layers(args, model, manifest)
    check_dynamic_coverage(args, model, manifest)
    base = QuantConfig(backend=first_backend, method=method, per_channel=not args.per_tensor,
                       calibration_method=args.calibration_method, calibration_batches=max(args.calibration_batches, 1),
                       activation_type=args.activation_type, keep_float=keep_float)
    budget = args.max_accuracy_drop
    if auto and budget is None:
        budget = AUTO_DEFAULT_MAX_DROP[method]
    return Plan(model=model, manifest=manifest, model_path=model_path, save_path=save_path, data=data, base=base,
                auto=auto, searching=args.max_accuracy_drop is not None and method == "static", budget=budget,
                outlook=outlook, likely=likely, start=fp32.start, form=fp32.form,
                onnx_path=fp32.onnx_path, exported=fp32.exported)


def trial_settings(args: argparse.Namespace) -> TrialSettings:
    """The typed settings the trials take, built once from the flags."""
    return TrialSettings(
        backend=args.backend, max_trials=args.max_trials, search_time_s=args.search_time_s, save_path=args.save_path,
        threads=args.threads, trust_pickle=args.trust_pickle, seed=args.seed, batch_size=args.batch_size,
        calibration_batch_size=args.calibration_batch_size, qat_epochs=args.qat_epochs, qat_lr=args.qat_lr,
        latency_batch_size=args.latency_batch_size, latency_rounds=args.latency_rounds, aoti=not args.no_aoti)


def summarize(plan: Plan, outcome: Outcome, started: float) -> dict:
    """The flat summary ``main`` prints and returns (after the search table and warnings, if any)."""
    best, rows, save_path = outcome.best, outcome.rows, outcome.save_path
    if best is None or outcome.best_manifest is None or save_path is None:
        raise RuntimeError("every quantization trial failed: " + "; ".join(r.get("error", "") for r in rows))
    if plan.searching:
        print(markdown_table([{k: r.get(k, "") for k in TRIAL_COLUMNS} for r in rows]), file=sys.stderr)
        if not best["meets_budget"]:
            logger.warning("no configuration kept the accuracy drop within %.2f points; saved the most accurate "
                           "(drop %.2f)", plan.budget, best["top1_drop_pts"])
    logger.info("quantized %d layers carrying %.1f%% of the conv/linear MACs; kept in float: %s",
                best["quantized_layers_count"], 100 * best["quantized_mac_fraction"], best["keep_float"] or "none")
    summary = {
        "save_path": str(save_path), "manifest": f"{save_path}.json", "format": outcome.best_manifest.format,
        **{key: best[key] for key in ("method", "backend", "config", "size_mb", "fp32_size_mb", "size_ratio")},
        # The trial's figures: top-1 on the val split (hence val_top1_pct, not top1_pct, the test split's), the
        # speed-ups at latency_batch_size.
        **{key: best[key] for key in ("val_top1_pct", "fp32_top1_pct", "top1_drop_pts", "top1_agreement_pct",
                                      "latency_ms_p50_fp32", "latency_ms_p50_int8", "speedup_x", "latency_batch_size")},
        **{key: best.get(key) for key in ("latency_ms_p50_fp32_runtime", "runtime_speedup_x", "int8_speedup_x")},
        "quantized_layers": best["quantized_layers_count"], "quantized_mac_fraction": best["quantized_mac_fraction"],
        "meets_budget": best["meets_budget"], "trials": len(rows),
        "trials_csv": str(trials_paths(save_path)[0]) if plan.searching else None,
        "cpu_int8_outlook": plan.outlook, "total_s": round(time.perf_counter() - started, 1),
    }
    if outcome.selection is not None:
        selection = outcome.selection
        summary.update({"auto_chosen": selection.record["chosen"], "auto_reason": selection.reason,
                        "candidates": selection.rows})
    return summary


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    check_args(args)
    if args.threads:  # run_cli does this for the command line; callers of main() (pipeline, tests) get it too
        torch.set_num_threads(args.threads)
    # A TorchScript input is quantized from its ONNX export, written here and removed with the folder when done.
    with tempfile.TemporaryDirectory(prefix="torchscript_onnx_") as conversion_dir:
        plan = make_plan(args, Path(conversion_dir))
        outcome = run_trials(plan, trial_settings(args), started)
    summary = summarize(plan, outcome, started)
    print(json.dumps(summary, indent=2))
    if args.results:
        write_results(args.results, summary)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
