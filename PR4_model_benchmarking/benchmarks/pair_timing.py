"""Speed-up ratios of an fp32 / int8 pair, measured two ways: PR4's benchmark and a plain outside loop.

Shared by ``check_outside_timer.py`` and ``docs/measurements/timing_policy.py``. A ratio is the fp32 model's
median latency over the int8 model's, at one batch size.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLAIN_LOOP = Path(__file__).with_name("plain_loop.py")


def plain_loop_ms(path: Path, batch_size: int, samples: int, warmup: int, threads: int) -> list[float]:
    """Per-call milliseconds of ``path`` alone in a fresh process that imports only its runtime."""
    done = subprocess.run([sys.executable, str(PLAIN_LOOP), str(path), str(batch_size), str(samples), str(warmup),
                           str(threads)], capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()
        raise RuntimeError(f"plain loop on {path} failed: {last[-1] if last else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])["times_ms"]


def outside_ratios(paths: dict[str, Path], batch_sizes: Sequence[int], *, samples: int, warmup: int,
                   threads: int) -> dict[int, dict[str, float]]:
    """``{batch: {fp32_ms, int8_ms, ratio}}`` from plain loops, each model alone in its own fresh process."""
    out: dict[int, dict[str, float]] = {}
    for b in batch_sizes:
        p50 = {name: statistics.median(plain_loop_ms(paths[name], b, samples, warmup, threads))
               for name in ("fp32", "int8")}
        out[b] = {"fp32_ms": round(p50["fp32"], 3), "int8_ms": round(p50["int8"], 3),
                  "ratio": round(p50["fp32"] / p50["int8"], 3)}
    return out


def benchmark_ratios(paths: dict[str, Path], batch_sizes: Sequence[int], *, iters: int, threads: int,
                     output_dir: Path, extra: Sequence[str] = ()) -> dict[int, dict[str, float]]:
    """``{batch: {fp32_ms, int8_ms, ratio}}`` from PR4's benchmark (its defaults unless ``extra`` flags say)."""
    from PR4_model_benchmarking import benchmark_models

    argv = ["--models", f"fp32:{paths['fp32']},int8:{paths['int8']}", "--batch-sizes",
            ",".join(map(str, batch_sizes)), "--iters", str(iters), "--scenarios", "none", "--dataset", "fake",
            "--accuracy-samples", "0", "--threads", str(threads), "--report-format", "json",
            "--output-dir", str(output_dir), "--no-progress", *extra]
    report = benchmark_models.run_benchmark(benchmark_models.get_args_parser().parse_args(argv))["report"]
    rows = {(r["model"], r["batch_size"]): r for r in report["per_batch"]}
    return {b: {"fp32_ms": rows[("fp32", b)]["latency_ms_p50"], "int8_ms": rows[("int8", b)]["latency_ms_p50"],
                "ratio": rows[("int8", b)]["speedup_x"]} for b in batch_sizes}


def relative_gap(a: float, b: float) -> float:
    """How far ``a`` is from ``b``, as a fraction of ``b``."""
    return abs(a / b - 1.0)


def comparison_rows(first: dict[int, dict[str, float]], second: dict[int, dict[str, float]], *, names: tuple[str, str],
                    tolerance: float) -> list[dict[str, Any]]:
    """One row per batch size: both ratios, their gap, and whether it is within ``tolerance``."""
    rows = []
    for b in first:
        gap = relative_gap(first[b]["ratio"], second[b]["ratio"])
        rows.append({"batch_size": b, f"{names[0]}_ratio": first[b]["ratio"], f"{names[1]}_ratio": second[b]["ratio"],
                     "gap_pct": round(gap * 100, 1), "agree": gap <= tolerance})
    return rows
