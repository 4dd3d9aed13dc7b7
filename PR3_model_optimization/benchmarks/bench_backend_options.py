"""Runtime options of each backend, each against its baseline, side by side in ONE run.

For a random-weight torchvision model (``--arch``, default ResNet-18) at 224x224, batch 1 and 16, with
``--threads`` intra-op threads (default 2), every option below is timed beside its baseline the project's one
way, one group at a time: each variant in its own spawned process (:class:`modelops.model_process.WorkerProxy`
running an :class:`OptionSession`), all of the group's variants timed in interleaved turns
(:func:`modelops.model_process.time_batch`), medians of ``--rounds`` timed calls:

- **fp32 eager**: ``channels_last`` (model and input) vs the default contiguous layout (the same weights).
- **pt2e int8** (torchao PT2E, X86InductorQuantizer, ``torch.compile`` with freezing, as the loader runs it):
  a ``channels_last`` input; inductor's ``max_autotune``; its C++ wrapper (``cpp_wrapper``); the AOTInductor
  package the quantization script writes (:mod:`modelops.runtimes.aoti`). A compiled variant's first call
  at each batch size is its compile, reported apart from steady latency. Inductor's FX graph cache is off and
  every worker has a kernel cache folder of its own in the run's temporary folder, so every compile is cold.
  Variants load one at a time; each first call is timed in the variant's own fresh process after its imports,
  as a freshly started serving process meets it. ``option_setup_s`` is the variant's build in its worker (for
  the package: the ahead-of-time compile the quantization script does once).
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
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modelops.cli import run_cli
from modelops.cpu import cpu_info
from modelops.errors import UsageError
from modelops.load_options import LoadOptions
from modelops.model_process import WorkerProxy, time_batch, wait_until_started
from modelops.model_session import ModelSession
from modelops.models import create_model
from modelops.results import markdown_table, write_results
from modelops.runtimes.aoti import open_package, package_exported
from modelops.runtimes.openvino_predictor import compile_config, openvino_available
from modelops.timing import POLICY
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.onnxruntime_backend import prepare_onnx, quantize_onnx
from PR3_model_optimization.quantization.openvino_backend import nncf_available, quantize_nncf
from PR3_model_optimization.quantization.pt2e_backend import quantize_pt2e, save_pt2e

logger = logging.getLogger(__name__)

GROUPS = ("eager", "pt2e", "onnxruntime", "openvino")
# The file each group's workers load, in the run's temporary folder.
GROUP_FILES = {"eager": "fp32.pt", "pt2e": "int8.pt2", "onnxruntime": "int8.onnx", "openvino": "int8_ov.onnx"}
Fn = Callable[[torch.Tensor], torch.Tensor]


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


# --------------------------------------------------------------------------- the files


def build_files(model: torch.nn.Module, input_shape: list[int], work: Path, calibration_batches: int,
                groups: list[str]) -> dict[str, Path]:
    """Each group's file, by group: the fp32 ``state_dict`` (eager), the ORT QDQ and NNCF QDQ int8 ONNX files,
    the PT2E int8 ``.pt2``."""
    calibration = [torch.randn(8, *input_shape) for _ in range(calibration_batches)]
    config = QuantConfig(calibration_batches=calibration_batches, keep_float=("conv1",))
    files = {group: work / GROUP_FILES[group] for group in groups}
    if "eager" in groups:
        torch.save(model.state_dict(), files["eager"])
    if "onnxruntime" in groups or "openvino" in groups:
        prepared = prepare_onnx(model, calibration[0][:2], work)
        if "onnxruntime" in groups:
            quantize_onnx(prepared, files["onnxruntime"], config, calibration)
        if "openvino" in groups:
            quantize_nncf(prepared, files["openvino"], config, calibration)
    if "pt2e" in groups:
        graph = quantize_pt2e(model, calibration[0][:2], config.with_(backend="pt2e"), calibration)
        save_pt2e(graph, files["pt2e"], calibration[0][:2])
    return files


# --------------------------------------------------------------------------- the variants


def channels_last_input(fn: Fn) -> Fn:
    return lambda batch: fn(batch.contiguous(memory_format=torch.channels_last))


@contextmanager
def inductor_settings(**settings: Any) -> Iterator[None]:
    """Freezing on and inductor's graph cache off (each compile is cold), plus ``settings``."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"freezing": True, "fx_graph_cache": False, **settings}):
        yield


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
    with inductor_settings():
        package_exported(torch.export.load(str(path)), package, example)
    return open_package(package)


# Each group's options by name, the baseline first; a worker builds the one it is named for.
EAGER_OPTIONS: dict[str, Callable[[torch.nn.Module], Fn]] = {
    "contiguous": lambda model: model,
    "channels_last": lambda model: channels_last_input(model.to(memory_format=torch.channels_last)),
}
PT2E_OPTIONS: dict[str, Callable[[Path, torch.Tensor], Fn]] = {
    "torch.compile": lambda path, _: compiled_pt2e(path),
    "channels_last input": lambda path, _: channels_last_input(compiled_pt2e(path)),
    "max_autotune": lambda path, _: compiled_pt2e(path, max_autotune=True),
    "cpp_wrapper": lambda path, _: compiled_pt2e(path, cpp_wrapper=True),
    "AOTInductor package": aoti_package,
}


def ort_changes() -> dict[str, Callable[[Any], None]]:
    """ORT's defaults (baseline), then one session option changed at a time: name -> ``configure(options)``."""
    import onnxruntime as ort

    default_level = ort.SessionOptions().graph_optimization_level
    level_enum = ort.GraphOptimizationLevel
    levels = [level for level in (level_enum.ORT_ENABLE_ALL, level_enum.ORT_ENABLE_EXTENDED,
                                  level_enum.ORT_ENABLE_BASIC) if level != default_level]
    return {
        f"defaults ({default_level.name})": lambda o: None,
        **{level.name: (lambda o, level=level: setattr(o, "graph_optimization_level", level)) for level in levels},
        "allow_spinning 0": lambda o: o.add_session_config_entry("session.intra_op.allow_spinning", "0"),
        "cpu_mem_arena off": lambda o: setattr(o, "enable_cpu_mem_arena", False),
        "execution_mode parallel": lambda o: setattr(o, "execution_mode", ort.ExecutionMode.ORT_PARALLEL),
    }


def ort_session_fn(path: Path, threads: int, configure: Callable[[Any], None]) -> Fn:
    """An ONNX Runtime session on ``path`` with ``threads`` intra-op threads and ``configure(options)`` applied."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    configure(options)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


def openvino_configs(threads: int) -> dict[str, dict[str, object]]:
    """The loader's LATENCY hint with ``threads`` (baseline), the THROUGHPUT hint, and OpenVINO's own thread count."""
    latency = compile_config(threads)
    return {"LATENCY": latency, "THROUGHPUT": {**latency, "PERFORMANCE_HINT": "THROUGHPUT"},
            "INFERENCE_NUM_THREADS unset": {k: v for k, v in latency.items() if k != "INFERENCE_NUM_THREADS"}}


def openvino_fn(path: Path, config: dict[str, object]) -> Fn:
    """``path`` compiled by OpenVINO for the CPU with ``config`` (no model cache: each is a real compile)."""
    import openvino as ov

    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    return lambda batch: torch.from_numpy(request.infer({0: batch.numpy()})[0].copy())


def group_options(group: str, aoti: bool = True) -> list[str]:
    """The group's option names, the baseline first."""
    if group == "eager":
        return list(EAGER_OPTIONS)
    if group == "pt2e":
        return [name for name in PT2E_OPTIONS if aoti or name != "AOTInductor package"]
    if group == "onnxruntime":
        return list(ort_changes())
    return list(openvino_configs(1))


def build_variant(group: str, option: str, path: Path, threads: int, input_shape: list[int], arch: str) -> Fn:
    """The one variant ``option`` of ``group`` runs, on the file at ``path``."""
    if group == "eager":
        model = create_model(arch, 1000)
        model.load_state_dict(torch.load(path, weights_only=True))
        return EAGER_OPTIONS[option](model.eval())
    if group == "pt2e":
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the int8 ops the program calls)

        return PT2E_OPTIONS[option](path, torch.randn(2, *input_shape))
    if group == "onnxruntime":
        return ort_session_fn(path, threads, ort_changes()[option])
    return openvino_fn(path, openvino_configs(threads)[option])


class OptionPredictor:
    """What :class:`~modelops.model_session.ModelSession` times: one variant, under ``torch.inference_mode``."""

    backend, manifest = "option", None

    def __init__(self, fn: Fn, input_shape: list[int]) -> None:
        self.fn, self.input_shape = fn, list(input_shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.fn(batch)

    def check_input(self, batch: torch.Tensor) -> None:
        """Any batch of ``input_shape`` runs."""


class OptionSession(ModelSession):
    """Option ``option`` of ``group`` (what :func:`build_variant` builds on the group's file ``path``) in its own
    worker, with ``cache_dir`` as inductor's kernel cache of this worker alone (set before anything compiles)."""

    def __init__(self, name: str, path: str, *, group: str, option: str, threads: int, input_shape: list[int],
                 arch: str, cache_dir: str) -> None:
        super().__init__(name, path, LoadOptions(threads=threads, arch=arch))
        self.group, self.option, self.input_shape, self.threads = group, option, list(input_shape), threads
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir

    def load(self) -> dict[str, Any]:
        """Build the variant; ``load_s`` is its set-up in seconds."""
        torch.set_num_threads(self.threads)
        started = time.perf_counter()
        fn = build_variant(self.group, self.option, Path(self.path), self.threads, self.input_shape, self.options.arch)
        load_s = time.perf_counter() - started
        self.predictor = OptionPredictor(fn, self.input_shape)
        return {"load_s": load_s, "pid": os.getpid(), "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- timing


def start_group(group: str, args: argparse.Namespace, path: Path, work: Path) -> dict[str, WorkerProxy]:
    """One worker per option of ``group``, started side by side; each with its own inductor kernel cache."""
    shape = [3, args.image_size, args.image_size]
    # By its module path, so a spawned worker imports it by name also when this file runs as a script.
    session_cls = importlib.import_module("PR3_model_optimization.benchmarks.bench_backend_options").OptionSession
    sessions: dict[str, WorkerProxy] = {}
    try:
        for i, option in enumerate(group_options(group, args.aoti)):
            sessions[option] = WorkerProxy(session=session_cls, name=option, path=str(path), group=group,
                                           option=option, threads=args.threads, input_shape=shape, arch=args.arch,
                                           cache_dir=str(work / "inductor" / f"{group}-{i}"))
        wait_until_started(sessions, raise_errors=True)
    except BaseException:
        for session in sessions.values():
            session.close()
        raise
    return sessions


def fail(name: str, exc: Exception) -> None:
    """A variant that fails ends the run."""
    raise RuntimeError(f"{name}: {exc}\n{getattr(exc, 'detail', '')}") from exc


def option_rows(group: str, batch_size: int, median: Mapping[str, float], first: Mapping[str, float],
                setup: Mapping[str, float], min_gain: float) -> list[dict[str, Any]]:
    """One row per option against the group's baseline (the first name in ``median``)."""
    baseline, *options = median
    rows = []
    for name in options:
        speedup = median[baseline] / median[name]
        rows.append({
            "group": group, "batch_size": batch_size, "option": name, "baseline": baseline,
            "baseline_ms_p50": round(median[baseline], 3), "option_ms_p50": round(median[name], 3),
            "speedup": round(speedup, 3), "faster": speedup >= 1 + min_gain,
            "baseline_first_call_s": round(first[baseline], 3), "option_first_call_s": round(first[name], 3),
            "option_setup_s": round(setup[name], 2),
        })
    return rows


def compare(group: str, sessions: Mapping[str, Any], batch_sizes: list[int], rounds: int,
            min_gain: float) -> list[dict[str, Any]]:
    """Load the variants one at a time, each followed by its first call at every batch size, then time them in
    interleaved turns at each batch size; one row per option and batch size."""
    setup: dict[str, float] = {}
    first: dict[int, dict[str, float]] = {batch_size: {} for batch_size in batch_sizes}
    for name, session in sessions.items():
        try:
            setup[name] = session.load()["load_s"]
            for batch_size in batch_sizes:
                first[batch_size][name] = session.first_call(batch_size)
        except Exception as exc:
            fail(name, exc)
    rows = []
    for batch_size in batch_sizes:
        samples = time_batch(sessions, batch_size, samples=rounds, policy=POLICY, on_error=fail)
        median = {name: statistics.median(samples[name]) for name in sessions}
        rows += option_rows(group, batch_size, median, first[batch_size], setup, min_gain)
        logger.info("%s batch %d done", group, batch_size)
    return rows


def run_groups(args: argparse.Namespace, groups: list[str], batch_sizes: list[int], files: dict[str, Path],
               work: Path) -> list[dict[str, Any]]:
    """Every group of ``groups`` at every batch size, its variants in their own processes; the option rows."""
    rows: list[dict[str, Any]] = []
    for group in groups:
        sessions = start_group(group, args, files[group], work)
        try:
            label = f"{group} {'fp32' if group == 'eager' else 'int8'}"
            rows += [{"arch": args.arch, **row}
                     for row in compare(label, sessions, batch_sizes, args.rounds, args.min_gain)]
        finally:
            for session in sessions.values():
                session.close()
    return rows


def parse_groups(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """(``--groups``, ``--batch-sizes``) as lists, checked; openvino dropped (with a warning) where it cannot run."""
    batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    groups = [g.strip() for g in str(args.groups).split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise UsageError(f"Unknown --groups {', '.join(unknown) or '(none)'}. Choose from: {', '.join(GROUPS)}")
    if not batch_sizes or min(batch_sizes) < 1 or args.rounds < 1 or args.threads < 1:
        raise UsageError("--batch-sizes, --rounds and --threads must be positive")
    if "openvino" in groups and not (openvino_available() and nncf_available()):
        logger.warning("openvino or nncf is not installed: no openvino group")
        groups.remove("openvino")
    return groups, batch_sizes


def main(args: argparse.Namespace) -> dict[str, Any]:
    groups, batch_sizes = parse_groups(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.arch, 1000).eval()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_options_") as tmp:
        files = build_files(model, [3, args.image_size, args.image_size], Path(tmp), args.calibration_batches,
                            groups)
        rows = run_groups(args, groups, batch_sizes, files, Path(tmp))
    info = cpu_info()
    result = {"cpu": info["cpu_model"], "usable_cores": info["usable_cores"], "threads": args.threads,
              "arch": args.arch, "image_size": args.image_size, "rounds": args.rounds,
              "method": "per-process turns", "options": rows, "total_s": round(time.perf_counter() - started, 1)}
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
