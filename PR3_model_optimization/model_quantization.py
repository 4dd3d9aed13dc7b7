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

``--max-accuracy-drop X`` also tries several configurations per backend and keeps the FASTEST one whose
validation accuracy is within X points of fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from modelops.artifact import Manifest, file_size_mb, load_artifact, load_module, write_manifest
from modelops.cli import check_positive, common_parser, load_model_dataset, run_cli, usable_cores
from modelops.cpu import cpu_info, int8_outlook
from modelops.data import calibration_batches, make_loader
from modelops.errors import UsageError
from modelops.evaluate import accuracy, predict_logits, top1_agreement
from modelops.results import markdown_table, write_results
from modelops.selection import pick_best as select_best
from modelops.timing import interleaved_latency
from PR3_model_optimization.quantization.auto import (
    AUTO,
    AUTO_DEFAULT_MAX_DROP,
    Candidate,
    Selection,
    auto_candidates,
    select,
    unavailable_candidates,
)
from PR3_model_optimization.quantization.backends import BACKENDS, REGISTRY, Quantizer
from PR3_model_optimization.quantization.bf16 import bf16_support
from PR3_model_optimization.quantization.config import (
    ACTIVATION_TYPES,
    BF16_BACKENDS,
    CALIBRATION_METHODS,
    METHODS,
    QuantConfig,
    check_choice,
)
from PR3_model_optimization.quantization.coverage import dynamic_coverage, layer_macs, mac_fraction, sensitive_layers
from PR3_model_optimization.quantization.detect import quantized_reason

logger = logging.getLogger(__name__)

# Below this share of MACs in Linear/LSTM layers, dynamic int8 cannot make a model noticeably faster.
DYNAMIC_MIN_MAC_FRACTION = 0.5
TRIAL_COLUMNS = ("trial", "config", "val_accuracy", "accuracy_drop", "top1_agreement", "speedup",
                 "int8_speedup", "latency_ms_p50_int8", "size_mb", "quantized_mac_fraction", "meets_budget", "error")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Quantize a model artifact to int8 or bf16 with the backend measured fastest here (ONNX Runtime, "
                    "torchao PT2E, OpenVINO) and report what it gained.",
        parents=[common_parser()], add_help=add_help,
    )
    # The data must match the model: default to the dataset recorded in its manifest.
    parser.set_defaults(dataset=None)
    q = parser.add_argument_group("quantization")
    q.add_argument("--model", required=True, help="fp32 model artifact (state_dict .pt from prepare_model.py, "
                   "pruning or distillation)")
    q.add_argument("--quantization-method", default="static", choices=METHODS,
                   help="static: calibrated post-training int8; dynamic: Linear/LSTM only; qat: short fine-tune "
                        "with fake quantization; bf16: bf16 execution, no calibration, on CPUs with AVX512-BF16 or "
                        "AMX-BF16 (default: static)")
    q.add_argument("--backend", default=None,
                   help=f"{' | '.join((AUTO, *BACKENDS))}: auto quantizes with every backend installed, times them "
                        "on this host and keeps the fastest within --max-accuracy-drop (default: auto; onnxruntime "
                        "for dynamic, pt2e for qat)")
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
    qat = parser.add_argument_group("quantization-aware training")
    qat.add_argument("--qat-epochs", type=float, default=1.0, help="fine-tuning epochs, may be fractional "
                     "(default: 1)")
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
    report.add_argument("--results", default=None, help="also write the summary to this .json/.csv/.md "
                        "(default: none)")
    return parser


# --------------------------------------------------------------------------- checks


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flag values before any work, naming the value and the allowed set."""
    check_choice("quantization method", args.quantization_method, METHODS)
    if args.backend is not None:
        check_choice("backend", args.backend, (AUTO, *BACKENDS))
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
    if args.quantization_method == "qat" and args.backend == "onnxruntime":
        raise UsageError("QAT is implemented with torchao PT2E: use --backend pt2e (or leave --backend unset)")


def check_not_quantized(path: Path) -> None:
    if not path.is_file():
        return  # load_module gives the 'does not exist' message
    reason = quantized_reason(path)
    if reason:
        raise UsageError(f"{path} is already quantized ({reason}). Quantize the fp32 artifact it was made from.")


def resolve_backend(args: argparse.Namespace) -> str:
    """``--backend``, else the method's default: pt2e for qat, onnxruntime for dynamic, auto otherwise."""
    return args.backend or {"qat": "pt2e", "dynamic": "onnxruntime"}.get(args.quantization_method, AUTO)


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


def default_save_path(model_path: Path, backend: str, method: str = "static") -> Path:
    dtype = "bf16" if method == "bf16" else "int8"
    return model_path.with_name(f"{model_path.stem}_{dtype}{REGISTRY[backend].suffix}")


def search_space(base: QuantConfig, sensitive: Sequence[str], backends: Sequence[str]) -> list[QuantConfig]:
    """The configurations the accuracy-aware search tries, the user's own first."""
    trials = [base]
    if "onnxruntime" in backends:
        ort = base if base.backend == "onnxruntime" else base.with_(backend="onnxruntime")
        trials += [
            ort, ort.with_(activation_type="qint8" if ort.activation_type == "quint8" else "quint8"),
            ort.with_(keep_float=()), ort.with_(keep_float=tuple(sensitive)),
            ort.with_(per_channel=not ort.per_channel), ort.with_(calibration_method="percentile"),
            ort.with_(calibration_method="entropy"), ort.with_(calibration_batches=ort.calibration_batches * 3),
        ]
    if "pt2e" in backends:
        pt2e = QuantConfig(backend="pt2e", calibration_batches=base.calibration_batches, keep_float=base.keep_float)
        trials += [pt2e, pt2e.with_(keep_float=())]
    if "openvino" in backends:
        openvino = base.with_(backend="openvino")
        trials += [openvino, openvino.with_(keep_float=())]
    allowed = [t for t in trials if t.backend in backends]
    return list(dict.fromkeys(allowed))  # QuantConfig is frozen, hence hashable: drop repeats, keep order


def plan_trials(base: QuantConfig, sensitive: Sequence[str], args: argparse.Namespace, auto: bool,
                searching: bool) -> tuple[list[QuantConfig], list[Candidate]]:
    """The configurations to try and, for ``auto``, the candidates whose backend cannot run here (with why)."""
    if args.backend and args.backend != AUTO:
        backends: Sequence[str] = [args.backend]
    else:
        backends = BF16_BACKENDS if base.method == "bf16" else BACKENDS
    configs = search_space(base, sensitive, backends) if searching else \
        auto_candidates(base, backends) if auto else [base]
    if args.max_trials:
        configs = configs[: args.max_trials]
    if auto:
        return unavailable_candidates(configs)
    reason = REGISTRY[base.backend].unavailable_reason()
    if reason:
        raise UsageError(f"--backend {base.backend} cannot run here: {reason}; or use --backend auto")
    return configs, []


def pick_best(rows: Sequence[dict]) -> dict | None:
    """The fastest trial that met the accuracy budget; if none did, the most accurate one.

    Rows carry ``meets_budget``, ``speedup`` and ``val_accuracy``; rows with an ``error`` never win. The rule is
    :func:`modelops.selection.pick_best`, shared with the pipeline and the main job.
    """
    return select_best(rows, speed="speedup", accuracy="val_accuracy", meets_budget=lambda r: r["meets_budget"])


# --------------------------------------------------------------------------- the work


class QuantizationRun:
    """Everything one invocation shares between trials: the fp32 model, data, references, work dir.

    Args:
        model: fp32 eager model.
        manifest: its manifest.
        model_path: its file (recorded as the parent).
        data: the dataset splits matching the model.
        args: parsed flags (calibration, QAT and latency settings).
        work_dir: where trial artifacts are built before the winner is copied to the save path.
    """

    def __init__(self, model: nn.Module, manifest: Manifest, model_path: Path, data, args: argparse.Namespace,
                 work_dir: Path) -> None:
        self.model = model.eval()
        self.manifest = manifest
        self.model_path = model_path
        self.data = data
        self.args = args
        self.work_dir = work_dir
        self.threads = args.threads or usable_cores()
        self.input_shape = list(manifest.input_shape)
        self.macs = layer_macs(self.model, self.input_shape)
        self.fp32_size_mb = file_size_mb(model_path)
        self.val_loader = make_loader(data.val, 256)
        self._calibration: dict[int, list[torch.Tensor]] = {}
        self._quantizers: dict[str, Quantizer] = {}
        self._fp32_runtime: dict[str, object] = {}
        self.latency_batch = torch.randn(args.latency_batch_size, *self.input_shape)
        self.fp32_val_logits, self.val_targets = predict_logits(self.model, self.val_loader)
        self.fp32_accuracy = round(accuracy(self.fp32_val_logits, self.val_targets), 4)

    def calibration(self, num_batches: int) -> list[torch.Tensor]:
        if num_batches not in self._calibration:
            self._calibration[num_batches] = calibration_batches(
                self.data.train, self.args.calibration_batch_size, num_batches, seed=self.args.seed)
        return self._calibration[num_batches]

    def example(self) -> torch.Tensor:
        # Batch 2: torch.export specialises a batch dimension it sees as 1.
        return self.calibration(1)[0][:2] if len(self.data.train) >= 2 else torch.zeros(2, *self.input_shape)

    def qat_step(self, graph: torch.fx.GraphModule) -> None:
        """Fine-tune the fake-quant graph for ``--qat-epochs`` epochs of the train split."""
        from tqdm import tqdm

        loader = make_loader(self.data.train, self.args.batch_size, shuffle=True, seed=self.args.seed)
        steps = max(1, int(len(loader) * self.args.qat_epochs))
        optimizer = torch.optim.SGD(graph.parameters(), lr=self.args.qat_lr, momentum=0.9)
        done = 0
        with tqdm(total=steps, desc="qat", leave=False) as bar:
            while done < steps:
                for images, labels in loader:
                    loss = nn.functional.cross_entropy(graph(images), labels)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    done += 1
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                    if done >= steps:
                        break

    def quantizer(self, backend: str) -> Quantizer:
        """The backend's quantizer for this model, made on first use and shared by its trials."""
        if backend not in self._quantizers:
            self._quantizers[backend] = REGISTRY[backend].make_quantizer(self.model, self.example(), self.work_dir)
        return self._quantizers[backend]

    def build(self, config: QuantConfig, out: Path) -> list[str]:
        """Write the int8 model for ``config`` at ``out``; return the quantized layer names."""
        calibration = self.calibration(config.calibration_batches) if config.method == "static" else []
        return self.quantizer(config.backend).build(
            config, calibration, out, train_step=self.qat_step if config.method == "qat" else None)

    def fp32_runtime_predictor(self, backend: str):
        """The fp32 model on the backend's own runtime (loaded once), or None if the backend has none."""
        if backend not in self._fp32_runtime:
            path = self.quantizer(backend).fp32_artifact()
            if path is not None:
                write_manifest(path, self.manifest.derive(
                    parent_path=str(self.model_path), transform={"kind": "export", "format": REGISTRY[backend].format}),
                    fmt=REGISTRY[backend].format)
            self._fp32_runtime[backend] = load_artifact(path, threads=self.threads) if path is not None else None
        return self._fp32_runtime[backend]

    def child_manifest(self, config: QuantConfig, metrics: dict) -> Manifest:
        return self.manifest.derive(parent_path=str(self.model_path), transform=config.transform(),
                                    metrics=dict(metrics),
                                    runtime=REGISTRY[config.backend].runtime_for(config.method))

    def trial(self, index: int, config: QuantConfig, budget: float | None) -> tuple[dict, Path]:
        """Quantize with ``config``, reload the result through ``load_artifact`` and measure it."""
        out = self.work_dir / f"trial{index}{REGISTRY[config.backend].suffix}"
        logger.info("trial %d: %s", index, config.label)
        started = time.perf_counter()
        layers = self.build(config, out)
        quantize_s = time.perf_counter() - started
        write_manifest(out, self.child_manifest(config, {}), fmt=REGISTRY[config.backend].format)

        # Accuracy from the reloaded artifact (the same path PR2's worker and PR4's benchmark take).
        predictor = load_artifact(out, compile=False, threads=self.threads)
        logits, _ = predict_logits(predictor, self.val_loader)
        val_accuracy = round(accuracy(logits, self.val_targets), 4)
        # PT2E int8 is slower than fp32 until inductor compiles it with freezing: time it as the loader runs it.
        compiled = REGISTRY[config.backend].runtime.get("compile", False)
        fast = load_artifact(out, threads=self.threads) if compiled else predictor
        contenders = {"fp32": self.model, "int8": fast}
        runtime_fp32 = self.fp32_runtime_predictor(config.backend)
        if runtime_fp32 is not None:
            # The same fp32 model on the backend's runtime: splits the speed-up into runtime and int8 shares.
            contenders["fp32_runtime"] = runtime_fp32
        samples = interleaved_latency(contenders, self.latency_batch, warmup=3, rounds=self.args.latency_rounds)
        median = {name: float(torch.tensor(values).median()) for name, values in samples.items()}
        fp32_ms, int8_ms = median["fp32"], median["int8"]
        runtime_ms = median.get("fp32_runtime")
        size_mb = file_size_mb(out)
        drop = round(self.fp32_accuracy - val_accuracy, 4)
        row = {
            "trial": index, "config": config.label, "backend": config.backend, "method": config.method,
            "per_channel": config.per_channel, "calibration_method": config.calibration_method,
            "activation_type": config.activation_type, "calibration_batches": config.calibration_batches,
            "keep_float": "+".join(config.keep_float),
            "val_accuracy": val_accuracy, "fp32_accuracy": self.fp32_accuracy, "accuracy_drop": drop,
            "top1_agreement": round(top1_agreement(logits, self.fp32_val_logits), 4),
            "latency_ms_p50_fp32": round(fp32_ms, 3), "latency_ms_p50_int8": round(int8_ms, 3),
            "speedup": round(fp32_ms / int8_ms, 3), "latency_batch_size": self.args.latency_batch_size,
            "latency_ms_p50_fp32_runtime": round(runtime_ms, 3) if runtime_ms else None,
            "runtime_speedup": round(fp32_ms / runtime_ms, 3) if runtime_ms else None,
            "int8_speedup": round(runtime_ms / int8_ms, 3) if runtime_ms else None,
            "size_mb": round(size_mb, 4), "fp32_size_mb": round(self.fp32_size_mb, 4),
            "size_ratio": round(size_mb / self.fp32_size_mb, 4),
            "quantized_layers_count": len(layers), "quantized_mac_fraction": round(mac_fraction(self.macs, layers), 4),
            "meets_budget": budget is None or drop <= budget, "quantize_s": round(quantize_s, 2), "error": "",
            "quantized_layers": layers,
        }
        return row, out

    def publish(self, row: dict, artifact: Path, config: QuantConfig, save_path: Path, extra: dict) -> Manifest:
        """Copy a trial's artifact to the user's path (atomically) and write its final manifest."""
        save_path.parent.mkdir(parents=True, exist_ok=True)
        partial = save_path.with_name(save_path.name + ".partial")
        shutil.copyfile(artifact, partial)
        partial.replace(save_path)
        metrics = {k: v for k, v in row.items() if k not in ("trial", "config", "error")}
        metrics.update({"accuracy": row["val_accuracy"], "accuracy_split": "val", **extra})
        return write_manifest(save_path, self.child_manifest(config, metrics), fmt=REGISTRY[config.backend].format)


def write_trials(csv_path: Path, json_path: Path, rows: Sequence[dict]) -> None:
    write_results(csv_path, [{k: r.get(k, "") for k in TRIAL_COLUMNS if k != "quantized_layers"} for r in rows])
    write_results(json_path, [dict(r) for r in rows])


def trials_paths(save_path: Path) -> tuple[Path, Path]:
    return save_path.with_name(save_path.name + ".trials.csv"), save_path.with_name(save_path.name + ".trials.json")


def finish_auto(run: QuantizationRun, built: Sequence[tuple[dict, Path, QuantConfig]], failed: Sequence[Candidate],
                budget: float, model_path: Path, extra: dict) -> tuple[dict | None, Manifest | None, Path, Selection]:
    """Time each backend's best trial on this host, keep the fastest within ``budget`` and publish it."""
    args = run.args
    selection = select(run.model, built, failed, budget, run.input_shape, [1, args.latency_batch_size],
                       args.latency_rounds, threads=run.threads)
    print(selection.table, file=sys.stderr)
    logger.info("auto: %s", selection.reason)
    chosen = selection.chosen
    if chosen is None or chosen.artifact is None:
        return None, None, Path(args.save_path or model_path), selection
    save_path = Path(args.save_path) if args.save_path else \
        default_save_path(model_path, chosen.config.backend, chosen.config.method)
    manifest = run.publish(chosen.row, chosen.artifact, chosen.config, save_path,
                           {**extra, "trials": len(built), "backend_selection": selection.record})
    return chosen.row, manifest, save_path, selection


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    check_args(args)
    if args.threads:  # run_cli does this for the command line; callers of main() (pipeline, tests) get it too
        torch.set_num_threads(args.threads)
    method = args.quantization_method
    backend = resolve_backend(args)
    auto = backend == AUTO
    if method == "bf16":
        supported, why = bf16_support()
        if not supported:
            raise UsageError(f"--quantization-method bf16 needs a CPU with AVX512-BF16 or AMX-BF16: {why}")
        logger.info("CPU check: %s", why)
    model_path = Path(args.model)
    check_not_quantized(model_path)
    model, manifest = load_module(model_path, trust_pickle=args.trust_pickle)
    # auto names the file after the winner's format once it is known; this path only guards the fp32 file.
    first_backend = (BF16_BACKENDS[0] if method == "bf16" else "onnxruntime") if auto else backend
    save_path = Path(args.save_path) if args.save_path else default_save_path(model_path, first_backend, method)
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

    likely, outlook = int8_outlook()
    (logger.info if likely else logger.warning)("CPU check: %s", outlook)

    # Dynamic int8 never touches convolutions, so the default 'first conv in float' means nothing there;
    # QAT learns its ranges, and torchao's QAT conv-bn rewrite fails on a conv left without a config.
    if method in ("dynamic", "qat") and args.keep_float == ["first"]:
        keep_float: tuple[str, ...] = ()
    else:
        keep_float = resolve_keep_float(args.keep_float, model, manifest.arch)
    if method == "qat" and keep_float:
        raise UsageError("--keep-float is not supported with --quantization-method qat (torchao's QAT rewrite "
                         "needs every conv quantized); drop it or use static")

    if method == "dynamic":
        fraction, names = dynamic_coverage(model, manifest.input_shape)
        message = (f"Dynamic int8 only quantizes Linear/LSTM layers; in this {manifest.arch} they carry "
                   f"{fraction:.2%} of the MACs ({len(names)} layer(s))")
        if fraction < DYNAMIC_MIN_MAC_FRACTION:
            if not args.allow_partial_dynamic:
                raise UsageError(f"{message}, so it cannot make the model faster. Use --quantization-method static "
                                 "(or pass --allow-partial-dynamic to write it anyway)")
            logger.warning("%s: expect no speed-up; writing it because --allow-partial-dynamic was given", message)
        else:
            logger.info(message)

    base = QuantConfig(backend=first_backend, method=method, per_channel=not args.per_tensor,
                       calibration_method=args.calibration_method, calibration_batches=max(args.calibration_batches, 1),
                       activation_type=args.activation_type, keep_float=keep_float)
    budget = args.max_accuracy_drop
    searching = budget is not None and method == "static"
    if auto and budget is None:
        budget = AUTO_DEFAULT_MAX_DROP[method]
    configs, failed = plan_trials(base, sensitive_layers(model), args, auto, searching)
    built: list[tuple[dict, Path, QuantConfig]] = []
    selection: Selection | None = None

    csv_path, json_path = trials_paths(save_path)
    rows: list[dict] = []
    best: dict | None = None
    best_manifest: Manifest | None = None
    extra = {"cpu_int8_outlook": outlook, "cpu_int8_likely": likely, "cpu_model": cpu_info()["cpu_model"],
             "max_accuracy_drop": budget}
    with tempfile.TemporaryDirectory(prefix="quantize_") as tmp:
        run = QuantizationRun(model, manifest, model_path, data, args, Path(tmp))
        logger.info("fp32 %s: val accuracy %.2f%% on %d samples", manifest.arch, run.fp32_accuracy,
                    len(run.val_targets))
        for index, config in enumerate(configs):
            # The time budget is checked between trials, so at least one trial always runs.
            out_of_time = args.search_time_s is not None and time.perf_counter() - started > args.search_time_s
            if searching and index > 0 and out_of_time:
                logger.warning("search time budget of %.0f s reached after %d trials", args.search_time_s, index)
                break
            try:
                row, artifact = run.trial(index, config, budget)
            except (UsageError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a failing configuration becomes a row; the search goes on
                if not (searching or auto):
                    raise
                logger.warning("trial %d (%s) failed: %s", index, config.label, str(exc).splitlines()[0][:200])
                rows.append({"trial": index, "config": config.label, "error": str(exc).splitlines()[0][:200]})
                failed.append(Candidate(config, error=f"failed: {str(exc).splitlines()[0][:200]}"))
                continue
            rows.append(row)
            built.append((row, artifact, config))
            logger.info("trial %d: val %.2f%% (drop %.2f), %.2fx, %.2f MB", index, row["val_accuracy"],
                        row["accuracy_drop"], row["speedup"], row["size_mb"])
            winner = pick_best(rows)
            if winner is row and not auto:  # a new best: save it now so a stopped search still leaves a usable model
                best = row
                best_manifest = run.publish(row, artifact, config, save_path, {**extra, "trials": len(rows)})
            if searching and not auto:
                write_trials(csv_path, json_path, rows)
        if auto:
            best, best_manifest, save_path, selection = finish_auto(run, built, failed, budget, model_path, extra)
            csv_path, json_path = trials_paths(save_path)
            if searching:
                write_trials(csv_path, json_path, rows)

    if best is None or best_manifest is None:
        raise RuntimeError("every quantization trial failed: " + "; ".join(r.get("error", "") for r in rows))
    if searching:
        print(markdown_table([{k: r.get(k, "") for k in TRIAL_COLUMNS} for r in rows]), file=sys.stderr)
        if not best["meets_budget"]:
            logger.warning("no configuration kept the accuracy drop within %.2f points; saved the most accurate "
                           "(drop %.2f)", budget, best["accuracy_drop"])

    logger.info("quantized %d layers carrying %.1f%% of the conv/linear MACs; kept in float: %s",
                best["quantized_layers_count"], 100 * best["quantized_mac_fraction"], best["keep_float"] or "none")
    summary = {
        "save_path": str(save_path), "manifest": f"{save_path}.json", "format": best_manifest.format,
        "method": best["method"], "backend": best["backend"], "config": best["config"],
        "size_mb": best["size_mb"], "fp32_size_mb": best["fp32_size_mb"], "size_ratio": best["size_ratio"],
        "accuracy": best["val_accuracy"], "fp32_accuracy": best["fp32_accuracy"],
        "accuracy_drop": best["accuracy_drop"], "top1_agreement": best["top1_agreement"],
        "latency_ms_p50_fp32": best["latency_ms_p50_fp32"], "latency_ms_p50_int8": best["latency_ms_p50_int8"],
        "speedup": best["speedup"], "latency_batch_size": best["latency_batch_size"],
        "latency_ms_p50_fp32_runtime": best.get("latency_ms_p50_fp32_runtime"),
        "runtime_speedup": best.get("runtime_speedup"), "int8_speedup": best.get("int8_speedup"),
        "quantized_layers": best["quantized_layers_count"], "quantized_mac_fraction": best["quantized_mac_fraction"],
        "meets_budget": best["meets_budget"], "trials": len(rows),
        "trials_csv": str(csv_path) if searching else None,
        "cpu_int8_outlook": outlook, "total_s": round(time.perf_counter() - started, 1),
    }
    if selection is not None:
        summary.update({"auto_chosen": selection.record["chosen"], "auto_reason": selection.reason,
                        "candidates": selection.rows})
    print(json.dumps(summary, indent=2))
    if args.results:
        write_results(args.results, summary)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
