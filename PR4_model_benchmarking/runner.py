"""PR4's model session: the core's :class:`~modelops.model_session.ModelSession` plus the server scenario.

The benchmark runs one :class:`BenchSession` per model through :func:`modelops.model_process.start_session`,
by default in its own spawned process (:class:`modelops.model_process.WorkerProxy`), so each model's memory
is its own and the parent interleaves the models turn by turn (:func:`modelops.model_process.time_batch`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelops.model_session import ModelSession


class BenchSession(ModelSession):
    """A :class:`ModelSession` that also answers a real-time query stream (the server scenario)."""

    def serve(self, arrivals_s: list[float], max_seconds: float) -> dict[str, Any]:
        """Answer batch-1 queries arriving at ``arrivals_s`` (seconds from start) with one server."""
        from PR4_model_benchmarking.scenarios import run_server_queries

        batch = self._batch(1)
        return run_server_queries(lambda: self.predictor(batch), np.asarray(arrivals_s), max_seconds=max_seconds,
                                  device=self.device)
