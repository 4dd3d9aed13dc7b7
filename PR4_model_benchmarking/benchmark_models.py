"""Benchmark model artifacts side by side: latency percentiles, throughput, scenarios, memory, size, accuracy.

    python PR4_model_benchmarking/benchmark_models.py \\
        --models "original:models/resnet50.pt,quantized:models/quantized_model.pt,pruned:models/pruned_model.pt" \\
        --report-format markdown,html

Every model is loaded with ``modelops.artifact.load_artifact`` (state_dict, TorchScript, ExportedProgram,
ONNX), by default in its own worker process so that its peak memory is its own. Latency is measured in
interleaved rounds (A B C A B C ...) across the workers so that drift on a shared machine hits all
models alike. The first model is the reference for speed-up, size ratio and top-1 agreement.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from modelops.artifact import MODEL_SUFFIXES, read_manifest
from modelops.cli import check_positive, common_parser, run_cli, set_help, split_seed, usable_cores
from modelops.errors import UsageError
from modelops.timing import latency_stats
from PR4_model_benchmarking.reports import REPORT_FORMATS, to_markdown, write_reports
from PR4_model_benchmarking.runner import WorkerError, start_session
from PR4_model_benchmarking.scenarios import SCENARIOS, offline_throughput, search_server_qps, verdicts

logger = logging.getLogger(__name__)

ISOLATION_CHOICES = ("process", "none")
COMPILE_CHOICES = ("auto", "on", "off")
# (normal, --quick) defaults of the flags --quick shortens.
QUICK_DEFAULTS = {"warmup": (5, 2), "iters": (30, 8), "batch_sizes": ("1,8,32", "1,8"), "server_search_steps": (3, 1),
                  "server_max_seconds": (5.0, 2.0), "server_queries": (200, 60), "accuracy_samples": (500, 200)}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark model artifacts side by side (latency percentiles, throughput, MLPerf-style "
                    "scenarios, memory, size, accuracy) and write Markdown/HTML/CSV/JSON reports.",
        parents=[common_parser()], add_help=add_help,
    )
    parser.set_defaults(batch_size=128)
    set_help(parser, "batch_size", "batch size of the accuracy pass; timing uses --batch-sizes (default: 128)")
    models = parser.add_argument_group("models")
    models.add_argument("--models", required=True,
                        help="comma-separated NAME:PATH pairs; the first is the reference "
                             "(e.g. original:models/resnet50.pt,quantized:models/quantized_model.pt)")
    models.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile torch-backed models: auto follows each manifest (default: auto)")
    models.add_argument("--isolation", default="process", choices=ISOLATION_CHOICES,
                        help="process: each model in its own worker process, so peak memory is its own; "
                             "none: all in this process (faster start, no per-model memory) (default: process)")
    timing = parser.add_argument_group("latency")
    timing.add_argument("--batch-sizes", default=None,
                        help="comma-separated batch sizes to time (default: 1,8,32; --quick: 1,8)")
    timing.add_argument("--warmup", type=int, default=None, help="untimed calls per model and batch size "
                        "(default: 5; --quick: 2)")
    timing.add_argument("--iters", type=int, default=None,
                        help="timed rounds per batch size; each round runs every model once (default: 30; --quick: 8)")
    timing.add_argument("--min-time", type=float, default=None,
                        help="instead of --iters: keep timing until every model has run this many seconds at "
                             "each batch size (default: off)")
    timing.add_argument("--allow-spinning", action="store_true",
                        help="let idle OpenMP/ONNX Runtime threads spin-wait between calls (faster wake-up but "
                             "unfair when models take turns on shared cores) (default: off)")
    timing.add_argument("--max-iters", type=int, default=1000,
                        help="cap on rounds with --min-time (default: 1000)")
    scen = parser.add_argument_group("scenarios")
    scen.add_argument("--scenarios", default="single-stream,offline,server",
                      help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all three)")
    scen.add_argument("--target-qps", type=float, default=None,
                      help="server scenario: Poisson arrival rate (default: half of what the first model "
                           "serves at batch 1)")
    scen.add_argument("--latency-bound-ms", type=float, default=None,
                      help="server scenario: p99 bound for the max-QPS search (default: 5x the first model's "
                           "batch-1 p90)")
    scen.add_argument("--server-queries", type=int, default=None,
                      help="server scenario: queries per trial at most (default: 200; --quick: 60)")
    scen.add_argument("--server-max-seconds", type=float, default=None,
                      help="server scenario: a trial's queries are spread over about this many seconds and "
                           "may take this long again to drain (default: 5; --quick: 2)")
    scen.add_argument("--server-search-steps", type=int, default=None,
                      help="server scenario: bisection steps of the max-QPS search (default: 3; --quick: 1)")
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


def parse_int_list(value: str, flag: str) -> list[int]:
    try:
        numbers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {value!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise UsageError(f"{flag} must be positive integers, got {value!r}")
    return list(dict.fromkeys(numbers))


def parse_choices(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in chosen if x not in allowed]
    if bad or not chosen:
        raise UsageError(f"Unknown {flag} value {', '.join(bad) or repr(value)}. Choose from: {', '.join(allowed)}")
    return list(dict.fromkeys(chosen))


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags --quick shortens and check every number."""
    for key, (normal, quick) in QUICK_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else normal)
    for name in ("warmup", "accuracy_samples"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name), allow_zero=True)
    for name in ("iters", "max_iters", "min_time", "target_qps", "latency_bound_ms", "server_queries",
                 "server_max_seconds", "batch_size"):
        check_positive(f"--{name.replace('_', '-')}", getattr(args, name))
    check_positive("--server-search-steps", args.server_search_steps, allow_zero=True)
    return args


def check_inputs(models: list[tuple[str, Path]], args: argparse.Namespace) -> Any:
    """Load the dataset at the models' input size; refuse models whose manifest says another shape."""
    from modelops.data import load_dataset

    manifests = {name: read_manifest(path) for name, path in models}
    first = next((m for m in manifests.values() if m is not None), None)
    image_size = args.image_size or (first.input_shape[-1] if first else None)
    data = load_dataset(args.dataset, image_size=image_size, seed=split_seed(args, first), data_dir=args.data_dir)
    for name, path in models:
        manifest = manifests[name]
        if manifest is None:
            continue  # checked after loading, from the shape load_artifact infers
        check_shape(name, path, list(manifest.input_shape), data, args.dataset)
        if args.accuracy_samples and manifest.num_classes != data.num_classes:
            raise UsageError(f"Model {name!r} ({path}) predicts {manifest.num_classes} classes but dataset "
                             f"{args.dataset!r} has {data.num_classes}; pick the model's --dataset or pass "
                             "--accuracy-samples 0")
    return data


def check_shape(name: str, path: Path, shape: list[int], data: Any, dataset: str) -> None:
    if list(shape) != list(data.input_shape):
        raise UsageError(f"Model {name!r} ({path}) expects input {tuple(shape)} but dataset {dataset!r} gives "
                         f"{tuple(data.input_shape)}; pass a matching --dataset/--image-size or another model")


# ---------------------------------------------------------------------- the run


def environment(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    import torch

    from modelops.cpu import cpu_info

    env: dict[str, Any] = {**cpu_info(), "threads": threads, "device": args.device, "isolation": args.isolation,
                           "python": platform.python_version(), "platform": platform.platform(),
                           "torch": torch.__version__, "numpy": np.__version__}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    env["load_average_start"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return env


class Benchmark:
    """State of one run, so an interrupted run can still report what it measured."""

    def __init__(self, args: argparse.Namespace, models: list[tuple[str, Path]], data: Any) -> None:
        self.args = args
        self.models = models
        self.data = data
        self.threads = args.threads or usable_cores()
        self.batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
        self.scenarios = parse_choices(args.scenarios, SCENARIOS, "--scenarios")
        if ("single-stream" in self.scenarios or "server" in self.scenarios) and 1 not in self.batch_sizes:
            self.batch_sizes.insert(0, 1)  # both scenarios are batch-1 scenarios
        self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.env = environment(args, self.threads)
        self.sessions: dict[str, Any] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.usage_errors: dict[str, str] = {}
        self.samples: dict[str, dict[str, list[float]]] = {name: {} for name, _ in models}
        self.accuracy: dict[str, dict[str, Any]] = {}
        self.server: dict[str, dict[str, Any]] = {}
        self.memory: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.interrupted = False
        self.progress: Any = None

    # -------------------------------------------------------------- helpers
    def active(self) -> list[str]:
        return [name for name, _ in self.models if name in self.infos and name not in self.errors]

    def fail(self, name: str, exc: WorkerError) -> None:
        logger.error("model %r failed: %s", name, exc)
        if getattr(exc, "detail", ""):
            logger.debug("%s", exc.detail)
        self.errors[name] = str(exc)
        if getattr(exc, "usage", False):
            self.usage_errors[name] = str(exc)

    def _bar(self, total: int | None, desc: str) -> Any:
        from tqdm import tqdm

        if self.progress is not None:
            self.progress.close()
        self.progress = tqdm(total=total, desc=desc, disable=self.args.no_progress, leave=False, file=sys.stderr)
        return self.progress

    # -------------------------------------------------------------- phases
    def load(self) -> None:
        args = self.args
        compile_flag = {"auto": None, "on": True, "off": False}[args.compile]
        for name, path in self.models:
            self.sessions[name] = start_session(args.isolation, name=name, path=str(path), device=args.device,
                                                threads=self.threads, trust_pickle=args.trust_pickle,
                                                compile=compile_flag, seed=args.seed,
                                                allow_spinning=args.allow_spinning)
            self.sessions[name].send("load")  # workers load in parallel; a local session loads right here
        for name, path in self.models:
            try:
                self.infos[name] = self.sessions[name].receive()
            except WorkerError as exc:
                self.fail(name, exc)
                continue
            check_shape(name, path, self.infos[name]["input_shape"], self.data, args.dataset)
        if not self.active():
            first = next(iter(self.usage_errors.values()), None)
            if first and len(self.usage_errors) == len(self.models):
                raise UsageError(f"no model could be loaded: {first}")
            raise RuntimeError(f"no model could be loaded: {next(iter(self.errors.values()))}")

    def latency(self) -> None:
        args = self.args
        for batch_size in self.batch_sizes:
            names = self.active()
            bar = self._bar(None if args.min_time else args.iters * len(names), f"latency b={batch_size}")
            for name in names:
                try:
                    self.sessions[name].warmup(batch_size, args.warmup)
                except WorkerError as exc:
                    self.fail(name, exc)
            rounds = 0
            while True:
                names = [n for n in self.active() if n in names]
                if not names:
                    break
                done = [self.samples[n].get(str(batch_size), []) for n in names]
                if args.min_time:
                    if rounds >= args.max_iters or (rounds >= 3 and all(sum(d) >= args.min_time * 1e3 for d in done)):
                        break
                elif rounds >= args.iters:
                    break
                for name in names:  # one round: every model once, in order (A B C A B C ...)
                    try:
                        (ms,) = self.sessions[name].run(batch_size, 1)
                    except WorkerError as exc:
                        self.fail(name, exc)
                        continue
                    self.samples[name].setdefault(str(batch_size), []).append(round(ms, 4))
                    bar.update(1)
                rounds += 1
            bar.close()

    def evaluate(self) -> None:
        from modelops.evaluate import accuracy, top1_agreement

        if not self.args.accuracy_samples:
            return
        import torch

        names = self.active()
        bar = self._bar(len(names), "accuracy")
        reference: torch.Tensor | None = None
        for i, name in enumerate(names):
            try:
                out = self.sessions[name].predict_dataset(
                    self.args.dataset, self.data.image_size, self.data.split_seed, self.args.data_dir,
                    self.args.accuracy_samples, self.args.batch_size)
            except WorkerError as exc:
                self.fail(name, exc)
                continue
            logits, targets = torch.from_numpy(out["logits"]), torch.from_numpy(out["targets"])
            if i == 0 and name == self.models[0][0]:
                reference = logits
            self.accuracy[name] = {
                "accuracy_pct": round(accuracy(logits, targets), 3), "accuracy_samples": len(targets),
                "top1_agreement_pct": round(top1_agreement(logits, reference), 3) if reference is not None else None,
            }
            bar.update(1)
        bar.close()

    def serve(self) -> None:
        if "server" not in self.scenarios:
            return
        args = self.args
        names = [n for n in self.active() if self.samples[n].get("1")]
        if not names:
            return
        first = self.samples[names[0]]["1"]
        target = args.target_qps or 0.5 * 1e3 / float(np.mean(first))
        bound = args.latency_bound_ms or 5 * float(np.percentile(first, 90))
        bar = self._bar(len(names), f"server {target:.1f} qps")
        for name in names:
            capacity = 1e3 / float(np.mean(self.samples[name]["1"]))
            session = self.sessions[name]
            try:
                self.server[name] = search_server_qps(
                    # the queue may drain for --server-max-seconds after the last arrival, no longer
                    lambda arrivals, s=session: s.serve(arrivals.tolist(),
                                                        float(arrivals[-1]) + args.server_max_seconds),
                    target_qps=target, capacity_qps=capacity, bound_ms=bound, steps=args.server_search_steps,
                    max_queries=args.server_queries, max_seconds=args.server_max_seconds, seed=args.seed)
            except WorkerError as exc:
                self.fail(name, exc)
            bar.update(1)
        bar.close()

    def collect_memory(self) -> None:
        for name in self.active():
            try:
                self.memory[name] = self.sessions[name].memory()
            except WorkerError as exc:
                self.fail(name, exc)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        for session in self.sessions.values():
            session.close()

    # -------------------------------------------------------------- results
    def per_batch(self) -> list[dict[str, Any]]:
        rows = []
        for name, _ in self.models:
            for b, values in self.samples[name].items():
                if not values:
                    continue
                stats = latency_stats(values)
                rows.append({"model": name, "batch_size": int(b), "iters": len(values), **stats,
                             "samples_per_s": round(int(b) * 1e3 / stats["latency_ms_mean"], 3)})
        return rows

    def summary_rows(self, per_batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        primary = self.batch_sizes[0]
        rows: list[dict[str, Any]] = []
        for name, path in self.models:
            info = self.infos.get(name, {})
            batches = [r for r in per_batch if r["model"] == name]
            at_primary = next((r for r in batches if r["batch_size"] == primary), {})
            at_one = next((r for r in batches if r["batch_size"] == 1), {})
            best, best_b = offline_throughput(batches)
            memory = self.memory.get(name, {})
            params, macs = info.get("params"), info.get("macs")
            row: dict[str, Any] = {
                "model": name, "path": str(path), "format": info.get("format"), "backend": info.get("backend"),
                "arch": info.get("arch"), "transform": info.get("transform"), "size_mb": info.get("size_mb"),
                "params_m": round(params / 1e6, 4) if params else None,
                "macs_m": round(macs / 1e6, 3) if macs else None,
                **self.accuracy.get(name, {}),
                "batch_size": primary,
                **{k: at_primary.get(k) for k in ("latency_ms_mean", "latency_ms_std", "latency_ms_p50",
                                                  "latency_ms_p90", "latency_ms_p95", "latency_ms_p99")},
                "best_samples_per_s": best, "best_batch_size": best_b,
            }
            if "single-stream" in self.scenarios:
                row["single_stream_latency_ms_p90"] = at_one.get("latency_ms_p90")
            if "offline" in self.scenarios:
                row["offline_samples_per_s"], row["offline_batch_size"] = best, best_b
            if name in self.server:
                row.update({k: v for k, v in self.server[name].items() if k != "trials"})
            if self.args.isolation == "process" and memory:
                row["peak_rss_mb"] = memory.get("peak_rss_mb")
                row["model_rss_mb"] = round(memory["peak_rss_mb"] - info.get("rss_baseline_mb", 0.0), 1)
            if "cuda_max_allocated_mb" in memory:
                row["cuda_max_allocated_mb"] = memory["cuda_max_allocated_mb"]
            row["load_s"] = info.get("load_s")
            row["error"] = self.errors.get(name)
            rows.append(row)
        ref = rows[0] if rows else {}
        for row in rows:
            ok = not ref.get("error") and not row.get("error")
            row["speedup_x"] = (round(ref["latency_ms_p50"] / row["latency_ms_p50"], 3)
                                if ok and ref.get("latency_ms_p50") and row.get("latency_ms_p50") else None)
            row["size_ratio"] = (round(row["size_mb"] / ref["size_mb"], 4)
                                 if ok and ref.get("size_mb") and row.get("size_mb") else None)
            row["accuracy_delta_pt"] = (round(row["accuracy_pct"] - ref["accuracy_pct"], 3)
                                        if ok and ref.get("accuracy_pct") is not None
                                        and row.get("accuracy_pct") is not None else None)
        for row, word in zip(rows, verdicts(rows, accuracy_tolerance_pt=self.args.accuracy_tolerance), strict=True):
            row["verdict"] = word
        return rows

    def report(self) -> dict[str, Any]:
        args = self.args
        per_batch = self.per_batch()
        env = dict(self.env)
        env["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        notes = [
            f"Latency: {args.warmup} warm-up calls, then "
            + (f"rounds until each model ran {args.min_time} s" if args.min_time else f"{args.iters} rounds")
            + " per batch size; each round runs every model once in order (A B C A B C ...).",
            "Inputs for timing are seeded random tensors of each model's input shape (timing does not depend "
            "on pixel values); accuracy uses the first "
            f"{args.accuracy_samples} samples of the {args.dataset!r} test split.",
            "Each model ran in its own worker process: peak_rss_mb is that process's peak (Python + torch + "
            "the model), model_rss_mb its rise over the process before loading the model."
            if args.isolation == "process" else
            "All models ran in this process (--isolation none): no per-model memory figure.",
            "Server scenario: Poisson arrivals, one FIFO server, latency = completion - arrival; models run "
            "one after another (a real-time queue cannot be interleaved).",
        ]
        if env.get("load_average_start") and env["load_average_start"] > 0.5 * env.get("usable_cores", 1):
            notes.append(f"The machine was busy (load average {env['load_average_start']} on "
                         f"{env.get('usable_cores')} cores): compare ratios, not absolute times.")
        return {
            "tool": "PR4_model_benchmarking/benchmark_models.py", "created_at": self.created_at,
            "interrupted": self.interrupted, "environment": env,
            "config": {"models": [f"{n}:{p}" for n, p in self.models], "batch_sizes": self.batch_sizes,
                       "primary_batch_size": self.batch_sizes[0], "scenarios": self.scenarios,
                       "warmup": args.warmup, "iters": args.iters, "min_time_s": args.min_time,
                       "dataset": args.dataset, "image_size": self.data.image_size,
                       "accuracy_samples": args.accuracy_samples, "threads": self.threads,
                       "device": args.device, "isolation": args.isolation, "seed": args.seed},
            "models": self.summary_rows(per_batch), "per_batch": per_batch, "samples_ms": self.samples,
            "server": self.server, "notes": notes + self.notes,
        }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Check the inputs, measure every model, write the reports; ``{"reports", "models", "output_dir"}``."""
    args = resolve_args(args)
    formats = parse_choices(args.report_format, REPORT_FORMATS, "--report-format")
    models = parse_models(args.models)
    parse_int_list(args.batch_sizes, "--batch-sizes")
    parse_choices(args.scenarios, SCENARIOS, "--scenarios")
    data = check_inputs(models, args)
    bench = Benchmark(args, models, data)
    try:
        bench.load()
        bench.latency()
        bench.evaluate()
        bench.serve()
        bench.collect_memory()
    except KeyboardInterrupt:
        bench.interrupted = True
        logger.warning("interrupted: writing the reports with what was measured")
        if bench.infos:
            write_reports(bench.report(), args.output_dir, formats)
        raise
    finally:
        bench.close()
    report = bench.report()
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
