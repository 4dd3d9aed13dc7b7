"""The one timing method on fakes: turn order, warm-up, pauses, statistics, failures; a fake clock, no wall time."""

from __future__ import annotations

import pytest

from modelops.timing import (
    ALTERNATING,
    POLICY,
    TimingPolicy,
    Turn,
    latency_stats,
    run_turns,
    take_turn,
)


class FakeMachine:
    """A clock that moves only when a fake model runs or the timer sleeps.

    ``costs_ms`` is each model's time per call; its first ``slow_first`` calls take ``slow_ms`` (first-call
    set-up). ``spin_ms`` models idle threads that still spin after another model's call: a call that starts
    less than ``spin_window_ms`` after a different model's call pays ``spin_ms`` more.
    """

    def __init__(self, costs_ms: dict[str, float], *, slow_first: int = 0, slow_ms: float = 0.0,
                 spin_ms: float = 0.0, spin_window_ms: float = 10.0) -> None:
        self.now = 0.0
        self.costs_ms = costs_ms
        self.slow_first, self.slow_ms = slow_first, slow_ms
        self.spin_ms, self.spin_window_ms = spin_ms, spin_window_ms
        self.calls: list[str] = []
        self.sleeps: list[float] = []
        self.last: tuple[str, float] | None = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def model(self, name: str):
        def call() -> str:
            cost = self.costs_ms[name]
            if self.calls.count(name) < self.slow_first:
                cost = self.slow_ms
            if self.last and self.last[0] != name and (self.now - self.last[1]) * 1e3 < self.spin_window_ms:
                cost += self.spin_ms
            self.calls.append(name)
            self.now += cost / 1e3
            self.last = (name, self.now)
            return name

        return call

    def turns(self, names: str) -> dict[str, Turn]:
        """One :data:`Turn` per model, each timing the model's calls on this machine's clock."""
        return {name: (lambda untimed, timed, fn=self.model(name): take_turn(fn, untimed, timed, clock=self.clock))
                for name in names}


def test_turns_warm_up_then_interleave_with_an_untimed_opening_call():
    machine = FakeMachine({"A": 10.0, "B": 2.0})
    policy = TimingPolicy(warmup=2, calls_per_turn=3, untimed_per_turn=1, settle_s=0.05)
    samples = run_turns(machine.turns("AB"), 7, policy, sleep=machine.sleep)
    # warm-up A A B B, then turns of 1 untimed + 3, 3, 1 timed calls
    assert "".join(machine.calls) == "AABB" + "AAAABBBB" * 2 + "AABB"
    assert machine.sleeps == [0.05] * 6  # one pause before every turn
    assert samples == {"A": [pytest.approx(10.0)] * 7, "B": [pytest.approx(2.0)] * 7}


def test_warm_up_keeps_slow_first_calls_out_of_the_samples():
    machine = FakeMachine({"A": 5.0}, slow_first=3, slow_ms=500.0)
    warm = run_turns(machine.turns("A"), 4, TimingPolicy(warmup=3, calls_per_turn=4, untimed_per_turn=0,
                                                         settle_s=0.0))["A"]
    assert warm == [pytest.approx(5.0)] * 4 and machine.calls == ["A"] * 7
    cold_machine = FakeMachine({"A": 5.0}, slow_first=3, slow_ms=500.0)
    cold = run_turns(cold_machine.turns("A"), 4, TimingPolicy(warmup=0, calls_per_turn=4, untimed_per_turn=0,
                                                              settle_s=0.0))["A"]
    assert cold[:3] == [pytest.approx(500.0)] * 3 and latency_stats(cold)["latency_ms_p50"] > 5.0


def test_turns_keep_spinning_threads_off_the_next_model_where_alternation_charges_them():
    costs = {"A": 10.0, "B": 4.0}
    turns = FakeMachine(costs, spin_ms=6.0)
    fair = run_turns(turns.turns("AB"), 6, POLICY, sleep=turns.sleep)
    assert fair == {"A": [pytest.approx(10.0)] * 6, "B": [pytest.approx(4.0)] * 6}
    alternating = FakeMachine(costs, spin_ms=6.0)
    unfair = run_turns(alternating.turns("AB"), 6, ALTERNATING, sleep=alternating.sleep)
    assert "".join(alternating.calls[-4:]) == "ABAB"
    assert unfair["B"] == [pytest.approx(10.0)] * 6  # 4 ms of work + 6 ms of the other model's spinning


def test_run_turns_statistics_match_the_samples_it_took():
    machine = FakeMachine({"A": 3.0})
    costs = iter([1.0, 2.0, 3.0, 4.0, 100.0] * 4)

    def turn(untimed: int, timed: int) -> list[float]:
        for _ in range(untimed):
            machine.now += 0.001
        return [next(costs) for _ in range(timed)]

    samples = run_turns({"A": turn}, 5, TimingPolicy(warmup=0, calls_per_turn=5, untimed_per_turn=0, settle_s=0))
    stats = latency_stats(samples["A"])
    assert samples["A"] == [1.0, 2.0, 3.0, 4.0, 100.0]
    assert stats["latency_ms_p50"] == 3.0 and stats["latency_ms_max"] == 100.0 and stats["latency_ms_mean"] == 22.0


def test_run_turns_drops_a_failing_model_and_goes_on():
    failures: list[tuple[str, str]] = []
    counted: list[tuple[str, int]] = []

    def good(untimed: int, timed: int) -> list[float]:
        return [1.0] * timed

    def bad(untimed: int, timed: int) -> list[float]:
        if timed:
            raise RuntimeError("worker died")
        return []

    samples = run_turns({"bad": bad, "good": good}, 4, TimingPolicy(warmup=1, calls_per_turn=2, settle_s=0),
                        on_error=lambda name, exc: failures.append((name, str(exc))),
                        on_turn=lambda name, n: counted.append((name, n)))
    assert samples == {"bad": [], "good": [1.0] * 4}
    assert failures == [("bad", "worker died")] and counted == [("good", 2), ("good", 2)]
    with pytest.raises(RuntimeError, match="worker died"):
        run_turns({"bad": bad}, 1)


def test_run_turns_stops_when_enough_or_at_the_cap():
    def turn(untimed: int, timed: int) -> list[float]:
        return [10.0] * timed

    policy = TimingPolicy(warmup=0, calls_per_turn=1, untimed_per_turn=0, settle_s=0)
    # "enough" = 50 ms of samples per model; at least 3 samples first
    samples = run_turns({"A": turn, "B": turn}, 3, policy, max_samples=100,
                        enough=lambda taken: all(sum(v) >= 50 for v in taken.values()))
    assert [len(v) for v in samples.values()] == [5, 5]
    capped = run_turns({"A": turn}, 3, policy, max_samples=4, enough=lambda taken: False)
    assert len(capped["A"]) == 4


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        TimingPolicy(calls_per_turn=0)
    with pytest.raises(ValueError):
        TimingPolicy(settle_s=-1)
    with pytest.raises(ValueError):
        run_turns({}, 0)
