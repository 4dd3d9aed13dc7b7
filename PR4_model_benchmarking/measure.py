"""One benchmark run's phases: load every model, time them in turns, accuracy, LoadGen scenarios, the report.

:class:`Benchmark` keeps what each phase measured, so an interrupted run can still report it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modelops.errors import UsageError
from modelops.model_process import WorkerError, start_session, time_batch
from PR4_model_benchmarking.bench_settings import BenchmarkSettings
from PR4_model_benchmarking.loadgen_phase import ModelSpeed, ScenarioPlan, run_model_scenarios, scenario_fields
from PR4_model_benchmarking.report_schema import BenchmarkReport
from PR4_model_benchmarking.runner import BenchSession
from PR4_model_benchmarking.scenarios import P99_EARLY_STOPPING_QUERIES, P99_SCENARIOS, SCENARIOS
from PR4_model_benchmarking.summary import add_comparisons, headline, model_row, per_batch_rows

# What a speed-only run (no --dataset, no manifest naming one) says in place of accuracy.
NO_DATASET = "not measured: no dataset given and none in a manifest"

logger = logging.getLogger(__name__)


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


def parse_scenarios(value: str) -> list[str]:
    """``--scenarios``: a comma list of :data:`SCENARIOS`, or ``none`` for no LoadGen performance run."""
    return [] if value.strip() == "none" else parse_choices(value, SCENARIOS, "--scenarios")


def check_shape(name: str, path: Path, shape: list[int], data: Any, dataset: str) -> None:
    if list(shape) != list(data.input_shape):
        raise UsageError(f"Model {name!r} ({path}) expects input {tuple(shape)} but dataset {dataset!r} gives "
                         f"{tuple(data.input_shape)}; pass a matching --dataset/--image-size or another model")


def environment(settings: BenchmarkSettings, threads: int) -> dict[str, Any]:
    """Where the run happened: CPU and its int8 features, threads, versions, load, any wait-policy setting."""
    import torch

    from modelops.cpu import cpu_info

    env: dict[str, Any] = {**cpu_info(), "threads": threads, "device": settings.load.device,
                           "isolation": settings.isolation,
                           "python": platform.python_version(), "platform": platform.platform(),
                           "torch": torch.__version__, "numpy": np.__version__,
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    try:
        env["loadgen"] = importlib.metadata.version("mlcommons-loadgen")
    except importlib.metadata.PackageNotFoundError:
        env["loadgen"] = None
    env["load_average_start"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return env


class Benchmark:
    """State of one run, so an interrupted run can still report what it measured."""

    def __init__(self, settings: BenchmarkSettings, models: list[tuple[str, Path]], data: Any) -> None:
        self.settings = settings
        self.models = models
        self.data = data
        self.threads = settings.load.threads
        self.policy = settings.policy
        self.batch_sizes = list(settings.batch_sizes)
        self.scenarios = list(settings.scenarios)
        if ("single-stream" in self.scenarios or "server" in self.scenarios) and 1 not in self.batch_sizes:
            self.batch_sizes.insert(0, 1)  # both size their LoadGen runs from the batch-1 latency
        self.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.env = environment(settings, self.threads)
        self.sessions: dict[str, Any] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.usage_errors: dict[str, str] = {}
        self.samples: dict[str, dict[str, list[float]]] = {name: {} for name, _ in models}
        self.memory: dict[str, dict[str, dict[str, Any]]] = {name: {} for name, _ in models}
        self.accuracy: dict[str, dict[str, Any]] = {}
        self.loadgen: dict[str, dict[str, Any]] = {}
        self.plan: ScenarioPlan | None = None
        self.notes: list[str] = []
        self.interrupted = False
        self.progress: Any = None

    # -------------------------------------------------------------- helpers
    def active(self) -> list[str]:
        return [name for name, _ in self.models if name in self.infos and name not in self.errors]

    def fail(self, name: str, exc: Exception) -> None:
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
        self.progress = tqdm(total=total, desc=desc, disable=not self.settings.show_progress, leave=False,
                             file=sys.stderr)
        return self.progress

    # -------------------------------------------------------------- phases
    def load(self) -> None:
        settings = self.settings
        for name, path in self.models:
            self.sessions[name] = start_session(settings.isolation, name, path, settings.load, session=BenchSession,
                                                seed=settings.seed)
            self.sessions[name].send("load")  # workers load in parallel; a local session loads right here
        for name, path in self.models:
            try:
                self.infos[name] = self.sessions[name].receive()
            except WorkerError as exc:
                self.fail(name, exc)
                continue
            if self.data is not None:  # speed-only runs time each model on its own input shape
                check_shape(name, path, self.infos[name]["input_shape"], self.data, settings.dataset)
        if not self.active():
            first = next(iter(self.usage_errors.values()), None)
            if first and len(self.usage_errors) == len(self.models):
                raise UsageError(f"no model could be loaded: {first}")
            raise RuntimeError(f"no model could be loaded: {next(iter(self.errors.values()))}")

    def latency(self) -> None:
        """Every batch size in turn: each model's input and peak-memory window, then interleaved turns."""
        settings = self.settings
        for batch_size in self.batch_sizes:
            names = self.active()
            bar = self._bar(None if settings.min_time else settings.iters * len(names), f"latency b={batch_size}")
            taken = time_batch(
                {n: self.sessions[n] for n in names}, batch_size, 3 if settings.min_time else settings.iters,
                self.policy, on_error=self.fail, enough=self._ran_min_time if self.settings.min_time else None,
                max_samples=self.settings.max_iters if self.settings.min_time else None,
                on_turn=lambda _name, count, bar=bar: bar.update(count))
            bar.close()
            for name, values in taken.items():
                if values:
                    self.samples[name][str(batch_size)] = [round(ms, 4) for ms in values]
            for name in self.active():
                if self.settings.isolation == "process" or self.settings.load.device != "cpu":
                    self.memory[name][str(batch_size)] = self.sessions[name].batch_memory()

    def _ran_min_time(self, taken: dict[str, list[float]]) -> bool:
        return all(sum(values) >= self.settings.min_time * 1e3 for values in taken.values() if values)

    def evaluate(self) -> None:
        if not self.settings.accuracy_samples:
            return
        import torch

        from modelops.evaluate import accuracy, top1_agreement

        names = self.active()
        bar = self._bar(len(names), "accuracy")
        reference: torch.Tensor | None = None
        for i, name in enumerate(names):
            try:
                out = self.sessions[name].predict_dataset(
                    self.settings.dataset, self.data.image_size, self.data.split_seed, self.settings.data_dir,
                    self.settings.accuracy_samples, self.settings.batch_size)
            except WorkerError as exc:
                self.fail(name, exc)
                continue
            logits, targets = torch.from_numpy(out["logits"]), torch.from_numpy(out["targets"])
            if i == 0 and name == self.models[0][0]:
                reference = logits
            self.accuracy[name] = {
                "top1_pct": round(accuracy(logits, targets), 3), "accuracy_samples": len(targets),
                "top1_agreement_pct": round(top1_agreement(logits, reference), 3) if reference is not None else None,
            }
            bar.update(1)
        bar.close()

    def plan_scenarios(self) -> ScenarioPlan | None:
        """The LoadGen phase's plan; None when neither a scenario nor an accuracy run is wanted."""
        settings = self.settings
        lg = settings.loadgen
        names = [n for n in self.active() if self.samples[n]]
        if not names or (settings.loadgen.mode == "performance" and not self.scenarios):
            return None
        first = self.samples[names[0]].get("1")
        qps = settings.loadgen.target_qps or (round(0.5 * 1e3 / float(np.mean(first)), 3) if first else None)
        bound = settings.loadgen.latency_bound_ms or (round(5 * float(np.percentile(first, 90)), 3) if first else None)
        samples: dict[str, Any] = {"count": settings.loadgen.qsl_samples}
        accuracy = None
        if self.data is not None:
            dataset = {"dataset": settings.dataset, "image_size": self.data.image_size,
                       "split_seed": self.data.split_seed, "data_dir": settings.data_dir}
            samples = {**dataset, "count": min(settings.loadgen.qsl_samples, len(self.data.test))}
            if settings.loadgen.accuracy_samples:
                accuracy = {**dataset, "count": min(settings.loadgen.accuracy_samples, len(self.data.test))}
        return ScenarioPlan(
            scenarios=tuple(self.scenarios), mode=lg.mode, out_dir=Path(settings.output_dir), samples=samples,
            accuracy_samples=accuracy, min_duration_ms=lg.min_duration_ms, min_query_count=lg.min_query_count,
            max_duration_ms=lg.max_duration_ms, offline_batch_size=lg.offline_batch_size,
            multi_stream_samples=lg.multi_stream_samples, server_qps=qps, server_bound_ms=bound,
            search_runs=lg.server_search_runs, search_seconds=lg.server_search_seconds)

    def speed(self, name: str) -> ModelSpeed:
        per = self.samples[name]
        means = {int(b): float(np.mean(v)) for b, v in per.items() if v}
        best = max(means, key=lambda b: b * 1e3 / means[b], default=None)
        return ModelSpeed(batch1_mean_ms=means.get(1), best_samples_per_s=best * 1e3 / means[best] if best else None,
                          best_batch_size=best, mean_ms=means)

    def scenarios_phase(self) -> None:
        """Each model's LoadGen scenarios, one model after another (a real-time run cannot be interleaved)."""
        self.plan = self.plan_scenarios()
        if self.plan is None:
            return
        names = [n for n in self.active() if self.samples[n]]
        bar = self._bar(len(names), "LoadGen")
        for name in names:
            try:
                self.loadgen[name] = run_model_scenarios(self.sessions[name], name, self.plan, self.speed(name),
                                                         on_run=bar.set_description)
            except WorkerError as exc:
                self.fail(name, exc)
            bar.update(1)
        bar.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        for session in self.sessions.values():
            session.close()

    # -------------------------------------------------------------- results
    def summary_rows(self, per_batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name, path in self.models:
            batches = [r for r in per_batch if r["model"] == name]
            row = model_row(name, str(path), self.infos.get(name, {}), batches, primary=self.batch_sizes[0],
                            isolated=self.settings.isolation == "process")
            row.update(self.accuracy.get(name, {}))
            if name in self.loadgen:
                row.update(scenario_fields(self.loadgen[name]))
            row["error"] = self.errors.get(name)
            rows.append(row)
        return add_comparisons(rows, self.settings.accuracy_tolerance, primary=self.batch_sizes[0])

    def notes_text(self) -> list[str]:
        settings, policy = self.settings, self.policy
        stop = (f"rounds until each model ran {settings.min_time} s" if settings.min_time
                else f"{settings.iters} timed calls")
        return [
            f"Latency: {policy.warmup} warm-up calls per model, then {stop} per batch size, taken in turns "
            f"({policy.settle_s * 1e3:.0f} ms pause, {policy.untimed_per_turn} untimed and up to "
            f"{policy.calls_per_turn} timed calls per turn); every runtime with its default threading.",
            "Inputs for timing are seeded random tensors of each model's input shape; "
            + (f"accuracy uses the first {settings.accuracy_samples} samples of the {settings.dataset!r} test split, "
               "after timing and memory." if self.data is not None else f"accuracy: {NO_DATASET}."),
            "Memory: weights_mb is the weights' bytes in memory; each model ran in its own process, model_rss_mb "
            "is that process's peak RSS while timing over its RSS with only the runtimes imported."
            if settings.isolation == "process" else
            "All models ran in this process (--isolation none): weights only, no per-model RSS figure.",
            *self.loadgen_notes(),
        ]

    def loadgen_notes(self) -> list[str]:
        plan = self.plan
        if plan is None:
            return []
        inputs = (f"the first {plan.samples['count']} images of the {plan.samples['dataset']!r} test split"
                  if plan.samples.get("dataset") else f"{plan.samples['count']} seeded random inputs")
        asked = {"minimum duration (ms)": plan.min_duration_ms, "minimum query count": plan.min_query_count,
                 "maximum duration (ms)": plan.max_duration_ms}
        changed = ", ".join(f"{k} {v}" for k, v in asked.items() if v is not None) or "none"
        notes = [
            f"Scenarios ({', '.join(plan.scenarios) or 'accuracy only'}) are run by MLPerf LoadGen in each model's "
            f"own process with the threads of its latency figures, one model after another; LoadGen's query sample "
            f"library holds {inputs}. LoadGen's settings are its defaults except: {changed}. Each run's settings "
            "are in its mlperf_log_detail.txt.",
            "VALID/INVALID is LoadGen's verdict: minimum duration and query count met, early stopping satisfied "
            "and, in the server scenario, the 99th percentile latency under the bound. A server range is the "
            "highest rate LoadGen called VALID and the lowest it called INVALID among the rates tried.",
        ]
        if plan.min_query_count is None and set(plan.scenarios) & set(P99_SCENARIOS):
            notes.append(f"Multi-stream and server runs ask for at least {P99_EARLY_STOPPING_QUERIES} queries, what "
                         "LoadGen's early stopping needs to estimate a 99th percentile at all.")
        return notes

    def plan_config(self) -> dict[str, Any] | None:
        if self.plan is None:
            return None
        plan = self.plan
        return {"scenarios": list(plan.scenarios), "mode": plan.mode, "samples": plan.samples,
                "accuracy_samples": plan.accuracy_samples,
                "run_length": {s: plan.length(s) for s in plan.scenarios},
                "offline_batch_size": plan.offline_batch_size, "multi_stream_samples": plan.multi_stream_samples,
                "server_first_qps": plan.server_qps, "server_latency_bound_ms": plan.server_bound_ms,
                "server_search_runs": plan.search_runs, "server_search_seconds": plan.search_seconds}

    def report(self) -> BenchmarkReport:
        """What was measured so far as a :class:`BenchmarkReport` (a row that does not fit it fails here);
        ``report().model_dump(exclude_unset=True)`` is the dict the report writers take."""
        settings = self.settings
        per_batch = per_batch_rows(self.samples, self.memory, self.models[0][0])
        models = self.summary_rows(per_batch)
        env = dict(self.env)
        env["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        notes = self.notes_text()
        if env.get("load_average_start") and env["load_average_start"] > 0.5 * env.get("usable_cores", 1):
            notes.append(f"The machine was busy (load average {env['load_average_start']} on "
                         f"{env.get('usable_cores')} cores): compare ratios, not absolute times.")
        return BenchmarkReport(
            tool="PR4_model_benchmarking/benchmark_models.py", created_at=self.created_at,
            interrupted=self.interrupted, environment=env,
            headline=headline(models, env, settings.accuracy_tolerance, primary=self.batch_sizes[0]),
            config={"models": [f"{n}:{p}" for n, p in self.models], "batch_sizes": self.batch_sizes,
                    "primary_batch_size": self.batch_sizes[0], "scenarios": self.scenarios,
                    "warmup": settings.policy.warmup, "iters": settings.iters, "min_time_s": settings.min_time,
                    "timing_policy": asdict(self.policy),
                    "dataset": settings.dataset,
                    "image_size": self.data.image_size if self.data is not None else None,
                    "accuracy": None if self.data is not None else NO_DATASET,
                    "accuracy_samples": settings.accuracy_samples, "threads": self.threads,
                    "loadgen_plan": self.plan_config(),
                    "device": settings.load.device, "isolation": settings.isolation, "seed": settings.seed,
                    "output_dir": str(settings.output_dir)},
            models=models, per_batch=per_batch, samples_ms=self.samples,
            loadgen=self.loadgen, notes=notes + self.notes,
        )
