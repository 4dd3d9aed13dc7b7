"""Quantization benchmark: fp32 eager vs fp32 ONNX Runtime vs int8 ONNX Runtime, side by side in ONE run.

Part 1 (speed and size): random-weight torchvision ResNet-18 and ResNet-50 at 224x224, 1000 classes,
quantized with the script's default static config (ONNX Runtime, QDQ, per-channel int8 weights,
first conv in float), timed interleaved (A B C A B C ...) at batch 1 and 16. The total speed-up over
fp32 eager is split into the runtime's share (fp32 eager -> fp32 on ONNX Runtime) and int8's share
(fp32 ONNX Runtime -> int8 ONNX Runtime). ``--pt2e`` adds torchao PT2E int8 run through
torch.compile (costs a cold compile per model and batch size).

Part 2 (accuracy): a ResNet-18 trained on ``digits`` (``--digits-model``), quantized by
model_quantization.py with its defaults: top-1 on the test split before and after.

    python PR3_model_optimization/benchmarks/bench_quantization.py --threads 2 --output runs/bench_quantization

Goals (issue 3): ResNet-50 >= 4.5x at batch 1 and >= 6x at batch 16, ResNet-18 >= 4.5x at both,
int8 file <= 30% of fp32, top-1 drop <= 0.3 points on digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modelops.artifact import Manifest, file_size_mb, load_artifact, load_module, save_artifact, write_manifest
from modelops.cli import run_cli, split_seed
from modelops.cpu import cpu_info
from modelops.data import load_dataset, make_loader
from modelops.errors import UsageError
from modelops.evaluate import accuracy, predict_logits
from modelops.models import create_model
from modelops.results import markdown_table, write_results
from modelops.timing import interleaved_latency
from PR3_model_optimization import model_quantization as mq
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.onnxruntime_backend import prepare_onnx, quantize_onnx
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e

logger = logging.getLogger(__name__)

GOALS = {("resnet18", 1): 4.5, ("resnet18", 16): 4.5, ("resnet50", 1): 4.5, ("resnet50", 16): 6.0}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="fp32 vs int8 (ONNX Runtime, optionally PT2E), side by side.",
                                     add_help=add_help)
    parser.add_argument("--archs", default="resnet18,resnet50", help="comma-separated torchvision models "
                        "(default: resnet18,resnet50)")
    parser.add_argument("--image-size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="interleaved timed rounds at batch > 1, after 2 warm-up calls (default: 6)")
    parser.add_argument("--rounds-batch1", type=int, default=20, help="timed rounds at batch 1 (default: 20)")
    parser.add_argument("--calibration-batches", type=int, default=4,
                        help="random calibration batches of 8 for the random-weight models (default: 4)")
    parser.add_argument("--pt2e", action="store_true", help="also time torchao PT2E int8 + torch.compile "
                        "(default: off; adds a cold compile per model and batch size)")
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


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


def speed_part(args: argparse.Namespace, arch: str, work: Path) -> list[dict[str, Any]]:
    """Build fp32/int8 artifacts of a random-weight ``arch`` and time them interleaved per batch size."""
    torch.manual_seed(0)
    model = create_model(arch, 1000).eval()
    shape = [3, args.image_size, args.image_size]
    manifest = Manifest(arch=arch, num_classes=1000, input_shape=shape, dataset="fake",
                        transform={"kind": "baseline", "source": "random"})
    fp32_path = work / f"{arch}.pt"
    save_artifact(model, fp32_path, manifest)
    calibration = [torch.randn(8, *shape) for _ in range(args.calibration_batches)]
    config = QuantConfig(calibration_batches=args.calibration_batches, keep_float=("conv1",))

    started = time.perf_counter()
    prepared = prepare_onnx(model, calibration[0][:2], work)
    write_manifest(prepared, manifest.derive(parent_path=fp32_path, transform={"kind": "export"}), fmt="onnx")
    int8_path = work / f"{arch}_int8.onnx"
    quantize_onnx(prepared, int8_path, config, calibration)
    write_manifest(int8_path, manifest.derive(parent_path=fp32_path, transform=config.transform()), fmt="onnx")
    logger.info("%s: ONNX export + int8 quantization took %.0f s", arch, time.perf_counter() - started)
    sizes = {"fp32_mb": file_size_mb(fp32_path), "int8_mb": file_size_mb(int8_path)}

    contenders = {
        "fp32 eager": model,
        "fp32 onnxruntime": load_artifact(prepared, threads=args.threads),
        "int8 onnxruntime": load_artifact(int8_path, threads=args.threads),
    }
    if args.pt2e:
        graph = quantize_pt2e(model, calibration[0][:2], QuantConfig(backend="pt2e", keep_float=("conv1",)),
                              calibration)
        pt2e_path = work / f"{arch}_int8.pt2"
        save_pt2e(graph, pt2e_path, calibration[0][:2])
        write_manifest(pt2e_path, manifest.derive(parent_path=fp32_path, transform={"kind": "quantization"},
                                                  runtime={"compile": True}), fmt="exported_program")
        contenders["int8 pt2e+compile"] = load_artifact(pt2e_path)
        sizes["pt2e_mb"] = file_size_mb(pt2e_path)

    rows = []
    for batch_size in args.batch_sizes:
        batch = torch.randn(batch_size, *shape)
        rounds = args.rounds_batch1 if batch_size == 1 else args.rounds
        load = os.getloadavg()[0]
        samples = interleaved_latency(contenders, batch, warmup=2, rounds=rounds)
        ms = {name: _median(values) for name, values in samples.items()}
        eager, runtime, int8 = ms["fp32 eager"], ms["fp32 onnxruntime"], ms["int8 onnxruntime"]
        goal = GOALS.get((arch, batch_size))
        row = {
            "arch": arch, "batch_size": batch_size, "rounds": rounds,
            "fp32_eager_ms_p50": round(eager, 2), "fp32_ort_ms_p50": round(runtime, 2),
            "int8_ort_ms_p50": round(int8, 2),
            "speedup_int8_vs_eager": round(eager / int8, 2),
            "runtime_share": round(eager / runtime, 2), "int8_share": round(runtime / int8, 2),
        }
        if args.pt2e:
            row["int8_pt2e_ms_p50"] = round(ms["int8 pt2e+compile"], 2)
            row["speedup_pt2e_vs_eager"] = round(eager / ms["int8 pt2e+compile"], 2)
            row["pt2e_size_ratio"] = round(sizes["pt2e_mb"] / sizes["fp32_mb"], 3)
        row.update({
            "fp32_size_mb": round(sizes["fp32_mb"], 2), "int8_size_mb": round(sizes["int8_mb"], 2),
            "size_ratio": round(sizes["int8_mb"] / sizes["fp32_mb"], 3),
            "goal_speedup": goal, "meets_goal": goal is not None and eager / int8 >= goal,
            "load_avg_1m": round(load, 1),
        })
        logger.info("%s b%d: eager %.1f ms, ORT fp32 %.1f ms, ORT int8 %.1f ms -> %.2fx", arch, batch_size, eager,
                    runtime, int8, eager / int8)
        rows.append(row)
    return rows


def accuracy_part(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
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
    runs = {"default static": [],
            "--max-accuracy-drop 0.3": ["--max-accuracy-drop", "0.3", "--backend", "onnxruntime",
                                        "--max-trials", str(args.search_trials)]}
    for name, flags in runs.items():
        save = work / f"digits_int8_{len(rows)}.onnx"
        summary = mq.main(mq.get_args_parser().parse_args(
            ["--model", str(model_path), "--save-path", str(save), "--threads", str(args.threads),
             "--latency-rounds", "5", *flags]))
        int8_logits, _ = predict_logits(load_artifact(save, threads=args.threads), loader)
        int8_acc = accuracy(int8_logits, targets)
        rows.append({
            "run": name, "config": summary["config"], "trials": summary["trials"], "test_samples": len(targets),
            "fp32_test_top1": round(fp32_acc, 2), "int8_test_top1": round(int8_acc, 2),
            "top1_drop_points": round(fp32_acc - int8_acc, 2), "val_drop_points": summary["accuracy_drop"],
            "agreement_val": summary["top1_agreement"], "size_ratio": summary["size_ratio"],
            "speedup_b16_vs_eager": summary["speedup"], "meets_goal": fp32_acc - int8_acc <= 0.3,
        })
    return rows


def main(args: argparse.Namespace) -> dict[str, Any]:
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    archs = [a for a in args.archs.split(",") if a]
    if not archs or any(b < 1 for b in args.batch_sizes):
        raise UsageError("--archs and --batch-sizes need at least one model and positive batch sizes")
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as tmp:
        for arch in archs:
            rows += speed_part(args, arch, Path(tmp))
            write_results(out / "speed.csv", rows)  # an interrupted run keeps what it measured
        digits = accuracy_part(args, Path(tmp))
    info = cpu_info()
    result = {
        "machine": f"{info['cpu_model']}, {info['usable_cores']} usable cores, "
                   f"avx512_vnni={info['has_avx512_vnni']}, amx={info['has_amx_int8']}",
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
