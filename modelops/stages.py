"""Run a multi-stage job once: a stage whose summary and outputs exist is reused, so a stopped run resumes.

Each stage writes its summary to ``<summary_dir>/<stage>.json``. On the next run a stage is reused when that
summary exists and every output it names is ready; ``force=True`` redoes every stage. The main job and
PR3's optimization pipeline both run their stages through :class:`StageRunner`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelops.results import write_results

logger = logging.getLogger(__name__)


class StageRunner:
    """Runs named stages, reusing those already done.

    Args:
        summary_dir: where each stage's ``<name>.json`` summary is written (created if missing).
        force: redo every stage even when its summary and outputs exist (default: False).
        ready: whether one output of a stage is usable (default: the path exists).
    """

    def __init__(self, summary_dir: str | Path, force: bool = False,
                 ready: Callable[[Path], bool] = Path.exists) -> None:
        self.summary_dir = Path(summary_dir)
        self.summary_dir.mkdir(parents=True, exist_ok=True)
        self.force = force
        self.ready = ready
        self.results: dict[str, dict[str, Any]] = {}

    def summary_path(self, name: str) -> Path:
        return self.summary_dir / f"{name}.json"

    def is_done(self, name: str, outputs: Sequence[str | Path] = ()) -> bool:
        """True when the stage's summary exists and every output is ready (and ``force`` is off)."""
        return (not self.force and self.summary_path(name).exists()
                and all(self.ready(Path(p)) for p in outputs))

    def run(self, name: str, build: Callable[[], dict[str, Any]], outputs: Sequence[str | Path] = ()) -> dict:
        """The stage's summary: reused from its JSON (with ``reused: True``) or built now and written.

        Args:
            name: the stage's name (its summary file is ``<name>.json``).
            build: does the work and returns the stage's summary (JSON-serialisable).
            outputs: files the stage makes; all must be ready for the stage to count as done.
        """
        summary_path = self.summary_path(name)
        if self.is_done(name, outputs):
            logger.info("[%s] reusing %s (--force redoes it)", name, summary_path)
            self.results[name] = {**json.loads(summary_path.read_text()), "reused": True}
            return self.results[name]
        logger.info("[%s] running", name)
        started = time.perf_counter()
        result = {**build(), "stage_s": round(time.perf_counter() - started, 1)}
        write_results(summary_path, result, "json")
        self.results[name] = json.loads(summary_path.read_text())
        return self.results[name]
