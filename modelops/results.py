"""Flat result rows: their shared key vocabulary (:class:`ResultRow`), and writing them as CSV, JSON or Markdown."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

RESULT_FORMATS = ("csv", "json", "markdown")
TOP1 = "top1_pct"
# A speed-up key (speedup_key). A pattern string, not re.compile: the core binds no module-level name to a call.
SPEEDUP_PATTERN = r"speedup_b\d+_x"


class ResultRow(BaseModel):
    """One model's row in a results table: PR3's pipeline builds its rows through it and PR4's benchmark rows
    (``ModelSummary``) extend it, so a figure of the wrong kind fails where the row is made.

    Keys carry their units, and the same key means the same thing in every row the project writes (PR3's pipeline,
    PR4's benchmark, the main job's report): ``top1_pct`` is the test-split top-1 accuracy in percent,
    ``top1_change_pts`` the top-1 against the reference row in percentage points, ``speedup_b<N>_x`` a speed-up
    over the reference at batch N (:func:`speedup_key`). PR3's scripts use the same stems in their summaries,
    trial rows and training history: ``val_top1_pct`` / ``train_top1_pct`` (the validation / training split),
    ``top1_drop_pts`` (the reference's top-1 minus the row's, in points), ``speedup_x`` (at the run's
    ``--latency-batch-size``, which its summary records). Only what both tables have is declared here; a table's
    own figures are extra keys (``extra="allow"``). ``model_dump(exclude_unset=True)`` gives back exactly the keys
    the row was built with (the declared ones first, then the extras in the order given).
    """

    model_config = ConfigDict(extra="allow")
    # What the model is: its name in the table, architecture, artifact format and file, the file's size, parameters.
    model: str
    arch: str | None = None
    format: str | None = None
    path: str | None = None
    size_mb: float | None = None
    params_m: float | None = None
    # How accurate: the test-split top-1 (percent) and its change against the reference row (points).
    top1_pct: float | None = None
    top1_change_pts: float | None = None

    @model_validator(mode="after")
    def _speedups_are_ratios(self) -> ResultRow:
        """The per-batch speed-ups are extra keys (one per timed batch size, so they cannot be declared):
        check them too."""
        for key, value in (self.model_extra or {}).items():
            if re.fullmatch(SPEEDUP_PATTERN, key) and value is not None and not isinstance(value, int | float):
                raise ValueError(f"{key} must be a ratio or null, got {value!r}")
        return self


def speedup_key(batch_size: int) -> str:
    """The key of a speed-up over the reference at one batch size (``speedup_b16_x``: the reference's median
    latency over the row's, both at batch 16)."""
    return f"speedup_b{batch_size}_x"


def _rows(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(results)] if isinstance(results, Mapping) else [dict(r) for r in results]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None, at any depth (JSON has no NaN)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def markdown_table(results: Mapping[str, Any] | Sequence[Mapping[str, Any]], floatfmt: str = ".4g") -> str:
    from tabulate import tabulate

    rows = _rows(results)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return tabulate([[row.get(c, "") for c in columns] for row in rows], headers=columns, tablefmt="github",
                    floatfmt=floatfmt)


def write_results(
    path: str | Path, results: Mapping[str, Any] | Sequence[Mapping[str, Any]], fmt: str | None = None
) -> Path:
    """Write ``results`` (one flat dict or a list of them) to ``path``; format from ``fmt`` or the suffix."""
    path = Path(path)
    fmt = fmt or {".csv": "csv", ".json": "json", ".md": "markdown"}.get(path.suffix, "json")
    if fmt not in RESULT_FORMATS:
        raise ValueError(f"Unknown results format {fmt!r}. Choose one of: {', '.join(RESULT_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _rows(results)
    if fmt == "json":
        payload = rows[0] if isinstance(results, Mapping) else rows
        path.write_text(json.dumps(json_safe(payload), indent=2, default=str) + "\n")
    elif fmt == "csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text(markdown_table(rows) + "\n")
    return path
