"""Runtime options of each backend, each against its baseline, side by side in ONE run.

For a random-weight torchvision model (``--arch``, default ResNet-18) at 224x224, batch 1 and 16, with
``--threads`` intra-op threads (default 2), every option below is timed beside its baseline in the project's
interleaved turns (:func:`modelops.timing.interleaved_latency`), one group at a time:

- **fp32 eager**: ``channels_last`` (model and input) vs the default contiguous layout.
- **pt2e int8** (torchao PT2E, X86InductorQuantizer, ``torch.compile`` with freezing, as the loader runs it):
  a ``channels_last`` input; inductor's ``max_autotune``; its C++ wrapper (``cpp_wrapper``); the AOTInductor
  package the quantization script writes (:mod:`modelops.runtimes.aoti`). A compiled variant's first call
  at each batch size is its compile, reported apart from steady latency. Inductor's FX graph cache is off and
  its kernel cache is a fresh folder for the run, so nothing comes from earlier runs; a later variant may
  reuse a kernel an earlier one built when the two are identical. First calls are timed in this process, after
  its imports: a fresh serving process pays those and inductor's probe compiles of the CPU's ISA on top.
  ``setup_s`` is the variant's build (for the package: the ahead-of-time compile the quantization script does
  once, with a kernel cache of its own).
- **onnxruntime int8** (the QDQ file): ``graph_optimization_level`` levels other than ORT's default,
  ``session.intra_op.allow_spinning`` 0, ``enable_cpu_mem_arena`` off, ``execution_mode`` parallel, each alone
  against ORT's defaults.
- **openvino int8** (the NNCF file): ``PERFORMANCE_HINT`` THROUGHPUT and ``INFERENCE_NUM_THREADS`` left to
  OpenVINO, each against the loader's LATENCY hint with ``--threads``.

It prints one table, the speed-up of each option over its baseline (baseline ms / option ms) and whether it
clears ``--min-gain``, with the CPU model, and writes results.json/.csv/.md to ``--output``. An option becomes a
default in the loaders only when this run shows it faster on the target machine.

    python PR3_model_optimization/benchmarks/bench_backend_options.py --threads 2
    python PR3_model_optimization/benchmarks/bench_backend_options.py --arch resnet50 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modelops.cli import run_cli
from modelops.cpu import cpu_info
from modelops.errors import UsageError
from modelops.models import create_model
from modelops.results import markdown_table, write_results
from modelops.runtimes.aoti import open_package, package_exported
from modelops.runtimes.openvino_predictor import compile_config, openvino_available
from modelops.timing import interleaved_latency
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.onnxruntime_backend import prepare_onnx, quantize_onnx
from PR3_model_optimization.quantization.openvino_backend import nncf_available, quantize_nncf
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e

logger = logging.getLogger(__name__)

GROUPS = ("eager", "pt2e", "onnxruntime", "openvino")
Fn = Callable[[torch.Tensor], torch.Tensor]
# A group's variants: name -> (the callable, seconds its set-up took); the first one is the baseline.
Variants = dict[str, tuple[Fn, float]]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Each backend's runtime options against its baseline, in one run.",
                                     add_help=add_help)
    parser.add_argument("--arch", default="resnet18", help="torchvision model, random weights (default: resnet18)")
    parser.add_argument("--image-size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per variant and batch size, in "
                        "interleaved turns (default: 30)")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"comma-separated groups to run, of {', '.join(GROUPS)} (default: all; openvino needs "
                             "openvino and nncf installed)")
    parser.add_argument("--no-aoti", dest="aoti", action="store_false",
                        help="leave the AOTInductor package out of the pt2e group (default: in)")
    parser.add_argument("--calibration-batches", type=int, default=2, help="random calibration batches of 8 "
                        "(default: 2)")
    parser.add_argument("--min-gain", type=float, default=0.03, help="speed-up over 1 an option needs to count as "
                        "faster (default: 0.03, i.e. 1.03x)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every runtime (default: 2)")
    parser.add_argument("--output", default="runs/bench_backend_options",
                        help="folder for results.json/.csv/.md (default: runs/bench_backend_options)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def timed(make: Callable[[], Fn]) -> tuple[Fn, float]:
    """(``make()``, the seconds it took)."""
    started = time.perf_counter()
    fn = make()
    return fn, time.perf_counter() - started


# --------------------------------------------------------------------------- the files


def build_files(model: torch.nn.Module, input_shape: list[int], work: Path, calibration_batches: int,
                groups: list[str]) -> dict[str, Path]:
    """The int8 files the groups need: ``onnx`` (ORT QDQ), ``openvino`` (NNCF QDQ), ``pt2e`` (a ``.pt2``)."""
    calibration = [torch.randn(8, *input_shape) for _ in range(calibration_batches)]
    config = QuantConfig(calibration_batches=calibration_batches, keep_float=("conv1",))
    files: dict[str, Path] = {}
    if "onnxruntime" in groups or "openvino" in groups:
        prepared = prepare_onnx(model, calibration[0][:2], work)
        if "onnxruntime" in groups:
            files["onnx"] = work / "int8.onnx"
            quantize_onnx(prepared, files["onnx"], config, calibration)
        if "openvino" in groups:
            files["openvino"] = work / "int8_ov.onnx"
            quantize_nncf(prepared, files["openvino"], config, calibration)
    if "pt2e" in groups:
        graph = quantize_pt2e(model, calibration[0][:2], config.with_(backend="pt2e"), calibration)
        files["pt2e"] = work / "int8.pt2"
        save_pt2e(graph, files["pt2e"], calibration[0][:2])
    return files


# --------------------------------------------------------------------------- the variants


def channels_last_input(fn: Fn) -> Fn:
    return lambda batch: fn(batch.contiguous(memory_format=torch.channels_last))


def eager_variants(model: torch.nn.Module) -> Variants:
    """fp32 eager contiguous (baseline) and channels_last (weights and input)."""
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return {"contiguous": (model, 0.0), "channels_last": (channels_last_input(last), 0.0)}


@contextmanager
def inductor_settings(**settings: Any) -> Iterator[None]:
    """Freezing on and inductor's graph cache off (each compile is cold), plus ``settings``."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"freezing": True, "fx_graph_cache": False, **settings}):
        yield


@contextmanager
def fresh_inductor_cache(folder: Path) -> Iterator[None]:
    """Inductor's kernel cache in ``folder`` while the block runs (compiles are not served from earlier runs)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def compiled_pt2e(path: Path, **settings: Any) -> Fn:
    """The program at ``path`` through ``torch.compile`` as the loader runs it, under ``settings`` at every call
    (inductor reads its config when it compiles, which is the first call at each batch size)."""
    compiled = torch.compile(torch.export.load(str(path)).module(), dynamic=False)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with inductor_settings(**settings):
            return compiled(batch)

    return run


def aoti_package(path: Path, example: torch.Tensor) -> Fn:
    """The program at ``path`` compiled ahead of time by AOTInductor, then loaded (as the loader does)."""
    package = path.with_name(path.name + ".aoti.pt2")
    # Its own kernel cache: kernels it built would otherwise make the torch.compile variants' compiles look cheap.
    with inductor_settings(), fresh_inductor_cache(path.parent / "inductor_aoti"):
        package_exported(torch.export.load(str(path)), package, example)
    return open_package(package)


def pt2e_variants(path: Path, example: torch.Tensor, aoti: bool) -> Variants:
    """PT2E int8 through torch.compile (baseline), with a channels_last input, max_autotune, the C++ wrapper, and
    the AOTInductor package."""
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the int8 ops the program calls)

    variants = {"torch.compile": timed(lambda: compiled_pt2e(path)),
                "channels_last input": timed(lambda: channels_last_input(compiled_pt2e(path))),
                "max_autotune": timed(lambda: compiled_pt2e(path, max_autotune=True)),
                "cpp_wrapper": timed(lambda: compiled_pt2e(path, cpp_wrapper=True))}
    if aoti:
        variants["AOTInductor package"] = timed(lambda: aoti_package(path, example))
    return variants


def ort_session_fn(path: Path, threads: int, configure: Callable[[Any], None]) -> Fn:
    """An ONNX Runtime session on ``path`` with ``threads`` intra-op threads and ``configure(options)`` applied."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    configure(options)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


def ort_variants(path: Path, threads: int) -> Variants:
    """ORT's defaults (baseline), then one session option changed at a time."""
    import onnxruntime as ort

    default_level = ort.SessionOptions().graph_optimization_level
    level_enum = ort.GraphOptimizationLevel
    levels = [level for level in (level_enum.ORT_ENABLE_ALL, level_enum.ORT_ENABLE_EXTENDED,
                                  level_enum.ORT_ENABLE_BASIC) if level != default_level]
    changes: dict[str, Callable[[Any], None]] = {
        f"defaults ({default_level.name})": lambda o: None,
        **{level.name: (lambda o, level=level: setattr(o, "graph_optimization_level", level)) for level in levels},
        "allow_spinning 0": lambda o: o.add_session_config_entry("session.intra_op.allow_spinning", "0"),
        "cpu_mem_arena off": lambda o: setattr(o, "enable_cpu_mem_arena", False),
        "execution_mode parallel": lambda o: setattr(o, "execution_mode", ort.ExecutionMode.ORT_PARALLEL),
    }
    return {name: timed(lambda configure=configure: ort_session_fn(path, threads, configure))
            for name, configure in changes.items()}


def openvino_fn(path: Path, config: dict[str, object]) -> Fn:
    """``path`` compiled by OpenVINO for the CPU with ``config`` (no model cache: each is a real compile)."""
    import openvino as ov

    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    return lambda batch: torch.from_numpy(request.infer({0: batch.numpy()})[0].copy())


def openvino_variants(path: Path, threads: int) -> Variants:
    """The loader's LATENCY hint with ``threads`` (baseline), the THROUGHPUT hint, and OpenVINO's own thread count."""
    latency = compile_config(threads)
    throughput = {**latency, "PERFORMANCE_HINT": "THROUGHPUT"}
    own_threads = {k: v for k, v in latency.items() if k != "INFERENCE_NUM_THREADS"}
    return {"LATENCY": timed(lambda: openvino_fn(path, latency)),
            "THROUGHPUT": timed(lambda: openvino_fn(path, throughput)),
            "INFERENCE_NUM_THREADS unset": timed(lambda: openvino_fn(path, own_threads))}


# --------------------------------------------------------------------------- timing


def first_calls(variants: Variants, batch: torch.Tensor) -> dict[str, float]:
    """Each variant's first call at this batch size, in seconds (a compiled variant compiles in it)."""
    seconds = {}
    with torch.inference_mode():
        for name, (fn, _) in variants.items():
            started = time.perf_counter()
            fn(batch)
            seconds[name] = time.perf_counter() - started
    return seconds


def compare(group: str, variants: Variants, batch: torch.Tensor, rounds: int, min_gain: float) -> list[dict[str, Any]]:
    """Time every variant at ``batch`` in interleaved turns; one row per option against the group's baseline."""
    first = first_calls(variants, batch)
    samples = interleaved_latency({name: fn for name, (fn, _) in variants.items()}, batch, rounds=rounds, warmup=2)
    median = {name: float(torch.tensor(values).median()) for name, values in samples.items()}
    baseline = next(iter(variants))
    rows = []
    for name, (_, setup_s) in list(variants.items())[1:]:
        speedup = median[baseline] / median[name]
        rows.append({
            "group": group, "batch_size": len(batch), "option": name, "baseline": baseline,
            "baseline_ms_p50": round(median[baseline], 3), "option_ms_p50": round(median[name], 3),
            "speedup": round(speedup, 3), "faster": speedup >= 1 + min_gain,
            "baseline_first_call_s": round(first[baseline], 3), "option_first_call_s": round(first[name], 3),
            "option_setup_s": round(setup_s, 2),
        })
    return rows


def run_groups(args: argparse.Namespace, model: torch.nn.Module, files: dict[str, Path]) -> list[dict[str, Any]]:
    """Every requested group at every batch size; the option rows."""
    shape = [3, args.image_size, args.image_size]
    makers: dict[str, Callable[[], Variants]] = {
        "eager": lambda: eager_variants(model),
        "pt2e": lambda: pt2e_variants(files["pt2e"], torch.randn(2, *shape), args.aoti),
        "onnxruntime": lambda: ort_variants(files["onnx"], args.threads),
        "openvino": lambda: openvino_variants(files["openvino"], args.threads),
    }
    rows: list[dict[str, Any]] = []
    for group in args.groups:
        variants = makers[group]()
        for batch_size in args.batch_sizes:
            batch = torch.randn(batch_size, *shape)
            rows += [{"arch": args.arch, **row} for row in compare(
                f"{group} {'fp32' if group == 'eager' else 'int8'}", variants, batch, args.rounds, args.min_gain)]
            logger.info("%s batch %d done", group, batch_size)
    return rows


def parse_groups(args: argparse.Namespace) -> None:
    """``--groups`` and ``--batch-sizes`` as lists, checked; openvino dropped (with a warning) where it cannot run."""
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    args.groups = [g.strip() for g in str(args.groups).split(",") if g.strip()]
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown or not args.groups:
        raise UsageError(f"Unknown --groups {', '.join(unknown) or '(none)'}. Choose from: {', '.join(GROUPS)}")
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.rounds < 1 or args.threads < 1:
        raise UsageError("--batch-sizes, --rounds and --threads must be positive")
    if "openvino" in args.groups and not (openvino_available() and nncf_available()):
        logger.warning("openvino or nncf is not installed: no openvino group")
        args.groups.remove("openvino")


def main(args: argparse.Namespace) -> dict[str, Any]:
    parse_groups(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.arch, 1000).eval()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_options_") as tmp, fresh_inductor_cache(Path(tmp) / "inductor"):
        files = build_files(model, [3, args.image_size, args.image_size], Path(tmp), args.calibration_batches,
                            args.groups)
        rows = run_groups(args, model, files)
    info = cpu_info()
    result = {"cpu": info["cpu_model"], "usable_cores": info["usable_cores"], "threads": args.threads,
              "arch": args.arch, "image_size": args.image_size, "rounds": args.rounds, "options": rows,
              "total_s": round(time.perf_counter() - started, 1)}
    out = Path(args.output)
    write_results(out / "results.json", result)
    write_results(out / "results.csv", rows)
    table = markdown_table(rows)
    (out / "results.md").write_text(f"CPU: {info['cpu_model']}, {args.threads} threads\n\n{table}\n")
    print(f"CPU: {info['cpu_model']} ({info['usable_cores']} usable cores), {args.threads} threads, {args.arch} "
          f"at {args.image_size}x{args.image_size}")
    print(table)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
