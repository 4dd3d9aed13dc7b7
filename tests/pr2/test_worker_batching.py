"""The worker's batching loop: an explicit setting beats the registry entry's batching, and a partial batch runs at
once only when nothing else is queued for the worker."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from modelops.errors import UsageError
from PR2_async_inference.model_worker import ModelWorker
from PR2_async_inference.registry import load_registry
from PR2_async_inference.settings import Settings


def test_batching_explicit_setting_beats_registry(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text("models:\n  m:\n    artifact: missing.pt\n    max_batch_size: 4\n    max_batch_delay_ms: 7\n")
    registry = load_registry(reg)
    assert ModelWorker(Settings(model_registry=reg), registry).batching("m") == (4, 0.007)
    explicit = Settings(model_registry=reg, max_batch_size=1)
    assert ModelWorker(explicit, registry).batching("m") == (1, 0.007)
    with pytest.raises(UsageError, match="Choose one of: m"):
        registry.get("image_classification")


def test_adaptive_batching_runs_a_partial_batch_only_when_nothing_else_is_queued(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text("models:\n  m:\n    artifact: missing.pt\n    max_batch_size: 8\n    max_batch_delay_ms: 1000\n")
    record = SimpleNamespace(headers=[("model", b"m")])
    for adaptive, caught_up, expected in [(True, True, True), (True, False, False), (False, True, False)]:
        worker = ModelWorker(Settings(model_registry=reg, adaptive_batching=adaptive), load_registry(reg))
        worker._buffer, worker._caught_up = [record], caught_up
        assert worker._should_flush(time.monotonic()) is expected
    worker._buffer = [record] * 8  # a full batch never waits
    assert worker._should_flush(time.monotonic()) is True
