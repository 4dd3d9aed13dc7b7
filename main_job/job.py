"""The main job's stages: each calls a documented script's ``main(args)`` and writes its summary.

Every stage writes its summary to ``<output-dir>/stages/<stage>.json``. A second run reuses any stage
whose summary and outputs exist (``--force`` redoes them), so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from main_job.report import write_report
from main_job.sizing import SizingConfig, saving_line, size_models
from modelops.artifact import read_manifest
from modelops.cli import setup
from modelops.results import speedup_key
from modelops.selection import DEFAULT_MAX_ACCURACY_DROP_PTS, best_variant
from modelops.stages import StageRunner

logger = logging.getLogger(__name__)

STAGES = ("baseline", "optimize", "benchmark", "flamegraph", "serve")
# The benchmark's batch sizes; the first is the one the best variant is chosen at.
BENCH_BATCHES = (1, 16)
# The pipeline's artifacts that are benchmarked and can be served, in report order.
VARIANTS = ("original", "pruned", "distilled", "quantized", "combined")


@dataclass(frozen=True)
class JobSize:
    """How big each stage runs: the default demo, or the tiny size the tests use."""

    image_size: int
    teacher_epochs: int
    small_epochs: int
    optimize_epochs: int
    calibration_batches: int
    bench_iters: int
    flame_duration_s: float
    requests: int
    loadgen_min_duration_ms: int | None  # None: LoadGen's own minimum duration (10 s a run)


DEMO = JobSize(image_size=32, teacher_epochs=8, small_epochs=12, optimize_epochs=6,
               calibration_batches=10, bench_iters=40, flame_duration_s=5, requests=200,
               loadgen_min_duration_ms=None)
TINY = JobSize(image_size=16, teacher_epochs=1, small_epochs=1, optimize_epochs=1,
               calibration_batches=2, bench_iters=5, flame_duration_s=2, requests=20, loadgen_min_duration_ms=100)


def _script(module: str) -> Any:
    return importlib.import_module(module)


def _run_script(module: str, argv: list[str]) -> dict:
    """Run a documented script's ``main`` with the flags a user would type."""
    script = _script(module)
    logger.info("$ python %s.py %s", module.replace(".", "/"), " ".join(argv))
    args = script.get_args_parser().parse_args(argv)
    setup(args)  # threads and seeds exactly as the command line would set them
    return script.main(args) or {}


def benchmarked_best(rows: list[dict]) -> str:
    """The benchmarked variant with the best speed-up at the benchmark's first batch size whose accuracy is within
    the budget the pipeline uses (:func:`modelops.selection.best_variant`; the original is a candidate too)."""
    return best_variant(rows, speed=speedup_key(BENCH_BATCHES[0]))


@dataclass(frozen=True)
class JobConfig:
    """What the main job's flags decide (``main_job.cli.job_config`` builds it); the stages read only this."""

    teacher_arch: str = "resnet50"
    student_arch: str = "resnet18"
    dataset: str = "digits"
    seed: int = 0
    threads: int | None = None
    models_dir: Path = Path("models")
    output_dir: Path = Path("runs/main_job")
    tiny: bool = False
    stages: tuple[str, ...] = STAGES
    force: bool = False


class Job:
    def __init__(self, config: JobConfig, sizing: SizingConfig) -> None:
        self.config = config
        self.sizing_config = sizing
        self.size = TINY if config.tiny else DEMO
        self.models = Path(config.models_dir)
        self.out = Path(config.output_dir)
        self.stages = StageRunner(self.out / "stages", force=config.force)
        self.common = ["--dataset", config.dataset, "--seed", str(config.seed)]
        if config.threads:
            self.common += ["--threads", str(config.threads)]

    # ------------------------------------------------------------------ paths
    def model(self, name: str) -> Path:
        return self.models / f"{name}.pt"

    @property
    def teacher(self) -> Path:
        return self.model(self.config.teacher_arch)

    @property
    def results(self) -> dict[str, dict]:
        """Each stage's summary so far, by stage name."""
        return self.stages.results

    # ------------------------------------------------------------------ stages
    def reusable_baseline(self, arch: str, epochs: int) -> dict | None:
        """The summary of an already trained ``models/<arch>.pt`` made with these settings, if there is one."""
        if self.config.force:
            return None
        manifest = read_manifest(self.model(arch)) if self.model(arch).exists() else None
        if (manifest is None or manifest.arch != arch or manifest.dataset != self.config.dataset
                or manifest.input_shape[-1] != self.size.image_size
                or manifest.transform != {"kind": "baseline", "source": "trained", "epochs": epochs}):
            return None
        logger.info("[baseline] reusing %s (trained %d epochs, test accuracy %.2f%%)", self.model(arch), epochs,
                    manifest.metrics.get("accuracy", float("nan")))
        from PR3_model_optimization.prepare_model import artifact_summary

        return artifact_summary(self.model(arch), manifest)

    def baseline(self) -> dict:
        out = {}
        # ResNet-50 from scratch on 1k digits diverges with SGD at lr 0.05; AdamW at 1e-3 trains it reliably.
        recipes = ((self.config.teacher_arch, self.size.teacher_epochs, ["--opt", "adamw", "--lr", "0.001"]),
                   (self.config.student_arch, self.size.small_epochs, []))
        for arch, epochs, recipe in recipes:
            out[arch] = self.reusable_baseline(arch, epochs) or _run_script("PR3_model_optimization.prepare_model", [
                "--arch", arch, "--epochs", str(epochs), "--image-size", str(self.size.image_size),
                "--save-path", str(self.model(arch)), "--output-dir", str(self.out / f"train_{arch}"), *recipe,
                *self.common])
        return out

    def optimize(self) -> dict:
        """Prune, distill and quantize the original, each alone and combined (optimize_pipeline.py). The pipeline
        does not measure them (``--no-measure``): the benchmark stage measures every variant, once."""
        argv = ["--model", str(self.teacher), "--output-dir", str(self.models / "optimized"),
                "--epochs", str(self.size.optimize_epochs), "--student-arch", self.config.student_arch,
                "--calibration-batches", str(self.size.calibration_batches), "--no-measure", *self.common]
        if self.config.tiny:
            argv += ["--limit", "256", "--prune-steps", "1"]
        if self.config.force:
            argv.append("--force")
        return _run_script("PR3_model_optimization.optimize_pipeline", argv)

    def variants(self) -> dict[str, Path]:
        artifacts = self.results.get("optimize", {}).get("artifacts", {})
        found = {"original": self.teacher, **{name: Path(p) for name, p in artifacts.items()}}
        return {name: found[name] for name in VARIANTS if name in found and found[name].exists()}

    def benchmark(self) -> dict:
        """Every variant timed in turns, then single-stream and offline on MLPerf LoadGen (benchmark_models.py)."""
        from PR4_model_benchmarking.reports import SCENARIO_COLUMNS, summary_columns

        spec = ",".join(f"{name}:{path}" for name, path in self.variants().items())
        loadgen = ([] if self.size.loadgen_min_duration_ms is None
                   else ["--min-duration-ms", str(self.size.loadgen_min_duration_ms)])
        batch_sizes = ",".join(map(str, BENCH_BATCHES))
        result = _run_script("PR4_model_benchmarking.benchmark_models", [
            "--models", spec, "--scenarios", "single-stream,offline", *loadgen, "--batch-sizes", batch_sizes,
            "--iters", str(self.size.bench_iters), "--report-format", "markdown,html,json,csv",
            "--accuracy-tolerance", str(DEFAULT_MAX_ACCURACY_DROP_PTS),
            "--output-dir", str(self.out / "benchmark"), *self.common])
        columns = (*summary_columns(result["report"]), *SCENARIO_COLUMNS[1:])
        summary = [{c: row.get(c) for c in columns if c in row} for row in result["models"]]
        return {"reports": result["reports"], "summary": summary, "headline": result["report"]["headline"],
                "best_variant": benchmarked_best(result["models"])}

    def fastest_variant(self) -> str:
        """The variant to profile and serve: the benchmark stage's choice (see :func:`benchmarked_best`)."""
        bench = self.results.get("benchmark", {})
        return bench.get("best_variant") or benchmarked_best(bench.get("summary", []))

    def flamegraph(self) -> dict:
        variants = self.variants()
        fastest = self.fastest_variant()
        return _run_script("PR4_model_benchmarking.model_flamegraph", [
            "--model", str(variants["original"]), "--compare", str(variants.get(fastest, variants["original"])),
            "--duration", str(self.size.flame_duration_s), "--output-dir", str(self.out / "flamegraph"),
            *self.common])

    def serve(self) -> dict:
        """Serve the original and the fastest variant through broker + API + worker; time a bounded burst each."""
        from PR2_async_inference.load_test import make_payloads, run_load
        from PR2_async_inference.local_stack import start_stack, stop_stack
        from PR2_async_inference.registry import write_registry

        variants = self.variants()
        fastest = self.fastest_variant()
        served = {"original": variants["original"], "optimized": variants.get(fastest, variants["original"])}
        registry = self.out / "serve_registry.yaml"
        write_registry(registry, served)
        stack = start_stack(registry=registry, workers=1, log_dir=self.out / "serve_logs")
        try:
            load = {}
            for name, path in served.items():
                payloads = [{**p, "model_name": name} for p in make_payloads(read_manifest(path).input_shape)]
                # Untimed warm-up: the worker loads and warms every model before it joins the consumer group,
                # but the first requests through the API and the broker are still slower than the rest.
                run_load(stack.api_url, requests=8, concurrency=8, time_limit_s=120,
                         payloads=payloads)
                load[name] = run_load(stack.api_url, requests=self.size.requests, concurrency=8,
                                      time_limit_s=120, payloads=payloads)
            return {"served": {k: str(v) for k, v in served.items()}, "optimized_variant": fastest, "load": load}
        finally:
            stop_stack(stack)

    def sizing(self) -> dict | None:
        """Size the worker for the original and the benchmark's best variant from the benchmark's report
        (:mod:`main_job.sizing`); None when this run has no benchmark."""
        report = Path(self.results.get("benchmark", {}).get("reports", {}).get("json", ""))
        if not report.is_file():
            return None
        variants = {"original": "original", "optimized": self.fastest_variant()}
        return size_models(report, variants, self.sizing_config, self.out / "sizing")

    # ------------------------------------------------------------------ driver
    def run(self) -> dict:
        wanted = list(self.config.stages)
        unknown = sorted(set(wanted) - set(STAGES))
        if unknown:
            from modelops.errors import UsageError

            raise UsageError(f"Unknown stage(s) {', '.join(unknown)}. Choose from: {', '.join(STAGES)}")
        plan: dict[str, tuple[Callable[[], dict], list[Path]]] = {
            "baseline": (self.baseline, [self.teacher, self.model(self.config.student_arch)]),
            "optimize": (self.optimize, []),
            "benchmark": (self.benchmark, []),
            "flamegraph": (self.flamegraph, []),
            "serve": (self.serve, []),
        }
        from tqdm import tqdm

        for name in tqdm([s for s in STAGES if s in wanted], desc="main job", unit="stage"):
            fn, outputs = plan[name]
            self.stages.run(name, fn, outputs)
        sizing = self.sizing()
        summary = write_report(self.out, {**self.results, **({"sizing": sizing} if sizing else {})})
        if sizing:
            summary["sizing_line"] = saving_line(sizing)
        return summary


