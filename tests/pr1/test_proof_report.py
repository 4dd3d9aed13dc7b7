"""The sizing proof's latency verdict: a p95 objective holds when 95% of the requests sent were answered within it,
and a request with no answer counts as a miss."""

from __future__ import annotations

from PR1_horizontal_pod_autoscaling.cluster.proof_report import share_within


def request(status: str, latency_ms: float | None = None) -> dict:
    return {"status": status, "latency_ms": latency_ms}


def test_unanswered_requests_count_as_misses() -> None:
    answered = [request("succeeded", 100.0)] * 18
    assert share_within([*answered, request("succeeded", 1500.0), request("error: ClientOSError")], 1000) == 0.9
    assert share_within([*answered, request("succeeded", 999.0), request("timeout")], 1000) == 0.95


def test_no_requests_meet_nothing() -> None:
    assert share_within([], 1000) == 0.0
