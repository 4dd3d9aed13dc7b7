"""The API's results cache (:class:`~PR2_async_inference.api.state.ResultStore`): the first final state wins and a
state never goes back, the backlog and the LRU bound, long polls woken from the results reader's thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from PR2_async_inference.api.state import ResultStore
from PR2_async_inference.messaging.messages import StatusMessage


def status(request_id: str, state: str, created: float = 1.0, **kw) -> StatusMessage:
    return StatusMessage(request_id=request_id, model_name="m", status=state, created_at=created, **kw)


def test_result_store_first_final_state_wins_and_never_goes_back():
    store = ResultStore(size=10, idempotency_size=10)
    store.apply(status("a", "queued", idempotency_key="k1"))
    store.apply(status("a", "running"))
    store.apply(status("a", "queued"))  # late echo of the API's own message
    assert store.get("a").status == "running"
    store.apply(status("a", "succeeded"))
    store.apply(status("a", "expired"))  # a redelivered copy judged later must not flip the result
    store.apply(status("a", "running"))
    assert store.get("a").status == "succeeded"
    assert store.by_idempotency_key("k1") == "a"


def test_result_store_backlog_and_lru_bound():
    store = ResultStore(size=3, idempotency_size=3)
    now = time.time()
    for i in range(3):
        store.apply(status(f"r{i}", "queued", created=now - 10 + i))
    pending, oldest = store.backlog(now)
    assert pending == 3 and oldest == pytest.approx(10, abs=0.01)
    store.apply(status("r0", "failed", created=now - 10))
    assert store.backlog(now)[0] == 2
    for i in range(3, 6):
        store.apply(status(f"r{i}", "succeeded"))
    assert store.get("r1") is None and len(store.statuses) == 3
    assert store.backlog(now) == (0, 0.0)  # evicted entries leave the backlog too


def test_result_store_long_poll_wakes_on_the_final_state_from_another_thread():
    store = ResultStore(size=10, idempotency_size=10)
    store.apply(status("a", "queued"))

    async def scenario() -> tuple:
        # The results reader applies states on its own thread: "running" must not wake the waiter.
        threading.Timer(0.05, store.apply, [status("a", "running")]).start()
        threading.Timer(0.2, store.apply, [status("a", "succeeded")]).start()
        final = await store.wait_final("a", timeout_s=10)
        timed_out = await store.wait_final("b-unknown", timeout_s=10)  # unknown ids answer at once
        store.apply(status("c", "queued"))
        still_queued = await store.wait_final("c", timeout_s=0.05)
        return final, timed_out, still_queued

    final, unknown, still_queued = asyncio.run(scenario())
    assert final.status == "succeeded"  # not the "running" that arrived first
    assert unknown is None and still_queued.status == "queued"
    assert store.waiters == {}  # nobody left registered after a wake-up or a timeout
