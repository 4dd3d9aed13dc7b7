"""From raw samples to the report's rows: per-batch statistics, speed-ups, per-model summaries, the headline.

Every speed-up in a report comes from :func:`per_batch_rows` (the reference's p50 over the model's p50 at the
same batch size); the summary rows and the headline copy those figures, never recompute them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelops.results import speedup_key
from modelops.selection import best_variant
from modelops.timing import latency_stats

HEADLINE_BATCHES = (1, 16)


def offline_throughput(per_batch: Sequence[dict[str, Any]]) -> tuple[float | None, int | None]:
    """Best samples/s over the timed batch sizes and the batch size that gave it."""
    best = max(per_batch, key=lambda row: row.get("samples_per_s") or 0.0, default=None)
    if not best or not best.get("samples_per_s"):
        return None, None
    return best["samples_per_s"], best["batch_size"]


def verdicts(rows: Sequence[dict[str, Any]], *, speed: str, speed_margin: float = 1.1, size_margin: float = 0.9,
             accuracy_tolerance_pt: float = 1.0) -> list[str]:
    """One word per model against the first: baseline, best, faster, smaller, same, slower, worse or failed.

    "worse" means it lost more than ``accuracy_tolerance_pt`` top-1 points (or is slower and no smaller);
    "best" is the fastest model by the ``speed`` key (a speed-up) that is not worse, if it is at least
    ``speed_margin`` faster.
    """
    words: list[str] = []
    for i, row in enumerate(rows):
        if row.get("error"):
            words.append("failed")
            continue
        if i == 0:
            words.append("baseline")
            continue
        speedup, size_ratio = row.get(speed), row.get("size_ratio")
        delta = row.get("top1_change_pts")
        if delta is not None and delta < -accuracy_tolerance_pt:
            words.append("worse")
        elif speedup is not None and speedup >= speed_margin:
            words.append("faster")
        elif size_ratio is not None and size_ratio <= size_margin:
            words.append("smaller")
        elif speedup is not None and speedup < 1 / speed_margin:
            words.append("slower" if size_ratio is None or size_ratio < 1 else "worse")
        else:
            words.append("same")
    candidates = [i for i, w in enumerate(words) if w == "faster"]
    if candidates:
        words[max(candidates, key=lambda i: rows[i][speed])] = "best"
    return words


def per_batch_rows(samples: Mapping[str, Mapping[str, list[float]]], memory: Mapping[str, Mapping[str, dict]],
                   reference: str | None) -> list[dict[str, Any]]:
    """One row per model and batch size: latency statistics, throughput, peak memory, speed-up over ``reference``
    (``speedup_x``: at the row's ``batch_size``, like its latency)."""
    rows = []
    for name, per in samples.items():
        for b, values in per.items():
            if not values:
                continue
            stats = latency_stats(values)
            rows.append({"model": name, "batch_size": int(b), "iters": len(values), **stats,
                         "samples_per_s": round(int(b) * 1e3 / stats["latency_ms_mean"], 3),
                         **memory.get(name, {}).get(str(b), {})})
    ref = {r["batch_size"]: r["latency_ms_p50"] for r in rows if r["model"] == reference}
    for row in rows:
        base = ref.get(row["batch_size"])
        row["speedup_x"] = round(base / row["latency_ms_p50"], 3) if base and row["latency_ms_p50"] else None
    return rows


def _memory_fields(batches: list[dict[str, Any]], info: Mapping[str, Any], isolated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"weights_mb": info.get("weights_mb")}
    peaks = [r for r in batches if r.get("peak_rss_mb") is not None]
    if isolated and peaks:
        out["load_rss_mb"] = info.get("load_rss_mb")
        out["model_rss_mb"] = max(r["rss_rise_mb"] for r in peaks)
        out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in peaks)
    cuda = [r["cuda_max_allocated_mb"] for r in batches if r.get("cuda_max_allocated_mb") is not None]
    if cuda:
        out["cuda_max_allocated_mb"] = max(cuda)
    return out


def model_row(name: str, path: str, info: Mapping[str, Any], batches: list[dict[str, Any]], *,
              primary: int, isolated: bool) -> dict[str, Any]:
    """One model's summary: what it is, its latency at the primary batch size, a speed-up per timed batch size
    (``speedup_b<N>_x``), memory."""
    at_primary = next((r for r in batches if r["batch_size"] == primary), {})
    best, best_b = offline_throughput(batches)
    params, macs = info.get("params"), info.get("macs")
    return {
        "model": name, "path": str(path), "format": info.get("format"), "backend": info.get("backend"),
        "arch": info.get("arch"), "transform": info.get("transform"), "size_mb": info.get("size_mb"),
        "params_m": round(params / 1e6, 4) if params else None, "macs_m": round(macs / 1e6, 3) if macs else None,
        "batch_size": primary,
        **{k: at_primary.get(k) for k in ("latency_ms_mean", "latency_ms_std", "latency_ms_p50", "latency_ms_p90",
                                          "latency_ms_p95", "latency_ms_p99")},
        **{speedup_key(r["batch_size"]): r["speedup_x"] for r in batches},
        "best_samples_per_s": best, "best_batch_size": best_b,
        **_memory_fields(batches, info, isolated), "load_s": info.get("load_s"),
    }


def add_comparisons(rows: list[dict[str, Any]], accuracy_tolerance_pt: float, *, primary: int) -> list[dict[str, Any]]:
    """Size ratio, top-1 change and verdict of each row against the first; the verdict's speed is the speed-up at
    the ``primary`` batch size (a failed row, or any row when the first failed, has none)."""
    speed = speedup_key(primary)
    ref = rows[0] if rows else {}
    for row in rows:
        ok = not ref.get("error") and not row.get("error")
        row["size_ratio"] = (round(row["size_mb"] / ref["size_mb"], 4)
                             if ok and ref.get("size_mb") and row.get("size_mb") else None)
        row["top1_change_pts"] = (round(row["top1_pct"] - ref["top1_pct"], 3)
                                  if ok and ref.get("top1_pct") is not None and row.get("top1_pct") is not None
                                  else None)
        if not ok:
            row[speed] = None
    words = verdicts(rows, speed=speed, accuracy_tolerance_pt=accuracy_tolerance_pt)
    for row, word in zip(rows, words, strict=True):
        row["verdict"] = word
    return rows


def cpu_class(env: Mapping[str, Any]) -> str:
    """The CPU feature class that decides int8 kernels: AMX, AVX512-VNNI, AVX-VNNI, AVX2 or none of them."""
    if env.get("has_amx_int8"):
        return "AMX"
    if env.get("has_avx512_vnni"):
        return "AVX512-VNNI"
    if env.get("has_avx_vnni"):
        return "AVX-VNNI"
    return "AVX2" if env.get("has_avx2") else "no AVX2"


def best_row(models: Sequence[dict[str, Any]], max_drop_pt: float, *, primary: int) -> dict[str, Any] | None:
    """The variant the report recommends, by the project's one rule (:func:`modelops.selection.best_variant`): the
    fastest at the ``primary`` batch size that loses at most ``max_drop_pt`` top-1 points; None if that is the
    reference itself."""
    if not models:
        return None
    ref = models[0]["model"]
    best = best_variant(models, speed=speedup_key(primary), reference=ref, max_drop=max_drop_pt)
    return None if best == ref else dict(next(r for r in models if r["model"] == best))


def headline(models: Sequence[dict[str, Any]], env: Mapping[str, Any], max_drop_pt: float, *,
             primary: int) -> dict[str, Any]:
    """The figures a reader acts on, copied from the summary rows: what was done, the best variant, the CPU."""
    ref = models[0] if models else {}
    best = best_row(models, max_drop_pt, primary=primary)
    out: dict[str, Any] = {
        "reference": ref.get("model"), "reference_size_mb": ref.get("size_mb"),
        "reference_top1_pct": ref.get("top1_pct"),
        "variants": {r["model"]: r.get("transform") or r.get("format") for r in models[1:]},
        "cpu_model": env.get("cpu_model"), "cpu_class": cpu_class(env), "threads": env.get("threads"),
        "best": best["model"] if best else None, "max_top1_drop_pts": max_drop_pt,
    }
    if best:
        out.update({"best_size_mb": best.get("size_mb"), "best_size_ratio": best.get("size_ratio"),
                    "best_top1_change_pts": best.get("top1_change_pts"),
                    **{speedup_key(b): best.get(speedup_key(b)) for b in HEADLINE_BATCHES}})
    return out
