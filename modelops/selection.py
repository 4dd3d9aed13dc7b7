"""The one rule that picks the best variant: the fastest whose accuracy stays within a budget.

Used by the quantization search (which trial to keep), PR3's optimization pipeline, PR4's report headline and the
main job (which variant to profile and serve); :func:`best_variant` is the one place the last three name it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelops.results import TOP1

# The main job and the pipeline call a variant "as accurate" when it loses at most this many top-1 points.
DEFAULT_MAX_ACCURACY_DROP_PTS = 1.5

Row = Mapping[str, Any]


def within_budget(accuracy: float | None, reference: float | None, max_drop: float | None) -> bool:
    """Whether ``accuracy`` is at most ``max_drop`` points below ``reference`` (always, without a budget)."""
    if max_drop is None or reference is None:
        return True
    return accuracy is not None and round(reference - accuracy, 4) <= max_drop


def accuracy_within(reference: float | None, max_drop: float | None, accuracy: str) -> Callable[[Row], bool]:
    """A ``meets_budget`` predicate for :func:`pick_best` that reads the row's ``accuracy`` key."""
    return lambda row: within_budget(row.get(accuracy), reference, max_drop)


def pick_best(rows: Sequence[Row], *, speed: str, accuracy: str, meets_budget: Callable[[Row], bool]) -> Row | None:
    """The fastest row that meets the accuracy budget (ties: the more accurate); if none does, the most
    accurate (ties: the faster). Rows with an ``error`` or without a ``speed`` never win; None if no row can.

    Args:
        rows: candidates, e.g. quantization trials or benchmarked variants.
        speed: the key of the speed-up (larger is faster).
        accuracy: the key of the accuracy (larger is better; a missing one ranks last).
        meets_budget: whether a row's accuracy is within the budget (see :func:`accuracy_within`).
    """
    def acc(row: Row) -> float:
        value = row.get(accuracy)
        return -math.inf if value is None else value

    done = [r for r in rows if not r.get("error") and r.get(speed) is not None]
    passing = [r for r in done if meets_budget(r)]
    if passing:
        return max(passing, key=lambda r: (r[speed], acc(r)))
    return max(done, key=lambda r: (acc(r), r[speed]), default=None)


def best_variant(rows: Sequence[Row], *, speed: str, accuracy: str = TOP1, reference: str = "original",
                 max_drop: float | None = DEFAULT_MAX_ACCURACY_DROP_PTS) -> str:
    """The ``model`` name of the fastest row whose accuracy is at most ``max_drop`` points below the row named
    ``reference`` (:func:`pick_best`, the reference a candidate too); ``reference`` when no row can win.

    Args:
        rows: result rows, each with a ``model`` name.
        speed: the key of the speed-up the choice is made on (larger is faster).
        accuracy: the key of the accuracy (default: ``top1_pct``).
        reference: the ``model`` whose accuracy sets the budget (default: "original").
        max_drop: the budget in points (default: :data:`DEFAULT_MAX_ACCURACY_DROP_PTS`; None: no budget).
    """
    ref = next((r for r in rows if r.get("model") == reference), {})
    best = pick_best(rows, speed=speed, accuracy=accuracy,
                     meets_budget=accuracy_within(ref.get(accuracy), max_drop, accuracy))
    return best["model"] if best else reference
