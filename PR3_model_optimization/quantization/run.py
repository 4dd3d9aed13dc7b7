"""One quantization run: the fp32 model, data and references shared by its trials (:class:`QuantizationRun`);
each trial builds an artifact, reloads it through the shared loader and measures it; :func:`run_trials` keeps
the best and publishes it at the user's path.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from modelops.artifact import Manifest, RuntimeHints, file_size_mb, load_artifact, write_manifest
from modelops.cli import usable_cores
from modelops.cpu import cpu_info
from modelops.data import DatasetSplits, calibration_batches, make_loader
from modelops.errors import UsageError
from modelops.evaluate import accuracy, predict_logits, top1_agreement
from modelops.load_options import LoadOptions
from modelops.model_process import time_artifacts
from modelops.results import write_results
from modelops.runtimes.aoti import package_path
from modelops.timed_modules import Timer, medians_or_raise
from PR3_model_optimization.quantization.aoti_check import check_package
from PR3_model_optimization.quantization.auto import Candidate, Selection, select
from PR3_model_optimization.quantization.backends import REGISTRY, Quantizer
from PR3_model_optimization.quantization.config import QuantConfig
from PR3_model_optimization.quantization.coverage import layer_macs, mac_fraction, sensitive_layers
from PR3_model_optimization.quantization.search import pick_best, plan_trials
from PR3_model_optimization.quantization.settings import TrialSettings

logger = logging.getLogger(__name__)

TRIAL_COLUMNS = ("trial", "config", "val_top1_pct", "top1_drop_pts", "top1_agreement_pct", "speedup_x",
                 "int8_speedup_x", "latency_ms_p50_int8", "size_mb", "quantized_mac_fraction", "meets_budget", "error")


class QuantizationRun:
    """Everything one invocation shares between trials: the fp32 model, data, references, work dir.

    Args:
        model: the fp32 reference: an eager module, or the input run as it is (ONNX, TorchScript, ``.pt2``).
        manifest: its manifest.
        model_path: its file (recorded as the parent).
        data: the dataset splits matching the model.
        settings: the calibration, QAT and latency settings.
        work_dir: where trial artifacts are built before the winner is copied to the save path.
        onnx_path: the fp32 ONNX file the ONNX backends start from (ONNX and TorchScript inputs), or None.
        exported: the fp32 ExportedProgram PT2E starts from (``.pt2`` inputs), or None.
        timer: the timing function, :func:`modelops.model_process.time_artifacts` (tests inject their own).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], manifest: Manifest, model_path: Path, data,
                 settings: TrialSettings, work_dir: Path, onnx_path: Path | None = None,
                 exported: torch.export.ExportedProgram | None = None, timer: Timer = time_artifacts) -> None:
        self.model = model.eval() if isinstance(model, nn.Module) else model
        self.onnx_path = onnx_path
        self.exported = exported
        self.manifest = manifest
        self.model_path = model_path
        self.data = data
        self.settings = settings
        self.work_dir = work_dir
        self.threads = settings.threads or usable_cores()
        self.input_shape = list(manifest.input_shape)
        # A traced input has no module names to count MACs by: the MAC fraction reads 0 there.
        self.macs = layer_macs(self.model, self.input_shape) if isinstance(self.model, nn.Module) else {}
        self.fp32_size_mb = file_size_mb(model_path)
        self.val_loader = make_loader(data.val, 256)
        self._calibration: dict[int, list[torch.Tensor]] = {}
        self._quantizers: dict[str, Quantizer] = {}
        self._fp32_runtime: dict[str, Path | None] = {}
        self._fp32_file: Path | None = None
        self.timer = timer
        self.fp32_val_logits, self.val_targets = predict_logits(self.model, self.val_loader)
        self.fp32_top1_pct = round(accuracy(self.fp32_val_logits, self.val_targets), 4)

    def calibration(self, num_batches: int) -> list[torch.Tensor]:
        if num_batches not in self._calibration:
            self._calibration[num_batches] = calibration_batches(
                self.data.train, self.settings.calibration_batch_size, num_batches, seed=self.settings.seed)
        return self._calibration[num_batches]

    def example(self) -> torch.Tensor:
        # Batch 2: torch.export specialises a batch dimension it sees as 1.
        return self.calibration(1)[0][:2] if len(self.data.train) >= 2 else torch.zeros(2, *self.input_shape)

    def qat_step(self, graph: torch.fx.GraphModule) -> None:
        """Fine-tune the fake-quant graph for ``--qat-epochs`` epochs of the train split."""
        from tqdm import tqdm

        loader = make_loader(self.data.train, self.settings.batch_size, shuffle=True, seed=self.settings.seed)
        steps = max(1, int(len(loader) * self.settings.qat_epochs))
        optimizer = torch.optim.SGD(graph.parameters(), lr=self.settings.qat_lr, momentum=0.9)
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
            self._quantizers[backend] = REGISTRY[backend].make_quantizer(
                self.model if isinstance(self.model, nn.Module) else None, self.example(), self.work_dir,
                onnx_path=self.onnx_path, exported=self.exported)
        return self._quantizers[backend]

    def build(self, config: QuantConfig, out: Path) -> list[str]:
        """Write the int8 model for ``config`` at ``out``; return the quantized layer names."""
        calibration = self.calibration(config.calibration_batches) if config.method == "static" else []
        return self.quantizer(config.backend).build(
            config, calibration, out, train_step=self.qat_step if config.method == "qat" else None)

    def fp32_runtime_file(self, backend: str) -> Path | None:
        """The fp32 model's artifact on the backend's own runtime (written once), or None if the backend has none."""
        if backend not in self._fp32_runtime:
            path = self.quantizer(backend).fp32_artifact()
            if path is not None:
                write_manifest(path, self.manifest.derive(
                    parent_path=str(self.model_path), transform={"kind": "export", "format": REGISTRY[backend].format}),
                    fmt=REGISTRY[backend].format)
            self._fp32_runtime[backend] = path
        return self._fp32_runtime[backend]

    def fp32_file(self) -> Path:
        """The fp32 reference as an artifact file (written once; see :func:`fp32_reference_file`)."""
        if self._fp32_file is None:
            self._fp32_file = fp32_reference_file(self)
        return self._fp32_file

    def time_trial(self, out: Path, backend: str) -> dict[str, float]:
        """Median ms at ``--latency-batch-size`` of fp32, the trial's artifact (run as the loader serves it, PT2E
        compiled by inductor) and, where the backend has one, fp32 on its runtime: each in its own process."""
        contenders = {"fp32": self.fp32_file(), "int8": out}
        runtime_fp32 = self.fp32_runtime_file(backend)
        if runtime_fp32 is not None:
            # The same fp32 model on the backend's runtime: splits the speed-up into runtime and int8 shares.
            contenders["fp32_runtime"] = runtime_fp32
        batch_size = self.settings.latency_batch_size
        times = self.timer(contenders, [batch_size], self.settings.latency_rounds,
                           options=LoadOptions(threads=self.threads, trust_pickle=self.settings.trust_pickle))
        return medians_or_raise(times, batch_size)

    def child_manifest(self, config: QuantConfig, metrics: dict, runtime: RuntimeHints | None = None) -> Manifest:
        hints = REGISTRY[config.backend].runtime_for(config.method)
        return self.manifest.derive(parent_path=str(self.model_path), transform=config.transform(),
                                    metrics=dict(metrics), runtime=hints.merged(runtime or RuntimeHints()))

    def trial(self, index: int, config: QuantConfig, budget: float | None) -> tuple[dict, Path]:
        """Quantize with ``config``, reload the result through ``load_artifact`` and measure it."""
        out = self.work_dir / f"trial{index}{REGISTRY[config.backend].suffix}"
        logger.info("trial %d: %s", index, config.label)
        started = time.perf_counter()
        layers = self.build(config, out)
        quantize_s = time.perf_counter() - started
        write_manifest(out, self.child_manifest(config, {}), fmt=REGISTRY[config.backend].format)

        # Accuracy from the reloaded artifact (the same path PR2's worker and PR4's benchmark take).
        predictor = load_artifact(out, LoadOptions(compile=False, threads=self.threads))
        logits, _ = predict_logits(predictor, self.val_loader)
        val_top1_pct = round(accuracy(logits, self.val_targets), 4)
        # Speed from each model loaded only in its own process (the project's one timing method).
        median = self.time_trial(out, config.backend)
        fp32_ms, int8_ms = median["fp32"], median["int8"]
        runtime_ms = median.get("fp32_runtime")
        size_mb = file_size_mb(out)
        drop = round(self.fp32_top1_pct - val_top1_pct, 4)
        row = {
            "trial": index, "config": config.label, "backend": config.backend, "method": config.method,
            "per_channel": config.per_channel, "calibration_method": config.calibration_method,
            "activation_type": config.activation_type, "calibration_batches": config.calibration_batches,
            "keep_float": "+".join(config.keep_float),
            # Top-1 in percent on the val split (the split the search decides on), fp32's too; the drop in points.
            "val_top1_pct": val_top1_pct, "fp32_top1_pct": self.fp32_top1_pct, "top1_drop_pts": drop,
            "top1_agreement_pct": round(top1_agreement(logits, self.fp32_val_logits), 4),
            "latency_ms_p50_fp32": round(fp32_ms, 3), "latency_ms_p50_int8": round(int8_ms, 3),
            # The speed-ups are at latency_batch_size (a flag, so not in the keys): fp32 eager over int8, and split
            # into the runtime's share (fp32 eager over fp32 on the backend's runtime) and int8's (over that).
            "speedup_x": round(fp32_ms / int8_ms, 3), "latency_batch_size": self.settings.latency_batch_size,
            "latency_ms_p50_fp32_runtime": round(runtime_ms, 3) if runtime_ms else None,
            "runtime_speedup_x": round(fp32_ms / runtime_ms, 3) if runtime_ms else None,
            "int8_speedup_x": round(runtime_ms / int8_ms, 3) if runtime_ms else None,
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
        metrics.update({"accuracy": row["val_top1_pct"], "accuracy_split": "val", **extra})
        runtime = RuntimeHints()
        if self.settings.aoti:
            runtime = self.package(save_path, config, metrics)
        return write_manifest(save_path, self.child_manifest(config, metrics, runtime),
                              fmt=REGISTRY[config.backend].format)

    def package(self, save_path: Path, config: QuantConfig, metrics: dict) -> RuntimeHints:
        """Compile the published program ahead of time where its backend can (the quantizer's ``package``), so a
        served model's first request does not pay inductor's compile, and keep the package only if it runs as
        fast as ``torch.compile`` here (the figures go to ``metrics["aoti_check"]``); the manifest's ``runtime``
        additions."""
        aoti = self.quantizer(config.backend).package(save_path, config)
        if not aoti:
            return RuntimeHints()
        manifest = self.child_manifest(config, metrics)
        keep, record = check_package(save_path, manifest, aoti, [1, self.settings.latency_batch_size],
                                     self.settings.latency_rounds, threads=self.threads, timer=self.timer)
        metrics["aoti_check"] = record
        logger.info("AOTInductor package %s: %s", "kept" if keep else "dropped", record["why"])
        if not keep:
            package_path(save_path).unlink(missing_ok=True)
            return RuntimeHints()
        return RuntimeHints(aoti=aoti)





def default_save_path(model_path: Path, backend: str, method: str = "static") -> Path:
    dtype = "bf16" if method == "bf16" else "int8"
    return model_path.with_name(f"{model_path.stem}_{dtype}{REGISTRY[backend].suffix}")


def write_trials(csv_path: Path, json_path: Path, rows: Sequence[dict]) -> None:
    write_results(csv_path, [{k: r.get(k, "") for k in TRIAL_COLUMNS if k != "quantized_layers"} for r in rows])
    write_results(json_path, [dict(r) for r in rows])


def trials_paths(save_path: Path) -> tuple[Path, Path]:
    return save_path.with_name(save_path.name + ".trials.csv"), save_path.with_name(save_path.name + ".trials.json")


def fp32_reference_file(run: QuantizationRun) -> Path:
    """The fp32 reference as an artifact file for per-process timing: a copy of the input whose manifest runs it
    the way the run's reference runs (without torch.compile)."""
    path = run.work_dir / f"fp32_reference{run.model_path.suffix}"
    shutil.copyfile(run.model_path, path)
    runtime = run.manifest.runtime.model_copy(update={"compile": False})
    write_manifest(path, run.manifest.model_copy(update={"runtime": runtime}))
    return path


def finish_auto(run: QuantizationRun, built: Sequence[tuple[dict, Path, QuantConfig]], failed: Sequence[Candidate],
                budget: float, model_path: Path, extra: dict) -> tuple[dict | None, Manifest | None, Path, Selection]:
    """Time each backend's best trial on this host, keep the fastest within ``budget`` and publish it."""
    settings = run.settings
    options = LoadOptions(threads=run.threads, trust_pickle=settings.trust_pickle)
    selection = select(run.fp32_file(), built, failed, budget, [1, settings.latency_batch_size],
                       settings.latency_rounds, options=options, timer=run.timer)
    print(selection.table, file=sys.stderr)
    logger.info("auto: %s", selection.reason)
    chosen = selection.chosen
    if chosen is None or chosen.artifact is None:
        return None, None, Path(settings.save_path or model_path), selection
    save_path = Path(settings.save_path) if settings.save_path else \
        default_save_path(model_path, chosen.config.backend, chosen.config.method)
    manifest = run.publish(chosen.row, chosen.artifact, chosen.config, save_path,
                           {**extra, "trials": len(built), "backend_selection": selection.record})
    return chosen.row, manifest, save_path, selection


@dataclass
class Plan:
    """What a run will do, settled before any trial: the fp32 model, where the result goes, what to try.

    ``model`` is an eager module, or for a traced input (ONNX, TorchScript, ``.pt2``) the input run as it is: the
    fp32 reference the int8 trials are compared with. ``start`` says what the quantizers start from (``eager``,
    ``onnx``: ``onnx_path``, ``exported_program``: ``exported``) and ``form`` names the input's form.
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    manifest: Manifest
    model_path: Path
    save_path: Path
    data: DatasetSplits
    base: QuantConfig
    auto: bool
    searching: bool
    budget: float | None
    outlook: str
    likely: bool
    start: str = "eager"
    form: str | None = None
    onnx_path: Path | None = None
    exported: torch.export.ExportedProgram | None = None


@dataclass
class Outcome:
    """What the trials produced: every row, the kept one and its manifest, where it went."""

    rows: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_manifest: Manifest | None = None
    save_path: Path | None = None
    selection: Selection | None = None


def run_trials(plan: Plan, settings: TrialSettings, started: float) -> Outcome:
    """Run every planned trial; keep the best (published as soon as it leads, unless auto decides at the end)."""
    sensitive = sensitive_layers(plan.model) if isinstance(plan.model, nn.Module) else ()
    configs, failed = plan_trials(plan.base, sensitive, settings, plan.auto, plan.searching, start=plan.start,
                                  form=plan.form)
    built: list[tuple[dict, Path, QuantConfig]] = []
    outcome = Outcome(save_path=plan.save_path)
    extra = {"cpu_int8_outlook": plan.outlook, "cpu_int8_likely": plan.likely, "cpu_model": cpu_info()["cpu_model"],
             "max_accuracy_drop": plan.budget}
    with tempfile.TemporaryDirectory(prefix="quantize_") as tmp:
        run = QuantizationRun(plan.model, plan.manifest, plan.model_path, plan.data, settings, Path(tmp),
                              onnx_path=plan.onnx_path, exported=plan.exported)
        logger.info("fp32 %s: val accuracy %.2f%% on %d samples", plan.manifest.arch, run.fp32_top1_pct,
                    len(run.val_targets))
        for index, config in enumerate(configs):
            # The time budget is checked between trials, so at least one trial always runs.
            limit = settings.search_time_s
            out_of_time = limit is not None and time.perf_counter() - started > limit
            if plan.searching and index > 0 and out_of_time:
                logger.warning("search time budget of %.0f s reached after %d trials", limit, index)
                break
            row, artifact = one_trial(run, index, config, plan, outcome.rows, failed)
            if row is None:
                continue
            built.append((row, artifact, config))
            if pick_best(outcome.rows) is row and not plan.auto:
                # A new best: save it now so a stopped search still leaves a usable model.
                outcome.best = row
                outcome.best_manifest = run.publish(row, artifact, config, plan.save_path,
                                                    {**extra, "trials": len(outcome.rows)})
            if plan.searching and not plan.auto:
                write_trials(*trials_paths(plan.save_path), outcome.rows)
        if plan.auto:
            outcome.best, outcome.best_manifest, outcome.save_path, outcome.selection = finish_auto(
                run, built, failed, plan.budget, plan.model_path, extra)
            if plan.searching:
                write_trials(*trials_paths(outcome.save_path), outcome.rows)
    return outcome


def one_trial(run: QuantizationRun, index: int, config: QuantConfig, plan: Plan, rows: list[dict],
              failed: list[Candidate]) -> tuple[dict | None, Path | None]:
    """One trial, appended to ``rows``; in a search or auto run a failing configuration becomes an error row."""
    try:
        row, artifact = run.trial(index, config, plan.budget)
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if not (plan.searching or plan.auto):
            raise
        error = str(exc).splitlines()[0][:200]
        logger.warning("trial %d (%s) failed: %s", index, config.label, error)
        rows.append({"trial": index, "config": config.label, "error": error})
        failed.append(Candidate(config, error=f"failed: {error}"))
        return None, None
    rows.append(row)
    logger.info("trial %d: val %.2f%% (drop %.2f), %.2fx, %.2f MB", index, row["val_top1_pct"],
                row["top1_drop_pts"], row["speedup_x"], row["size_mb"])
    return row, artifact
