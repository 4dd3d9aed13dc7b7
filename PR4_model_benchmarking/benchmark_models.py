"""Benchmark model artifacts side by side: latency, throughput, MLPerf scenarios on LoadGen, memory, size, accuracy.

    python PR4_model_benchmarking/benchmark_models.py \\
        --models "original:models/resnet50.pt,quantized:models/quantized_model.pt,pruned:models/pruned_model.pt" \\
        --report-format markdown,html

Every model is loaded with ``modelops.artifact.load_artifact`` (state_dict, TorchScript, ExportedProgram,
ONNX), by default in its own worker process so that its memory is its own. Latency is measured in
interleaved turns across the workers (``modelops.timing.run_turns``, the project's one timing method) so that
drift on a shared machine hits all models alike; every runtime keeps its default threading. The first model
is the reference for speed-up, size ratio and top-1 agreement. The MLPerf scenarios (single-stream,
multi-stream, offline, server) are run by MLPerf LoadGen inside each model's process, model after model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from modelops.artifact import MODEL_SUFFIXES, read_manifest
from modelops.cli import check_positive, common_parser, load_options, run_cli, set_help, split_seed, usable_cores
from modelops.errors import UsageError
from modelops.timing import POLICY, TimingPolicy
from PR4_model_benchmarking.bench_settings import BenchmarkSettings, LoadGenSettings
from PR4_model_benchmarking.loadgen_phase import LOADGEN_MODES
from PR4_model_benchmarking.measure import (
    NO_DATASET,
    Benchmark,
    check_shape,
    parse_choices,
    parse_int_list,
    parse_scenarios,
)
from PR4_model_benchmarking.reports import REPORT_FORMATS, to_markdown, write_reports
from PR4_model_benchmarking.scenarios import DEFAULT_SCENARIOS, P99_EARLY_STOPPING_QUERIES, SCENARIOS

logger = logging.getLogger(__name__)

ISOLATION_CHOICES = ("process", "none")
COMPILE_CHOICES = ("auto", "on", "off")
# (normal, --quick) defaults of the flags --quick shortens.
QUICK_DEFAULTS = {"warmup": (POLICY.warmup, 2), "iters": (30, 8), "batch_sizes": ("1,16", "1,16"),
                  "server_search_runs": (5, 2), "server_search_seconds": (300.0, 60.0), "accuracy_samples": (500, 200),
                  "min_duration_ms": (None, 1000)}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark model artifacts side by side (latency percentiles, throughput, MLPerf scenarios "
                    "run by MLPerf LoadGen, memory, size, accuracy) and write Markdown/HTML/CSV/JSON reports.",
        parents=[common_parser()], add_help=add_help,
    )
    parser.set_defaults(batch_size=128, dataset=None)
    set_help(parser, "batch_size", "batch size of the accuracy pass; timing uses --batch-sizes (default: 128)")
    set_help(parser, "dataset", "dataset of the accuracy pass (default: the first manifest's; where neither names "
                                "one, speed only: accuracy is not measured)")
    models = parser.add_argument_group("models")
    models.add_argument("--models", required=True,
                        help="comma-separated NAME:PATH pairs; the first is the reference "
                             "(e.g. original:models/resnet50.pt,quantized:models/quantized_model.pt)")
    models.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile torch-backed models: auto follows each manifest (default: auto)")
    models.add_argument("--isolation", default="process", choices=ISOLATION_CHOICES,
                        help="process: each model in its own worker process, so peak memory is its own; "
                             "none: all in this process (faster start, no per-model memory) (default: process)")
    add_timing_flags(parser)
    quality = parser.add_argument_group("accuracy")
    quality.add_argument("--accuracy-samples", type=int, default=None,
                         help="test-split samples for accuracy and top-1 agreement, 0 to skip; -b sets the "
                              "batch size of this pass (default: 500; --quick: 200)")
    quality.add_argument("--accuracy-tolerance", type=float, default=1.0,
                         help="accuracy points a model may lose before its verdict is 'worse' (default: 1.0)")
    out = parser.add_argument_group("output")
    out.add_argument("--report-format", default="markdown,json",
                     help=f"comma-separated subset of {', '.join(REPORT_FORMATS)} (default: markdown,json)")
    out.add_argument("--output-dir", default="runs/benchmark", help="where reports go (default: runs/benchmark)")
    out.add_argument("--quick", action="store_true",
                     help="short run: fewer warm-up calls, rounds, batch sizes and server trials (default: off)")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    return parser


def add_timing_flags(parser: argparse.ArgumentParser) -> None:
    """The latency and scenario flags (shared by the benchmark's parser and scripts built on it)."""
    timing = parser.add_argument_group("latency")
    timing.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes to time; the first is the summary's (default: 1,16)")
    timing.add_argument("--warmup", type=int, default=None, help="untimed calls per model and batch size "
                        f"(default: {POLICY.warmup}; --quick: 2)")
    timing.add_argument("--iters", type=int, default=None,
                        help="timed calls per model and batch size (default: 30; --quick: 8)")
    timing.add_argument("--calls-per-turn", type=int, default=POLICY.calls_per_turn,
                        help=f"timed calls back to back in one model's turn (default: {POLICY.calls_per_turn})")
    timing.add_argument("--untimed-per-turn", type=int, default=POLICY.untimed_per_turn,
                        help=f"untimed calls that open each turn (default: {POLICY.untimed_per_turn})")
    timing.add_argument("--settle-ms", type=float, default=POLICY.settle_s * 1e3,
                        help=f"pause before each turn (default: {POLICY.settle_s * 1e3:g})")
    timing.add_argument("--min-time", type=float, default=None,
                        help="instead of --iters: keep timing until every model has run this many seconds at "
                             "each batch size (default: off)")
    timing.add_argument("--max-iters", type=int, default=1000,
                        help="cap on rounds with --min-time (default: 1000)")
    scen = parser.add_argument_group("scenarios (run by MLPerf LoadGen)")
    scen.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                      help=f"comma-separated subset of {', '.join(SCENARIOS)}, or none (default: "
                           f"{','.join(DEFAULT_SCENARIOS)})")
    scen.add_argument("--loadgen-mode", default="performance", choices=LOADGEN_MODES,
                      help="performance: LoadGen's PerformanceOnly runs of --scenarios; accuracy: one AccuracyOnly "
                           "run (offline, every sample once, top-1 scored from LoadGen's accuracy log; needs a "
                           "dataset); both (default: performance)")
    scen.add_argument("--min-duration-ms", type=int, default=None,
                      help="LoadGen's minimum run duration (default: LoadGen's, 10000; --quick: 1000)")
    scen.add_argument("--min-query-count", type=int, default=None,
                      help="LoadGen's minimum query count (default: LoadGen's, 100; multi-stream and server: "
                           f"{P99_EARLY_STOPPING_QUERIES}, what early stopping needs for a 99th percentile)")
    scen.add_argument("--max-duration-ms", type=int, default=None,
                      help="LoadGen stops issuing queries after this long (default: LoadGen's, no limit)")
    scen.add_argument("--qsl-samples", type=int, default=128,
                      help="inputs in LoadGen's query sample library: the first N test images with a dataset, "
                           "else seeded random inputs (default: 128)")
    scen.add_argument("--loadgen-accuracy-samples", type=int, default=None,
                      help="test images in the LoadGen accuracy run (default: --accuracy-samples)")
    scen.add_argument("--offline-batch-size", type=int, default=None,
                      help="offline: samples per model call (default: each model's fastest timed batch size)")
    scen.add_argument("--multi-stream-samples", type=int, default=None,
                      help="multi-stream: samples per query (default: LoadGen's, 8)")
    scen.add_argument("--target-qps", type=float, default=None,
                      help="server: the first rate the search tries (default: half of what the first model "
                           "serves at batch 1)")
    scen.add_argument("--latency-bound-ms", type=float, default=None,
                      help="server: LoadGen's bound on the 99th percentile latency (default: 5x the first model's "
                           "batch-1 p90)")
    scen.add_argument("--server-search-runs", type=int, default=None,
                      help="server: LoadGen runs per model in the search for the highest VALID rate "
                           "(default: 5; --quick: 2)")
    scen.add_argument("--server-search-seconds", type=float, default=None,
                      help="server: the search starts no run (after the first) that would end after this many "
                           "seconds per model (default: 300; --quick: 60)")


# ---------------------------------------------------------------------- argument checks


def parse_models(spec: str) -> list[tuple[str, Path]]:
    """``"a:x.pt,b:y.onnx"`` -> [("a", Path("x.pt")), ...]; malformed, duplicate or missing -> UsageError."""
    entries = [e.strip() for e in (spec or "").split(",") if e.strip()]
    if not entries:
        raise UsageError("--models is empty: give NAME:PATH pairs, e.g. original:models/resnet50.pt")
    models: list[tuple[str, Path]] = []
    for entry in entries:
        name, sep, path = entry.partition(":")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"Malformed --models entry {entry!r}: expected NAME:PATH, "
                             "e.g. original:models/resnet50.pt")
        if any(name == other for other, _ in models):
            raise UsageError(f"Duplicate model name {name!r} in --models: each NAME must be unique")
        file = Path(path)
        if file.suffix not in MODEL_SUFFIXES:
            raise UsageError(f"Model {name!r}: {path} has extension {file.suffix!r}; model artifacts end in "
                             f"{', '.join(MODEL_SUFFIXES)}")
        if not file.is_file():
            raise UsageError(f"Model {name!r}: file {path} does not exist")
        models.append((name, file))
    return models


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with the flags --quick shortens filled, every number checked (``args`` stays as parsed)."""
    filled = {key: quick if args.quick else normal for key, (normal, quick) in QUICK_DEFAULTS.items()
              if getattr(args, key) is None}
    args = argparse.Namespace(**{**vars(args), **filled})
    for name in ("warmup", "accuracy_samples", "untimed_per_turn", "settle_ms"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name), allow_zero=True)
    for name in ("iters", "calls_per_turn", "max_iters", "min_time", "target_qps", "latency_bound_ms",
                 "server_search_runs", "server_search_seconds", "batch_size", "min_duration_ms", "min_query_count",
                 "max_duration_ms", "qsl_samples", "offline_batch_size", "multi_stream_samples"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive("--loadgen-accuracy-samples", args.loadgen_accuracy_samples, allow_zero=True)
    return args


def run_dataset(models: list[tuple[str, Path]], args: argparse.Namespace) -> str | None:
    """The dataset of the run: ``--dataset``, else the first manifest's that names one, else None (speed only)."""
    manifests = [m for _, path in models if (m := read_manifest(path)) is not None]
    return args.dataset or next((m.dataset for m in manifests if m.dataset), None)


def check_inputs(models: list[tuple[str, Path]], args: argparse.Namespace, dataset: str | None,
                 accuracy_samples: int) -> Any:
    """Load ``dataset`` at the models' input size; refuse models whose manifest says another shape.

    With no ``dataset`` (no ``--dataset`` and no manifest that names one), there is nothing to load: the run is
    speed-only (``None``), each model timed on inputs of its own shape and its accuracy marked :data:`NO_DATASET`.
    """
    from modelops.cli import load_model_dataset
    from modelops.data import load_dataset

    manifests = {name: read_manifest(path) for name, path in models}
    first = next((m for m in manifests.values() if m is not None), None)
    if dataset is None:
        logger.info("timing only, accuracy %s (pass --dataset to measure it)", NO_DATASET)
        return None
    image_size = args.image_size or (first.input_shape[-1] if first else None)
    if first is not None:  # fake data takes the model's class count and size; --preprocessing, --labels apply
        data = load_model_dataset(args, first, dataset=dataset)
    else:
        data = load_dataset(dataset, image_size=image_size, seed=split_seed(args, first), data_dir=args.data_dir)
    for name, path in models:
        manifest = manifests[name]
        if manifest is None:
            continue  # checked after loading, from the shape load_artifact infers
        check_shape(name, path, list(manifest.input_shape), data, dataset)
        if accuracy_samples and manifest.num_classes != data.num_classes:
            raise UsageError(f"Model {name!r} ({path}) predicts {manifest.num_classes} classes but dataset "
                             f"{dataset!r} has {data.num_classes}; pick the model's --dataset or pass "
                             "--accuracy-samples 0")
    return data


def benchmark_settings(args: argparse.Namespace, dataset: str | None, accuracy_samples: int) -> BenchmarkSettings:
    """The run's :class:`BenchmarkSettings` from the resolved flags (see :func:`resolve_args`)."""
    compile_flag = {"auto": None, "on": True, "off": False}[args.compile]
    loadgen = LoadGenSettings(
        mode=args.loadgen_mode, qsl_samples=args.qsl_samples,
        accuracy_samples=accuracy_samples if args.loadgen_accuracy_samples is None else args.loadgen_accuracy_samples,
        target_qps=args.target_qps, latency_bound_ms=args.latency_bound_ms, min_duration_ms=args.min_duration_ms,
        min_query_count=args.min_query_count, max_duration_ms=args.max_duration_ms,
        offline_batch_size=args.offline_batch_size, multi_stream_samples=args.multi_stream_samples,
        server_search_runs=args.server_search_runs, server_search_seconds=args.server_search_seconds)
    return BenchmarkSettings(
        load=load_options(args, threads=args.threads or usable_cores(), compile=compile_flag),
        isolation=args.isolation, seed=args.seed,
        policy=TimingPolicy(warmup=args.warmup, calls_per_turn=args.calls_per_turn,
                            untimed_per_turn=args.untimed_per_turn, settle_s=args.settle_ms / 1e3),
        batch_sizes=tuple(parse_int_list(args.batch_sizes, "--batch-sizes")),
        scenarios=tuple(parse_scenarios(args.scenarios)), iters=args.iters, min_time=args.min_time,
        max_iters=args.max_iters, dataset=dataset, data_dir=args.data_dir, batch_size=args.batch_size,
        accuracy_samples=accuracy_samples, accuracy_tolerance=args.accuracy_tolerance,
        output_dir=args.output_dir, show_progress=not args.no_progress, loadgen=loadgen)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Check the inputs, measure every model, write the reports; ``{"reports", "models", "output_dir"}``."""
    args = resolve_args(args)
    formats = parse_choices(args.report_format, REPORT_FORMATS, "--report-format")
    models = parse_models(args.models)
    parse_int_list(args.batch_sizes, "--batch-sizes")
    parse_scenarios(args.scenarios)
    dataset = run_dataset(models, args)
    accuracy_samples = args.accuracy_samples if dataset is not None else 0
    data = check_inputs(models, args, dataset, accuracy_samples)
    settings = benchmark_settings(args, dataset, accuracy_samples)
    if settings.loadgen.mode != "performance" and (data is None or not settings.loadgen.accuracy_samples):
        raise UsageError(f"--loadgen-mode {args.loadgen_mode} scores LoadGen's accuracy log against a dataset's "
                         "labels: pass --dataset and a positive --loadgen-accuracy-samples, or use performance")
    bench = Benchmark(settings, models, data)
    try:
        bench.load()
        bench.latency()
        bench.evaluate()
        bench.scenarios_phase()
    except KeyboardInterrupt:
        bench.interrupted = True
        logger.warning("interrupted: writing the reports with what was measured")
        if bench.infos:
            write_reports(bench.report().model_dump(exclude_unset=True), args.output_dir, formats)
        raise
    finally:
        bench.close()
    # Built through the pydantic model (a bad row fails here); the writers and callers take the dict, with the
    # keys each row was given (a figure a run did not measure stays absent, not null).
    report = bench.report().model_dump(exclude_unset=True)
    paths = write_reports(report, args.output_dir, formats)
    if all(row.get("error") for row in report["models"]):
        raise RuntimeError(f"every model failed; reports in {args.output_dir}")
    return {"reports": paths, "models": report["models"], "output_dir": str(args.output_dir), "report": report}


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = run_benchmark(args)
    print(to_markdown(result["report"]).split("## Latency and throughput")[0].rstrip())
    for fmt, path in result["reports"].items():
        logger.info("%s report: %s", fmt, path)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
