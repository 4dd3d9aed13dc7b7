"""bench_e2e's CPU accounting: the per-thread CPU of a process, and the throughput ratio the CPU per request
allows on a number of cores."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def test_bench_e2e_thread_cpu_seconds_names_the_threads_of_a_process_and_sums_to_its_cpu():
    from PR2_async_inference.benchmarks.bench_e2e import cpu_seconds, thread_cpu_seconds

    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # some CPU on this (main) thread
        pass
    threads = thread_cpu_seconds(os.getpid())
    total = cpu_seconds(os.getpid())  # read second: it also counts threads that have ended
    main_thread_name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert threads[main_thread_name] > 0
    assert 0 < sum(threads.values()) <= total + 0.01
    assert thread_cpu_seconds(2**22 + 1) == {}  # no such process: nothing, not an error


def test_bench_e2e_cpu_bound_ratio_is_what_the_cpu_per_request_allows_on_the_cores():
    from PR2_async_inference.benchmarks.bench_e2e import cpu_bound_ratio, cpu_ms_per_request

    names = ("broker", "broker_jit", "api", "workers", "loadgen", "forward")
    before = dict.fromkeys(names, 0.0)
    # 100 requests: broker 0.1 s (JIT included), API 0.2 s, workers 0.5 s (0.4 forward), load generator 0.2 s
    after = {"broker": 0.1, "broker_jit": 0.02, "api": 0.2, "workers": 0.5, "loadgen": 0.2, "forward": 0.4}
    cpu_ms = cpu_ms_per_request(before, after, 100)
    assert cpu_ms["cpu_ms_per_req_service_overhead"] == 4.0  # broker 1 + API 2 + workers outside forward 1
    # 10 ms of CPU per request: 2 cores pass at most 200 requests/s, half of 400 in-process; 4 cores all of it
    assert cpu_bound_ratio(cpu_ms, 400.0, cores=2) == pytest.approx(0.5)
    assert cpu_bound_ratio(cpu_ms, 400.0, cores=4) == pytest.approx(1.0)
