"""The report reads itself: its headline copies the figures of its tables, and every speed-up has one source."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from PR4_model_benchmarking.report_format import label
from PR4_model_benchmarking.report_schema import BenchmarkReport
from PR4_model_benchmarking.reports import headline_lines, summary_columns, to_html, to_markdown
from PR4_model_benchmarking.summary import add_comparisons, cpu_class, headline, model_row, per_batch_rows

ENV = {"cpu_model": "Test CPU 9000", "has_avx2": True, "has_avx512_vnni": True, "threads": 2, "torch": "x",
       "onnxruntime": "y", "load_average_start": 0.1}
# p50s: original 20 / 80 ms at batch 1 / 16, quantized 5 / 16, pruned 10 / 40 (but loses 3 points).
SAMPLES = {"original": {"1": [19.0, 20.0, 21.0], "16": [79.0, 80.0, 81.0]},
           "quantized": {"1": [4.0, 5.0, 6.0], "16": [15.0, 16.0, 17.0]},
           "pruned": {"1": [9.0, 10.0, 11.0], "16": [39.0, 40.0, 41.0]}}
INFO = {"original": {"size_mb": 94.0, "transform": "baseline", "weights_mb": 93.0},
        "quantized": {"size_mb": 24.0, "transform": "quantization", "weights_mb": 23.5},
        "pruned": {"size_mb": 40.0, "transform": "pruning", "weights_mb": 39.0}}
ACCURACY = {"original": 97.0, "quantized": 96.5, "pruned": 94.0}


def _report() -> dict:
    per_batch = per_batch_rows(SAMPLES, {}, "original")
    rows = []
    for name in SAMPLES:
        row = model_row(name, f"{name}.pt", INFO[name], [r for r in per_batch if r["model"] == name], primary=1,
                        isolated=False)
        rows.append({**row, "top1_pct": ACCURACY[name], "error": None})
    models = add_comparisons(rows, accuracy_tolerance_pt=1.0, primary=1)
    return {"created_at": "2026-12-01T00:00:00+00:00", "interrupted": False, "environment": ENV,
            "config": {"batch_sizes": [1, 16], "primary_batch_size": 1}, "models": models, "per_batch": per_batch,
            "samples_ms": SAMPLES, "server": {}, "notes": [], "headline": headline(models, ENV, 1.0, primary=1)}


def _md_table(md: str) -> list[dict[str, str]]:
    section = md.split("## Summary")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_speedups_come_from_the_per_batch_rows_only():
    report = _report()
    by_batch = {(r["model"], r["batch_size"]): r["speedup_x"] for r in report["per_batch"]}
    assert by_batch[("quantized", 1)] == 4.0 and by_batch[("quantized", 16)] == 5.0
    for row in report["models"]:
        assert row["speedup_b1_x"] == by_batch[(row["model"], 1)]
        assert "speedup_x" not in row  # every speed-up in a summary row names its batch size
        assert row["speedup_b16_x"] == by_batch[(row["model"], 16)]


def test_the_rows_fit_the_report_model_and_a_bad_row_fails_where_it_is_made():
    fields = {"tool": "test", "notes": [], **_report()}
    report = BenchmarkReport(**fields).model_dump(exclude_unset=True)
    assert report["models"] == fields["models"] and report["headline"] == fields["headline"]
    for bad in ({"speedup_b16_x": "fast"}, {"top1_pct": "high"}, {"verdict": None}):
        rows = [{**fields["models"][0], **bad}, *fields["models"][1:]]
        with pytest.raises(ValidationError, match=next(iter(bad))):
            BenchmarkReport(**{**fields, "models": rows})


def test_headline_figures_equal_the_table_figures():
    report = _report()
    head = report["headline"]
    assert head["best"] == "quantized"  # pruned is faster than the original but loses 3 points: "worse"
    table = {row[label("model")]: row for row in _md_table(to_markdown(report))}
    best = {key: table["quantized"][label(key)] for key in ("speedup_b1_x", "speedup_b16_x", "size_mb",
                                                              "top1_change_pts")}
    assert float(best["speedup_b1_x"]) == head["speedup_b1_x"] == 4.0
    assert float(best["speedup_b16_x"]) == head["speedup_b16_x"] == 5.0
    assert float(best["size_mb"]) == head["best_size_mb"] and float(best["top1_change_pts"]) == -0.5
    assert head["cpu_class"] == "AVX512-VNNI" and head["variants"] == {"quantized": "quantization",
                                                                        "pruned": "pruning"}
    text = " ".join(headline_lines(report))
    assert "Best variant: quantized, 24 MB (25.5% of the original), 4.00x at batch 1, 5.00x at batch 16, " \
           "accuracy -0.50 points" in text
    assert "Test CPU 9000 (AVX512-VNNI int8 kernels), 2 threads" in text
    # each speed-up appears once in the tables: not again in the per-batch table
    assert "Speed-up" not in to_markdown(report).split("## Latency and throughput")[1]


def test_headline_leads_both_reports_and_tables_fit_a_screen():
    report = _report()
    md, page = to_markdown(report), to_html(report)
    assert md.splitlines()[2].startswith("Compared original (94 MB) with: quantized (quantization)")
    assert page.index("Best variant: quantized") < page.index("<h2>Summary</h2>")
    assert len(summary_columns(report)) <= 14
    assert all(len(line) <= 200 for line in md.split("## Environment")[0].splitlines() if line.startswith("|"))


@pytest.mark.parametrize(("flags", "expected"), [({"has_amx_int8": True, "has_avx512_vnni": True}, "AMX"),
                                                 ({"has_avx_vnni": True, "has_avx2": True}, "AVX-VNNI"),
                                                 ({"has_avx2": True}, "AVX2"), ({}, "no AVX2")])
def test_cpu_class(flags, expected):
    assert cpu_class(flags) == expected


def test_no_best_variant_is_said_plainly():
    report = _report()
    for row in report["models"][1:]:
        row["top1_pct"] = 90.0
    report["headline"] = headline(report["models"], ENV, 1.0, primary=1)
    assert report["headline"]["best"] is None
    assert any(re.match("Best variant: none", line) for line in headline_lines(report))
