"""The metrics' names: PR1's HPA manifests and prometheus-adapter rules read ``metrics.METRIC_NAMES``, so those
are exactly the names the API and the worker expose."""

from __future__ import annotations

from prometheus_client import REGISTRY

from PR2_async_inference import metrics


def exposed() -> dict[str, list]:
    """Every inference_* family this process exposes, by the name a query uses ({name: samples})."""
    return {f"{f.name}_total" if f.type == "counter" else f.name: f.samples
            for f in REGISTRY.collect() if f.name.startswith("inference_")}


def test_the_shared_names_are_exactly_the_exposed_ones():
    assert set(exposed()) == set(metrics.METRIC_NAMES.values())


def test_a_counted_request_is_exposed_under_the_shared_name():
    metrics.REQUESTS_RECEIVED.labels("unit").inc()
    metrics.CONSUMER_LAG.labels("t", "0").set(3)
    samples = exposed()
    received = metrics.METRIC_NAMES["requests_received"]
    assert any(s.name == received and s.labels == {"model": "unit"} and s.value >= 1 for s in samples[received])
    lag = metrics.METRIC_NAMES["consumer_lag"]
    assert any(s.name == lag and s.labels == {"topic": "t", "partition": "0"} and s.value == 3 for s in samples[lag])
