"""One typed result row: PR3's pipeline rows and PR4's benchmark rows are both ``modelops.results.ResultRow``s, so a
bad figure fails where the row is built, and building a row keeps its keys, values and column order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelops.results import ResultRow, speedup_key
from PR3_model_optimization.optimize_pipeline import result_row
from PR4_model_benchmarking.report_schema import ModelSummary

# A measured pipeline row, in the pipeline table's column order (extras between and after the declared keys).
PIPELINE_ROW = {"model": "pruned", "arch": "resnet18", "format": "state_dict", "size_mb": 21.3,
                "size_pct_of_original": 48.1, "params_m": 5.6, "top1_pct": 97.5, "top1_change_pts": -0.4,
                "latency_ms_p50_b1": 3.2, speedup_key(1): 1.4, "latency_ms_p50_b16": 20.1, speedup_key(16): 1.9,
                "description": "structured pruning + fine-tune", "path": "models/optimized/pruned.pt"}
BAD = ({speedup_key(16): "fast"}, {"top1_pct": "high"}, {"size_mb": "big"})


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: next(iter(bad)))
def test_a_bad_figure_fails_where_the_row_is_built(bad: dict):
    key = next(iter(bad))
    with pytest.raises(ValidationError, match=key):
        ResultRow(**{**PIPELINE_ROW, **bad})
    with pytest.raises(ValidationError, match=key):
        result_row({**PIPELINE_ROW, **bad})
    with pytest.raises(ValidationError, match=key):
        ModelSummary(**{**PIPELINE_ROW, **bad}, verdict="faster")


def test_a_speedup_may_be_null_and_other_extras_are_free():
    row = ResultRow(model="quantized", **{speedup_key(1): None, "speedup_note": "not a ratio key"})
    assert row.model_dump(exclude_unset=True) == {"model": "quantized", speedup_key(1): None,
                                                  "speedup_note": "not a ratio key"}


def test_the_pipeline_row_keeps_its_keys_values_and_column_order():
    row = result_row(PIPELINE_ROW)
    assert list(row.items()) == list(PIPELINE_ROW.items())
    listed = {k: PIPELINE_ROW[k] for k in ("model", "arch", "format", "size_mb", "size_pct_of_original", "params_m",
                                           "description", "path")}  # the --no-measure listing
    assert list(result_row(listed).items()) == list(listed.items())


def test_benchmark_rows_are_result_rows_and_keep_the_report_column_order():
    assert issubclass(ModelSummary, ResultRow)
    given = {"model": "quantized", "path": "q.onnx", "format": "onnx", "backend": "onnxruntime", "arch": "resnet18",
             "transform": "quantization", "size_mb": 24.0, speedup_key(1): 4.0, "top1_pct": 96.5,
             "top1_change_pts": -0.5, "verdict": "faster"}
    summary = ModelSummary(**given)
    assert isinstance(summary, ResultRow)
    dumped = summary.model_dump(exclude_unset=True)
    assert dumped == given
    # The report's own columns first, in ModelSummary.COLUMNS' order, then arch and the extras as given.
    assert list(dumped) == ["model", "path", "format", "backend", "size_mb", "top1_pct", "top1_change_pts",
                            "verdict", "arch", "transform", speedup_key(1)]
