"""Pruning benchmark: structured vs unstructured vs the original, side by side in ONE run.

Part 1 (speed and size): random-weight torchvision ResNet-50 at 224x224, 1000 classes. Structured
pruning at ``--amount`` of channels (torch-pruning, L1 group magnitude, round_to 8) and unstructured
global L1 pruning at the same fraction of weights, timed with the original at batch 1 and 16, the original and
the structured model in both the default (NCHW) and channels_last layouts: every variant loaded only in its own
process, all timed in interleaved turns (:func:`modelops.timed_modules.time_modules`). Files are saved as
artifacts to report their size; the unstructured one also deflate-compressed.

Part 2 (accuracy): a ResNet-18 trained on ``digits`` (``--digits-model``; trained here with
prepare_model.py if missing), structured-pruned by ``--amount`` and fine-tuned ``--epochs``: top-1
on the test split before and after.

    python PR3_model_optimization/benchmarks/bench_pruning.py --threads 2 --output runs/bench_pruning

Goals: >= 1.8x at batch 16 and >= 1.6x at batch 1, <= 50% of the parameters, and at
most 1 point of top-1 lost on digits after fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelops.artifact import Manifest, file_size_mb, load_module, save_artifact
from modelops.cli import run_cli, split_seed, training_config, usable_cores
from modelops.cpu import cpu_info
from modelops.data import load_dataset
from modelops.load_options import LoadOptions
from modelops.models import count_macs, count_parameters, create_model
from modelops.results import markdown_table, write_results
from modelops.timed_modules import medians_or_raise, time_modules
from modelops.timing import TimingPolicy
from PR3_model_optimization import model_pruning as mp
from PR3_model_optimization.pruning.fine_tune import fine_tune_pruned, test_accuracy
from PR3_model_optimization.pruning.structured import build_structured_pruner, structured_step
from PR3_model_optimization.pruning.unstructured import (
    compress_in_place,
    make_permanent,
    sparsity_report,
    unstructured_prune,
)

logger = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Structured vs unstructured pruning, measured side by side.",
                                     add_help=add_help)
    parser.add_argument("--arch", default="resnet50", help="speed benchmark architecture (default: resnet50)")
    parser.add_argument("--image-size", type=int, default=224, help="speed benchmark input side (default: 224)")
    parser.add_argument("--amount", type=float, default=0.3,
                        help="fraction pruned: channels (structured) and weights (unstructured) (default: 0.3)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="interleaved timed rounds per batch size > 1, after --warmup calls (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first (default: 2)")
    parser.add_argument("--rounds-batch1", type=int, default=30,
                        help="timed rounds at batch 1, which is cheap and noisier (default: 30)")
    parser.add_argument("--digits-model", default="models/resnet18.pt",
                        help="ResNet-18 trained on digits for the accuracy part; trained if missing "
                             "(default: models/resnet18.pt)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after pruning (default: 3)")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default: 0.01)")
    parser.add_argument("--skip-accuracy", action="store_true", help="run only the speed part (default: off)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--output", default="runs/bench_pruning",
                        help="folder for results.json, speed.csv, speed.md (default: runs/bench_pruning)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def model_facts(args: argparse.Namespace, models: dict[str, nn.Module], input_shape: list[int],
                workdir: Path) -> dict[str, dict[str, Any]]:
    """Parameters, MACs, file size and sparsity of each model, saved as an artifact (unstructured also compressed)."""
    facts: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        manifest = Manifest(arch=args.arch, num_classes=1000, input_shape=input_shape)
        path = workdir / f"{name}.pt"
        size = save_artifact(model, path, manifest).size_mb
        facts[name] = {"params_m": round(count_parameters(model) / 1e6, 3),
                       "macs_g": round(count_macs(model, input_shape) / 1e9, 3),
                       "size_mb": round(size, 2), "sparsity": round(sparsity_report(model)[0], 3)}
        if name == "unstructured":
            compress_in_place(path)
            facts[name]["size_mb_compressed"] = round(file_size_mb(path), 2)
            load_module(path)  # the compressed file is still an ordinary loadable artifact
    return facts


def speed_part(
    args: argparse.Namespace, workdir: Path, output: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Latency, parameters, MACs and file size of original / structured / unstructured.

    Rows are written to ``output/speed.csv`` after each batch size, so an interrupted run keeps them.
    """
    input_shape = [3, args.image_size, args.image_size]
    torch.manual_seed(args.seed)
    original = create_model(args.arch, 1000).eval()
    structured = copy.deepcopy(original)
    pruner = build_structured_pruner(structured, input_shape, amount=args.amount, round_to=8)
    structured_step(pruner, structured, "l1")
    structured.eval()
    unstructured = make_permanent(unstructured_prune(copy.deepcopy(original), args.amount, "global")).eval()

    models = {"original": original, "structured": structured, "unstructured": unstructured}
    facts = model_facts(args, models, input_shape, workdir)
    variants = {"original": original, "original_cl": (original, True),
                "structured": structured, "structured_cl": (structured, True), "unstructured": unstructured}
    manifest = Manifest(arch=args.arch, num_classes=1000, input_shape=input_shape)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        rounds = args.rounds_batch1 if batch_size == 1 else args.rounds
        started = time.perf_counter()
        times = time_modules(variants, manifest, [batch_size], rounds, options=LoadOptions(threads=args.threads),
                             policy=TimingPolicy(warmup=args.warmup), seed=args.seed)
        logger.info("batch %d: %d rounds per process in %.0f s", batch_size, rounds, time.perf_counter() - started)
        p50 = {name: round(ms, 4) for name, ms in medians_or_raise(times, batch_size).items()}
        base = p50["original"]
        best_original = min(p50["original"], p50["original_cl"])
        for name, ms in p50.items():
            model_name = name.removesuffix("_cl")
            stats = times.stats(name, batch_size)
            rows.append({"model": model_name, "layout": "channels_last" if name.endswith("_cl") else "NCHW",
                         "batch": batch_size, "latency_ms_p50": ms, "latency_ms_p90": stats["latency_ms_p90"],
                         "speedup_vs_original": round(base / ms, 2),
                         "speedup_vs_best_original": round(best_original / ms, 2),
                         "samples_per_s": round(batch_size * 1000 / ms, 1), **facts[model_name]})
        best_structured = min(p50["structured"], p50["structured_cl"])
        summary[f"structured_speedup_b{batch_size}"] = round(base / best_structured, 2)
        summary[f"structured_speedup_vs_best_original_b{batch_size}"] = round(best_original / best_structured, 2)
        summary[f"structured_layout_b{batch_size}"] = (
            "channels_last" if p50["structured_cl"] < p50["structured"] else "NCHW")
        summary[f"unstructured_speedup_b{batch_size}"] = round(base / p50["unstructured"], 2)
        write_results(output / "speed.csv", rows)
        write_results(output / "summary_partial.json", summary)
    summary["structured_params_ratio"] = round(facts["structured"]["params_m"] / facts["original"]["params_m"], 3)
    summary["structured_macs_ratio"] = round(facts["structured"]["macs_g"] / facts["original"]["macs_g"], 3)
    summary["structured_size_ratio"] = round(facts["structured"]["size_mb"] / facts["original"]["size_mb"], 3)
    summary["unstructured_size_ratio_compressed"] = round(
        facts["unstructured"]["size_mb_compressed"] / facts["original"]["size_mb"], 3)
    return rows, summary


def accuracy_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Prune the digits ResNet-18 structurally, fine-tune, and compare top-1 on the test split."""
    path = Path(args.digits_model)
    if not path.is_file():
        from PR3_model_optimization import prepare_model

        logger.info("%s missing: training it with prepare_model.py (15 epochs)", path)
        prepare_model.main(prepare_model.get_args_parser().parse_args(
            ["--arch", "resnet18", "--epochs", "15", "--save-path", str(path), "--threads", str(args.threads)]))
    model, manifest = load_module(path)
    data = load_dataset(manifest.dataset or "digits", image_size=manifest.input_shape[-1],
                        seed=split_seed(args, manifest))
    before = test_accuracy(model, data)
    pruner = build_structured_pruner(model, manifest.input_shape, amount=args.amount, round_to=8)
    params_before = count_parameters(model)
    structured_step(pruner, model, "l1")
    pruned = test_accuracy(model, data)
    tune_args = mp.get_args_parser().parse_args(
        ["--model", str(path), "--epochs", str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed)])
    started = time.perf_counter()
    tuning = fine_tune_pruned(model, data, training_config(tune_args), batch_size=tune_args.batch_size,
                              seed=tune_args.seed, workers=tune_args.workers, output_dir=workdir / "fine_tune")
    after = test_accuracy(model, data)
    return {"digits_model": str(path), "digits_accuracy_before": before, "digits_accuracy_pruned": pruned,
            "digits_accuracy_fine_tuned": after, "digits_top1_drop": round(before - after, 2),
            "digits_params_ratio": round(count_parameters(model) / params_before, 3),
            "fine_tune_epochs": args.epochs, "fine_tune_s": round(time.perf_counter() - started, 1),
            "best_val_top1_pct": tuning["best_val_top1_pct"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    info = cpu_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, summary = speed_part(args, Path(tmp), output)
        write_results(output / "speed.csv", rows)
        (output / "speed.md").write_text(markdown_table(rows) + "\n")
        if not args.skip_accuracy:
            summary.update(accuracy_part(args, Path(tmp)))
    summary.update({"arch": args.arch, "image_size": args.image_size, "amount": args.amount,
                    "threads": args.threads, "usable_cores": usable_cores(), "cpu_model": info.get("cpu_model"),
                    "torch": torch.__version__, "bench_s": round(time.perf_counter() - started, 1)})
    write_results(output / "results.json", summary)
    columns = ("model", "layout", "batch", "latency_ms_p50", "speedup_vs_original", "speedup_vs_best_original",
               "params_m", "macs_g", "size_mb", "size_mb_compressed", "sparsity")
    print(markdown_table([{c: r.get(c, "") for c in columns} for r in rows]))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
