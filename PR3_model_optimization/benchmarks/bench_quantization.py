"""Quantization benchmark: fp32 eager vs every int8 and bf16 runtime, side by side in ONE run.

Part 1 (speed and size): random-weight torchvision ResNet-18 and ResNet-50 at 224x224, 1000 classes,
quantized with the script's static config (per-channel int8 weights, first conv in float) by every
backend: ONNX Runtime (QDQ), OpenVINO (NNCF int8 of the same ONNX file, compiled by OpenVINO) and, with
``--pt2e``, torchao PT2E run through torch.compile. Where the CPU has AVX512-BF16 or AMX-BF16, the fp32
ONNX file on OpenVINO in bf16 (and, with ``--pt2e``, the bf16 model compiled by inductor) runs beside
them. Every contender, fp32 eager included, is an artifact file loaded by the shared loader only in its own
process and timed there, all in the project's interleaved turns at batch 1 and 16
(:func:`modelops.model_process.time_artifacts`); the ``auto`` columns are the int8 contender
``--backend auto`` keeps on speed (best geometric-mean speed-up over the batch sizes). Each contender's cold
start (load, compile, first call) is reported apart from its steady-state latency. The fp32 ONNX Runtime
column splits ONNX Runtime's speed-up into the runtime's share and int8's share.

Part 2 (accuracy): a ResNet-18 trained on ``digits`` (``--digits-model``), quantized by
model_quantization.py with its defaults (auto int8), with the accuracy-aware search, and in bf16:
top-1 on the test split before and after.

    python PR3_model_optimization/benchmarks/bench_quantization.py --threads 2 --pt2e \
        --output runs/bench_quantization

Goals (speed-up of the auto choice over fp32 eager): on a CPU with AMX-INT8, ResNet-50 >= 8x at batch 1
and >= 12x at batch 16, ResNet-18 >= 6x at both; elsewhere ResNet-50 >= 4.5x / 6x, ResNet-18 >= 4.5x;
int8 file <= 30% of fp32; top-1 drop <= 0.3 points on digits (bf16: <= 0.1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelops.artifact import Manifest, file_size_mb, load_artifact, load_module, save_artifact, write_manifest
from modelops.cli import run_cli, split_seed
from modelops.cpu import cpu_info, cpu_summary
from modelops.data import load_dataset, make_loader
from modelops.errors import UsageError
from modelops.evaluate import accuracy, predict_logits
from modelops.load_options import LoadOptions
from modelops.model_process import ProcessTimes, time_artifacts
from modelops.models import create_model
from modelops.results import markdown_table, write_results
from modelops.runtimes.openvino_predictor import openvino_available
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization.quantization.bf16 import bf16_support, save_bf16_program
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.onnxruntime_backend import prepare_onnx, quantize_onnx
from PR3_model_optimization.quantization.openvino_backend import nncf_available, quantize_nncf
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e

logger = logging.getLogger(__name__)

GOALS_AMX = {("resnet18", 1): 6.0, ("resnet18", 16): 6.0, ("resnet50", 1): 8.0, ("resnet50", 16): 12.0}
GOALS_OTHER = {("resnet18", 1): 4.5, ("resnet18", 16): 4.5, ("resnet50", 1): 4.5, ("resnet50", 16): 6.0}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="fp32 vs int8 (ONNX Runtime, optionally PT2E), side by side.",
                                     add_help=add_help)
    parser.add_argument("--archs", default="resnet18,resnet50", help="comma-separated torchvision models "
                        "(default: resnet18,resnet50)")
    parser.add_argument("--image-size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="timed calls per contender at batch > 1, taken in interleaved turns (default: 6)")
    parser.add_argument("--rounds-batch1", type=int, default=20, help="timed calls at batch 1 (default: 20)")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="random calibration batches of 8 for the random-weight models (default: 4)")
    parser.add_argument("--pt2e", action="store_true", help="also time torchao PT2E int8 (and bf16 with --bf16) "
                        "run through torch.compile (default: off; adds a cold compile per model and batch size)")
    parser.add_argument("--no-openvino", dest="openvino", action="store_false",
                        help="leave out OpenVINO (NNCF int8, bf16) (default: in, where openvino is installed)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="leave out the bf16 columns (default: in, where the CPU has AVX512-BF16 or AMX-BF16)")
    parser.add_argument("--digits-model", default="models/resnet18.pt",
                        help="ResNet-18 trained on digits for the accuracy part; skipped if missing "
                             "(default: models/resnet18.pt)")
    parser.add_argument("--search-trials", type=int, default=4,
                        help="trials of the accuracy-aware search in the accuracy part (default: 4)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and ORT (default: 2)")
    parser.add_argument("--output", default="runs/bench_quantization",
                        help="folder for results.json/.csv/.md (default: runs/bench_quantization)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


@dataclass(frozen=True)
class Runs:
    """What this run times: the models and batch sizes the flags name, and the optional runtimes the flags ask
    for that this machine can run."""

    archs: list[str]
    batch_sizes: list[int]
    openvino: bool
    bf16: bool


def plan_runs(args: argparse.Namespace) -> Runs:
    """``--archs`` and ``--batch-sizes`` as lists, checked; OpenVINO and bf16 left out, with a warning, where this
    machine cannot run them."""
    batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    archs = [a for a in args.archs.split(",") if a]
    if not archs or any(b < 1 for b in batch_sizes):
        raise UsageError("--archs and --batch-sizes need at least one model and positive batch sizes")
    openvino = args.openvino and openvino_available() and nncf_available()
    if args.openvino and not openvino:
        logger.warning("openvino or nncf is not installed: no OpenVINO columns")
    bf16 = args.bf16 and bf16_support()[0]
    if args.bf16 and not bf16:
        logger.warning("no bf16 columns: %s", bf16_support()[1])
    return Runs(archs=archs, batch_sizes=batch_sizes, openvino=openvino, bf16=bf16)


def build_contenders(args: argparse.Namespace, runs: Runs, arch: str, model: torch.nn.Module, manifest: Manifest,
                     work: Path) -> dict[str, Path]:
    """fp32 eager and every int8/bf16 artifact file of one model, each with its manifest, by contender name."""
    shape = manifest.input_shape
    fp32_path = work / f"{arch}.pt"
    save_artifact(model, fp32_path, manifest)
    calibration = [torch.randn(8, *shape) for _ in range(args.calibration_batches)]
    config = QuantConfig(calibration_batches=args.calibration_batches, keep_float=("conv1",))

    def artifact(path: Path, fmt: str, **runtime: Any) -> Path:
        transform = {"kind": "quantization", "backend": runtime.get("engine", fmt)}
        write_manifest(path, manifest.derive(parent_path=fp32_path, transform=transform, runtime=runtime), fmt=fmt)
        return path

    started = time.perf_counter()
    prepared = prepare_onnx(model, calibration[0][:2], work)
    artifact(prepared, "onnx")
    paths = {"fp32 onnxruntime": prepared}
    quantize_onnx(prepared, work / f"{arch}_int8.onnx", config, calibration)
    paths["int8 onnxruntime"] = artifact(work / f"{arch}_int8.onnx", "onnx")
    if runs.openvino:
        quantize_nncf(prepared, work / f"{arch}_int8_ov.onnx", config, calibration)
        paths["int8 openvino"] = artifact(work / f"{arch}_int8_ov.onnx", "onnx", engine="openvino")
        if runs.bf16:
            shutil.copyfile(prepared, work / f"{arch}_bf16_ov.onnx")
            paths["bf16 openvino"] = artifact(work / f"{arch}_bf16_ov.onnx", "onnx", engine="openvino",
                                              precision="bf16")
    if args.pt2e:
        graph = quantize_pt2e(model, calibration[0][:2], config.with_(backend="pt2e"), calibration)
        save_pt2e(graph, work / f"{arch}_int8.pt2", calibration[0][:2])
        paths["int8 pt2e+compile"] = artifact(work / f"{arch}_int8.pt2", "exported_program", compile=True)
        if runs.bf16:
            save_bf16_program(model, calibration[0][:2], work / f"{arch}_bf16.pt2")
            paths["bf16 inductor"] = artifact(work / f"{arch}_bf16.pt2", "exported_program", compile=True)
    logger.info("%s: export, quantization and bf16 builds took %.0f s", arch, time.perf_counter() - started)
    return {"fp32 eager": fp32_path, **paths}


def auto_pick(ms_by_batch: dict[int, dict[str, float]]) -> str:
    """The int8 contender that ``--backend auto`` keeps on speed: best geometric-mean speed-up over fp32 eager."""
    names = [n for n in next(iter(ms_by_batch.values()))
             if n.startswith("int8 ") and all(n in ms for ms in ms_by_batch.values())]
    return max(names, key=lambda name: statistics.geometric_mean(ms["fp32 eager"] / ms[name]
                                                                for ms in ms_by_batch.values()))


def speed_part(args: argparse.Namespace, runs: Runs, arch: str, work: Path) -> list[dict[str, Any]]:
    """Build fp32/int8/bf16 artifacts of a random-weight ``arch`` and time them interleaved per batch size."""
    torch.manual_seed(0)
    model = create_model(arch, 1000).eval()
    manifest = Manifest(arch=arch, num_classes=1000, input_shape=[3, args.image_size, args.image_size],
                        dataset="fake", transform={"kind": "baseline", "source": "random"})
    paths = build_contenders(args, runs, arch, model, manifest, work)
    load = os.getloadavg()[0]
    times = time_artifacts(paths, runs.batch_sizes,
                           {b: args.rounds_batch1 if b == 1 else args.rounds for b in runs.batch_sizes},
                           options=LoadOptions(threads=args.threads))
    if "fp32 eager" not in times.infos or times.errors.get("fp32 eager"):
        raise RuntimeError(f"fp32 eager could not be timed: {times.errors.get('fp32 eager')}")
    for name, error in times.errors.items():
        logger.warning("%s %s: no column (%s)", arch, name, error)
    ms_by_batch = {b: times.median_ms(b) for b in runs.batch_sizes}
    chosen = auto_pick(ms_by_batch)
    sizes = contender_sizes(paths, times)
    return [speed_row(arch, b, ms, sizes, chosen, load) for b, ms in ms_by_batch.items()]


def contender_sizes(paths: dict[str, Path], times: ProcessTimes) -> dict[str, float]:
    """File sizes (``fp32_mb`` for fp32 eager, each contender's by name) and cold starts (``cold NAME``)."""
    sizes = {"fp32_mb": file_size_mb(paths["fp32 eager"]),
             **{name: file_size_mb(path) for name, path in paths.items() if name != "fp32 eager"}}
    cold = {f"cold {name}": info["cold_start_s"] for name, info in times.infos.items() if name != "fp32 eager"}
    return {**sizes, **cold}


def speed_row(arch: str, batch_size: int, ms: dict[str, float], sizes: dict[str, float], chosen: str,
              load: float) -> dict[str, Any]:
    """One (model, batch size) row: every contender's median ms and speed-up over fp32 eager, sizes, cold starts."""
    eager, runtime, int8 = ms["fp32 eager"], ms.get("fp32 onnxruntime"), ms.get("int8 onnxruntime")
    goal = (GOALS_AMX if cpu_info()["has_amx_int8"] else GOALS_OTHER).get((arch, batch_size))
    row: dict[str, Any] = {"arch": arch, "batch_size": batch_size, "fp32_eager_ms_p50": round(eager, 2)}
    for name, value in ms.items():
        if name != "fp32 eager":
            key = name.replace(" ", "_").replace("+", "_")
            row[f"{key}_ms_p50"] = round(value, 2)
            row[f"{key}_speedup"] = round(eager / value, 2)
    row.update({
        "runtime_share": round(eager / runtime, 2) if runtime else None,
        "int8_share": round(runtime / int8, 2) if runtime and int8 else None,
        "auto_choice": chosen, "auto_ms_p50": round(ms[chosen], 2), "auto_speedup": round(eager / ms[chosen], 2),
        "fp32_size_mb": round(sizes["fp32_mb"], 2),
        "auto_size_ratio": round(sizes[chosen] / sizes["fp32_mb"], 3),
        **{f"cold_s_{k[5:].replace(' ', '_')}": v for k, v in sizes.items() if k.startswith("cold ")},
        "goal_speedup": goal, "meets_goal": goal is not None and eager / ms[chosen] >= goal,
        "load_avg_1m": round(load, 1),
    })
    logger.info("%s b%d: eager %.1f ms, auto (%s) %.1f ms -> %.2fx", arch, batch_size, eager, chosen, ms[chosen],
                eager / ms[chosen])
    return row


def accuracy_part(args: argparse.Namespace, runs: Runs, work: Path) -> list[dict[str, Any]]:
    """Quantize the digits ResNet-18 with the script's defaults, then with the accuracy-aware search
    (``--max-accuracy-drop 0.3`` on the val split); top-1 on the held-out test split before and after."""
    model_path = Path(args.digits_model)
    if not model_path.is_file():
        logger.warning("%s not found: skipping the accuracy part (make it with prepare_model.py)", model_path)
        return []
    fp32, manifest = load_module(model_path)
    data = load_dataset(manifest.dataset or "digits", image_size=manifest.input_shape[-1],
                        seed=split_seed(args, manifest))
    loader = make_loader(data.test, 256)
    fp32_logits, targets = predict_logits(fp32, loader)
    fp32_acc = accuracy(fp32_logits, targets)
    rows = []
    quantizations = {"default (auto int8)": [],
            "--max-accuracy-drop 0.3": ["--max-accuracy-drop", "0.3", "--backend", "onnxruntime",
                                        "--max-trials", str(args.search_trials)]}
    if runs.bf16:
        quantizations["bf16 (auto)"] = ["--quantization-method", "bf16"]
    for name, flags in quantizations.items():
        save = work / f"digits_int8_{len(rows)}.onnx"
        summary = mq.main(mq.get_args_parser().parse_args(
            ["--model", str(model_path), "--save-path", str(save), "--threads", str(args.threads),
             "--latency-rounds", "5", *flags]))
        logits, _ = predict_logits(load_artifact(save, LoadOptions(threads=args.threads)), loader)
        test_acc = accuracy(logits, targets)
        rows.append({
            "run": name, "backend": summary["backend"], "config": summary["config"], "trials": summary["trials"],
            "test_samples": len(targets), "fp32_test_top1": round(fp32_acc, 2), "test_top1": round(test_acc, 2),
            "top1_drop_points": round(fp32_acc - test_acc, 2), "val_drop_points": summary["top1_drop_pts"],
            "agreement_val": summary["top1_agreement_pct"], "size_ratio": summary["size_ratio"],
            "speedup_b16_vs_eager": summary["speedup_x"],
            "meets_goal": fp32_acc - test_acc <= (0.1 if summary["method"] == "bf16" else 0.3),
        })
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    runs = plan_runs(args)
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as tmp:
        for arch in runs.archs:
            rows += speed_part(args, runs, arch, Path(tmp))
            write_results(out / "speed.csv", rows)  # an interrupted run keeps what it measured
        digits = accuracy_part(args, runs, Path(tmp))
    result = {
        "machine": cpu_summary(),
        "threads": args.threads, "image_size": args.image_size, "speed": rows, "digits_accuracy": digits,
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_results(out / "results.json", result)
    table = markdown_table(rows)
    (out / "results.md").write_text(table + "\n\n" + (markdown_table(digits) + "\n" if digits else ""))
    print(table)
    if digits:
        print()
        print(markdown_table(digits))
    print(json.dumps({"machine": result["machine"], "total_s": result["total_s"]}))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
