"""Size the worker Deployment and its autoscaling from PR4's measurements and PR2's batching settings.

    python PR1_horizontal_pod_autoscaling/size_deployment.py --model image_classification --p95-ms 200 \\
        --peak-rps 400 --base-rps 50 --output-dir runs/sizing [--report runs/benchmark/benchmark.json]

``--model`` is a name in PR2's model registry (its artifact and its max_batch_size / max_batch_delay_ms) or an
artifact path (PR2's settings then give the batching). Without ``--report`` the artifact is measured by PR4's
benchmark (``run_benchmark``: timed batch sizes up to max_batch_size, LoadGen single-stream and offline); with
``--report`` the figures come from that PR4 JSON report. It prints the sizing and writes ``DIR/kustomization.yaml``
(an overlay on PR1's kustomization plus a patched copy of keda-scaledobject.yaml) and ``DIR/sizing.md`` (each
number, the measurement it came from and the formula). Code that already has a PR4 report (the main job) calls
:func:`size_from_report` with an :class:`Objective` and writes the same files with :func:`write_sizing`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from modelops.cli import check_positive, run_cli
from modelops.errors import UsageError

PR1 = Path(__file__).resolve().parent
WORKER = "inference-worker"
LAG_METRIC = "inference_consumer_lag"


@dataclass(frozen=True)
class Objective:
    """The latency objective and the load a deployment is sized for, as the command's flags name them."""

    p95_ms: float  # p95 of a request
    peak_rps: float
    base_rps: float
    headroom: float = 0.25  # fraction of each replica's throughput kept free

    def check(self) -> None:
        """UsageError naming the flag when a value is out of range."""
        check_positive("--p95-ms", self.p95_ms)
        check_positive("--peak-rps", self.peak_rps)
        check_positive("--base-rps", self.base_rps, allow_zero=True)
        if self.base_rps > self.peak_rps:
            raise UsageError(f"--base-rps {self.base_rps:g} is above --peak-rps {self.peak_rps:g}")
        if not 0 <= self.headroom < 1:
            raise UsageError(f"--headroom must be in [0, 1), got {self.headroom:g}")


@dataclass
class Sizing:
    model: str
    source: str  # the PR4 report the figures come from
    p95_ms: float
    base_rps: float
    peak_rps: float
    headroom: float
    partitions: int
    max_batch_size: int
    max_batch_delay_ms: float
    batching_source: str
    batch1_ms: float  # the model's own batch-1 latency
    batch1_figure: str
    batch_size: int  # the batch size the sizing plans with
    batch_p95_ms: float
    timed_samples_per_s: float
    offline_samples_per_s: float | None
    samples_per_s: float  # sustainable throughput per replica
    queue_budget_ms: float
    lag_threshold: int
    replicas_base: int
    replicas_peak: int
    min_replicas: int
    max_replicas: int
    cpu: str | None
    memory_mi: int | None
    peak_rss_mb: float | None
    server_figure: str | None


def batching_settings(model: str, registry: str | None) -> tuple[Path | None, int, float, str]:
    """(artifact, max_batch_size, max_batch_delay_ms, where they come from): the registry entry named ``model``,
    PR2's settings for what the entry leaves out or for a model that is not in the registry."""
    from PR2_async_inference.registry import load_registry
    from PR2_async_inference.settings import Settings

    settings = Settings()
    path = Path(registry) if registry else settings.model_registry
    models = load_registry(path).models if path.exists() else {}
    spec = models.get(model)
    if spec is None:
        artifact = Path(model) if Path(model).is_file() else None
        return (artifact, settings.max_batch_size, settings.max_batch_delay_ms,
                "PR2 settings (INFERENCE_MAX_BATCH_SIZE / INFERENCE_MAX_BATCH_DELAY_MS or their defaults)")
    size = spec.max_batch_size or settings.max_batch_size
    delay = settings.max_batch_delay_ms if spec.max_batch_delay_ms is None else spec.max_batch_delay_ms
    return spec.resolve(), size, delay, f"registry {path}, model {model!r} (settings for what it leaves out)"


def measure(artifact: Path, name: str, max_batch_size: int, threads: int, out_dir: Path) -> Path:
    """Run PR4's benchmark on ``artifact``: batch sizes 1, 2, 4, ... up to max_batch_size, LoadGen single-stream
    and offline at max_batch_size; returns its JSON report."""
    from PR4_model_benchmarking import benchmark_models

    sizes = sorted({1, max_batch_size, *(2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size)})
    args = benchmark_models.get_args_parser().parse_args([
        "--models", f"{name}:{artifact}", "--quick", "--batch-sizes", ",".join(map(str, sizes)),
        "--scenarios", "single-stream,offline", "--offline-batch-size", str(max_batch_size), "--threads",
        str(threads), "--report-format", "json,markdown", "--no-progress", "--output-dir", str(out_dir)])
    return Path(benchmark_models.run_benchmark(args)["reports"]["json"])


def report_rows(report: dict[str, Any], model: str, artifact: Path | None) -> tuple[dict, list[dict]]:
    """The report's summary row for ``model`` (by name, else by artifact path) and its per-batch rows."""
    rows = [r for r in report.get("models", []) if r["model"] == model]
    if not rows and artifact is not None:
        rows = [r for r in report.get("models", []) if Path(r.get("path", "")).resolve() == artifact.resolve()]
    if not rows:
        names = ", ".join(r["model"] for r in report.get("models", []))
        raise UsageError(f"the report has no model {model!r} (it has: {names or 'none'})")
    row = rows[0]
    if row.get("error"):
        raise UsageError(f"the report's model {row['model']!r} failed: {row['error']}")
    batches = sorted((b for b in report.get("per_batch", []) if b["model"] == row["model"]),
                     key=lambda b: b["batch_size"])
    return row, batches


def size(row: dict, batches: list[dict], *, source: str, threads: int | None, p95_ms: float, base_rps: float,
         peak_rps: float, headroom: float, partitions: int, max_batch_size: int, max_batch_delay_ms: float,
         batching_source: str) -> Sizing:
    """The arithmetic of the sizing (README, "Sizing from measurements"); UsageError when the objective cannot
    be met."""
    one = next((b for b in batches if b["batch_size"] == 1), None)
    if row.get("single_stream_latency_ms_p90") is not None:
        batch1_ms, batch1_figure = row["single_stream_latency_ms_p90"], "LoadGen single-stream p90"
    elif one is not None:
        batch1_ms, batch1_figure = one["latency_ms_p90"], "timed batch-1 p90"
    else:
        raise UsageError("the report has no batch-1 latency (neither LoadGen single-stream nor batch size 1 timed)")
    if p95_ms < batch1_ms:
        raise UsageError(f"the objective cannot be met: p95 {p95_ms:g} ms is below the model's own batch-1 latency "
                         f"({batch1_figure} {batch1_ms:g} ms in {source}), so a lone request on an idle worker "
                         "already takes longer")
    fits = [b for b in batches if b["batch_size"] <= max_batch_size
            and max_batch_delay_ms + b["latency_ms_p95"] < p95_ms]
    if not fits:
        smallest = batches[0] if batches else {"batch_size": 1, "latency_ms_p95": batch1_ms}
        raise UsageError(f"the objective cannot be met under load: max_batch_delay_ms {max_batch_delay_ms:g} + the "
                         f"batch-{smallest['batch_size']} p95 {smallest['latency_ms_p95']:g} ms leaves no time "
                         f"inside p95 {p95_ms:g} ms for queueing ({source}); lower max_batch_delay_ms or relax the "
                         "objective")
    best = max(fits, key=lambda b: b["samples_per_s"])
    offline = row.get("offline_samples_per_s") if row.get("offline_batch_size") == best["batch_size"] else None
    rate = min(best["samples_per_s"], offline) if offline else best["samples_per_s"]
    budget = p95_ms - max_batch_delay_ms - best["latency_ms_p95"]
    per_replica = rate * (1 - headroom)
    need_base = max(1, math.ceil(base_rps / per_replica))
    need_peak = max(need_base, math.ceil(peak_rps / per_replica))
    peak_rss = row.get("peak_rss_mb")
    server = None
    if row.get("server_range"):
        server = f"{row['server_range']} (p99 bound {row.get('server_latency_bound_ms')} ms, batch 1)"
    return Sizing(
        model=row["model"], source=source, p95_ms=p95_ms, base_rps=base_rps, peak_rps=peak_rps, headroom=headroom,
        partitions=partitions, max_batch_size=max_batch_size, max_batch_delay_ms=max_batch_delay_ms,
        batching_source=batching_source, batch1_ms=batch1_ms, batch1_figure=batch1_figure,
        batch_size=best["batch_size"], batch_p95_ms=best["latency_ms_p95"],
        timed_samples_per_s=best["samples_per_s"], offline_samples_per_s=offline, samples_per_s=rate,
        queue_budget_ms=budget, lag_threshold=max(1, math.floor(rate * budget / 1000)),
        replicas_base=need_base, replicas_peak=need_peak, min_replicas=min(need_base, partitions),
        max_replicas=min(need_peak, partitions), cpu=str(threads) if threads else None,
        memory_mi=math.ceil(peak_rss * (1 + headroom) / 64) * 64 if peak_rss else None, peak_rss_mb=peak_rss,
        server_figure=server)


def size_from_report(report: dict[str, Any], model: str, objective: Objective, *, source: str,
                     max_batch_size: int, max_batch_delay_ms: float, batching_source: str,
                     artifact: Path | None = None, partitions: int | None = None) -> Sizing:
    """:func:`size` for the row of ``model`` in a PR4 JSON report (by name, else by ``artifact`` path), with the
    threads the report measured with; ``partitions`` defaults to PR2's settings' requests_partitions."""
    if partitions is None:
        from PR2_async_inference.settings import Settings

        partitions = Settings().requests_partitions
    row, batches = report_rows(report, model, artifact)
    return size(row, batches, source=source, threads=report.get("config", {}).get("threads"),
                p95_ms=objective.p95_ms, base_rps=objective.base_rps, peak_rps=objective.peak_rps,
                headroom=objective.headroom, partitions=partitions, max_batch_size=max_batch_size,
                max_batch_delay_ms=max_batch_delay_ms, batching_source=batching_source)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the inline patches) as literal blocks, readable in the overlay."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _index(items: list[dict], match: Any, what: str) -> int:
    for i, item in enumerate(items):
        if match(item):
            return i
    raise RuntimeError(f"PR1's manifests have no {what}")


def write_overlay(s: Sizing, out_dir: Path) -> Path:
    """``out_dir/kustomization.yaml``: PR1's kustomization (by relative path) plus a copy of
    keda-scaledobject.yaml, patched with the sizing. JSON patches ``test`` the metric and trigger they change, so
    a reordered manifest fails the build instead of patching the wrong entry."""
    hpa = yaml.safe_load((PR1 / "custom-metrics-hpa.yaml").read_text())
    lag = _index(hpa["spec"]["metrics"], lambda m: m.get("pods", {}).get("metric", {}).get("name") == LAG_METRIC,
                 f"{LAG_METRIC} metric in the worker HPA")
    scaled = yaml.safe_load((PR1 / "keda-scaledobject.yaml").read_text())
    kafka = _index(scaled["spec"]["triggers"], lambda t: t["type"] == "kafka", "kafka trigger in the ScaledObject")
    shutil.copyfile(PR1 / "keda-scaledobject.yaml", out_dir / "keda-scaledobject.yaml")
    container: dict[str, Any] = {"name": "worker"}
    requests: dict[str, str] = {}
    if s.cpu:
        requests["cpu"] = s.cpu
        container["env"] = [{"name": "INFERENCE_TORCH_THREADS", "value": s.cpu}]
    if s.memory_mi:
        requests["memory"] = f"{s.memory_mi}Mi"
    resources = {"requests": requests} if requests else {}
    limits = {**({"cpu": s.cpu} if s.cpu else {}), **({"memory": f"{2 * s.memory_mi}Mi"} if s.memory_mi else {})}
    if limits:
        resources["limits"] = limits
    if resources:
        container["resources"] = resources
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WORKER},
                  "spec": {"replicas": s.min_replicas, "template": {"spec": {"containers": [container]}}}}
    lag_path = f"/spec/metrics/{lag}/pods"
    hpa_ops = [{"op": "replace", "path": "/spec/minReplicas", "value": s.min_replicas},
               {"op": "replace", "path": "/spec/maxReplicas", "value": s.max_replicas},
               {"op": "test", "path": f"{lag_path}/metric/name", "value": LAG_METRIC},
               {"op": "replace", "path": f"{lag_path}/target/averageValue", "value": str(s.lag_threshold)}]
    trigger = f"/spec/triggers/{kafka}"
    keda_ops = [{"op": "replace", "path": "/spec/minReplicaCount", "value": s.min_replicas},
                {"op": "replace", "path": "/spec/maxReplicaCount", "value": s.max_replicas},
                {"op": "test", "path": f"{trigger}/type", "value": "kafka"},
                {"op": "replace", "path": f"{trigger}/metadata/lagThreshold", "value": str(s.lag_threshold)}]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/managed-by": "kustomize"}}],
        "resources": [os.path.relpath(PR1, out_dir.resolve()), "keda-scaledobject.yaml"],
        "patches": [
            {"target": {"kind": "Deployment", "name": WORKER}, "patch": yaml.safe_dump(deployment, sort_keys=False)},
            {"target": {"kind": "HorizontalPodAutoscaler", "name": WORKER}, "patch": yaml.safe_dump(hpa_ops)},
            {"target": {"kind": "ScaledObject", "name": WORKER}, "patch": yaml.safe_dump(keda_ops)},
        ],
    }
    header = (f"# Written by size_deployment.py for model {s.model} at p95 {s.p95_ms:g} ms, {s.base_rps:g}-"
              f"{s.peak_rps:g} requests/s (sizing.md shows each number and its measurement).\n"
              "# The ScaledObject adopts the HPA named inference-worker (transfer-hpa-ownership) and carries the "
              "same\n# replica bounds and lag threshold, so either autoscaler scales by the same numbers.\n")
    path = out_dir / "kustomization.yaml"
    path.write_text(header + yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False))
    return path


def summary_lines(s: Sizing) -> list[str]:
    """What the command prints and sizing.md lists: each number, its measurement and formula."""
    offline = (f", LoadGen offline at batch {s.batch_size}: {s.offline_samples_per_s:g} samples/s; the lower "
               "counts" if s.offline_samples_per_s else "")
    lines = [
        f"model {s.model}, figures from {s.source}; batching: max_batch_size {s.max_batch_size}, "
        f"max_batch_delay_ms {s.max_batch_delay_ms:g} ({s.batching_source})",
        f"batch-1 latency: {s.batch1_ms:g} ms ({s.batch1_figure}) <= objective p95 {s.p95_ms:g} ms",
        f"batch size: {s.batch_size} = the measured batch size <= max_batch_size with the most samples/s for which "
        f"max_batch_delay_ms + p95(batch) = {s.max_batch_delay_ms:g} + {s.batch_p95_ms:g} < {s.p95_ms:g} ms",
        f"throughput per replica: {s.samples_per_s:g} samples/s (timed at batch {s.batch_size}: "
        f"{s.timed_samples_per_s:g} samples/s{offline})",
        f"queueing budget: p95 - max_batch_delay_ms - p95(batch) = {s.p95_ms:g} - {s.max_batch_delay_ms:g} - "
        f"{s.batch_p95_ms:g} = {s.queue_budget_ms:.4g} ms",
        f"lag threshold: floor(throughput x budget) = floor({s.samples_per_s:g} x {s.queue_budget_ms / 1000:.4g} s) "
        f"= {s.lag_threshold} queued requests per replica (KEDA lagThreshold and the HPA's {LAG_METRIC} "
        "averageValue)",
        f"replicas: ceil(rate / (throughput x (1 - headroom {s.headroom:g}))): base {s.base_rps:g}/s -> "
        f"{s.replicas_base}, peak {s.peak_rps:g}/s -> {s.replicas_peak}; minReplicas {s.min_replicas}, "
        f"maxReplicas {s.max_replicas}",
    ]
    if s.replicas_peak > s.partitions:
        lines.append(f"warning: peak needs {s.replicas_peak} replicas but the requests topic has {s.partitions} "
                     f"partitions (a consumer beyond {s.partitions} gets none"
                     + (f"; base needs {s.replicas_base}" if s.replicas_base > s.partitions else "")
                     + f"), so maxReplicas is {s.partitions} "
                     f"and serves about {s.partitions * s.samples_per_s * (1 - s.headroom):.4g} requests/s; raise "
                     "requests_partitions or make the model faster")
    lines.append(f"cpu: {s.cpu} (the threads PR4 measured with; also INFERENCE_TORCH_THREADS and the limit)"
                 if s.cpu else "cpu: the manifest's (the report does not say how many threads it measured with)")
    lines.append(f"memory: ceil(peak RSS {s.peak_rss_mb:g} MiB x (1 + headroom) / 64 Mi) x 64 Mi = {s.memory_mi}Mi, "
                 "limit twice that" if s.memory_mi else
                 "memory: the manifest's (the report has no peak memory: PR4 measures it with --isolation process)")
    if s.server_figure:
        lines.append(f"cross-check, LoadGen server: {s.server_figure}")
    return lines


def write_report(s: Sizing, lines: list[str], out_dir: Path) -> Path:
    path = out_dir / "sizing.md"
    path.write_text(f"# Worker sizing for {s.model}\n\n" + "\n".join(f"- {line}" for line in lines)
                    + "\n\nApply: `kubectl apply -k " + str(out_dir) + "`\n\n```json\n"
                    + json.dumps(asdict(s), indent=1) + "\n```\n")
    (out_dir / "sizing.json").write_text(json.dumps(asdict(s), indent=1) + "\n")  # for code: sizing_proof.py
    return path


def write_sizing(s: Sizing, out_dir: Path) -> tuple[list[str], list[Path]]:
    """Write ``out_dir/kustomization.yaml`` and ``out_dir/sizing.md`` (its numbers also as ``sizing.json``); returns
    the summary lines and the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = summary_lines(s)
    return lines, [write_overlay(s, out_dir), write_report(s, lines, out_dir)]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Size the worker Deployment, its HPA and its KEDA ScaledObject "
                                     "from PR4's measurements and PR2's batching settings.", add_help=add_help)
    parser.add_argument("--model", required=True, help="a name in the model registry, or an artifact path")
    parser.add_argument("--registry", default=None, help="model registry (default: PR2's settings' model_registry)")
    parser.add_argument("--report", default=None, help="an existing PR4 JSON report instead of measuring")
    parser.add_argument("--p95-ms", type=float, required=True, help="latency objective: p95 of a request (ms)")
    parser.add_argument("--peak-rps", type=float, required=True, help="peak load (requests/s)")
    parser.add_argument("--base-rps", type=float, required=True, help="base load (requests/s)")
    parser.add_argument("--headroom", type=float, default=0.25,
                        help="fraction of each replica's throughput kept free (default: 0.25)")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPUs per worker when measuring (default: 2, the Deployment's)")
    parser.add_argument("--output-dir", required=True, help="where kustomization.yaml and sizing.md go")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(args: argparse.Namespace) -> Sizing:
    objective = Objective(p95_ms=args.p95_ms, peak_rps=args.peak_rps, base_rps=args.base_rps,
                          headroom=args.headroom)
    objective.check()
    check_positive("--threads", args.threads)
    out_dir = Path(args.output_dir)
    artifact, batch, delay, batching_source = batching_settings(args.model, args.registry)
    if args.report:
        report_path = Path(args.report)
        if not report_path.is_file():
            raise UsageError(f"--report {report_path} does not exist")
    elif artifact is None:
        raise UsageError(f"--model {args.model!r} is neither a registry model with an artifact nor a file: "
                         "give an artifact, or --report with a PR4 report")
    else:
        name = args.model if artifact != Path(args.model) else artifact.stem
        report_path = measure(artifact, name, batch, args.threads, out_dir / "pr4")
    report = json.loads(report_path.read_text())
    sizing = size_from_report(report, args.model if args.report else row_name(report), objective,
                              source=str(report_path), max_batch_size=batch, max_batch_delay_ms=delay,
                              batching_source=batching_source, artifact=artifact)
    lines, paths = write_sizing(sizing, out_dir)
    print("\n".join(lines + [f"wrote {p}" for p in paths]))
    return sizing


def row_name(report: dict[str, Any]) -> str:
    """The one model of a report this command measured."""
    return report["models"][0]["model"]


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
