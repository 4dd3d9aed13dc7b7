"""Requests at a fixed rate, whatever the service answers (an open loop), bounded in count and time; 127.0.0.1 only.

PR2's ``load_test.py`` runs closed-loop clients: each waits for its answer before sending again, so a slow service
is sent less. An autoscaler is sized for an arrival rate, which does not slow down when the service does, so this
sender starts request i at ``i / rate`` seconds whatever is outstanding. Each request is ``POST /inference?wait=S``
(the final state comes in the answer), then long-polled with ``GET /inference/{id}?wait=S`` if the POST's wait ran
out. A request's latency is POST start -> final state in hand; how late the POST started after its scheduled time
is kept too (the sender shares the cores with what it measures).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from PR2_async_inference.load_test import check_local, wait_final
from PR2_async_inference.messaging.messages import FINAL_STATES
from PR2_async_inference.settings import MAX_STATUS_WAIT_S

#: The most requests one run sends, whatever rate and duration ask for.
MAX_REQUESTS = 10_000


@dataclass
class Sent:
    """One request: times in seconds since the run's origin (``time.monotonic()``), latency in ms."""

    index: int
    scheduled_s: float
    sent_s: float | None = None
    done_s: float | None = None
    status: str = "unsent"  # a final state (succeeded, failed, expired), http_<code>, timeout or error
    latency_ms: float | None = None  # POST start -> final state in hand
    batch_size: int | None = None

    @property
    def late_ms(self) -> float | None:
        return None if self.sent_s is None else (self.sent_s - self.scheduled_s) * 1000


async def _final_state(session: aiohttp.ClientSession, body: bytes, give_up: float) -> tuple[str, dict | None]:
    """(status, final state) of one request: the POST's answer when final, else load_test's long-poll until final
    or give_up."""
    wait = round(min(MAX_STATUS_WAIT_S, max(0.1, give_up - time.monotonic())), 3)
    async with session.post("/inference", data=body, params={"wait": str(wait)},
                            headers={"Content-Type": "application/json"},
                            timeout=aiohttp.ClientTimeout(total=wait + 10)) as response:
        if response.status not in (200, 202):
            return f"http_{response.status}", None
        state = json.loads(await response.read())
    if state.get("status") not in FINAL_STATES:
        left = give_up - time.monotonic()
        state = await wait_final(session, state["request_id"], left) if left > 0 else None
        if state is None:
            return "timeout", None
    return state["status"], state


async def _send(session: aiohttp.ClientSession, record: Sent, body: bytes, origin: float,
                result_timeout_s: float) -> None:
    start = time.monotonic()
    record.sent_s = start - origin
    try:
        status, final = await _final_state(session, body, start + result_timeout_s)
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, final = f"error: {type(exc).__name__}", None
    done = time.monotonic()
    record.status = status
    if final is not None:
        record.done_s = done - origin
        record.latency_ms = (done - start) * 1000
        record.batch_size = final.get("batch_size")


async def _run(url: str, rate_rps: float, count: int, bodies: list[bytes], origin: float,
               result_timeout_s: float) -> list[Sent]:
    records = [Sent(i, i / rate_rps) for i in range(count)]
    # One connection per outstanding request (an open loop has as many as the service is behind), no pool cap.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:
        tasks = []
        for record in records:
            delay = origin + record.scheduled_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                _send(session, record, bodies[record.index % len(bodies)], origin, result_timeout_s)))
        await asyncio.gather(*tasks)
    return records


def send_at_rate(url: str, rate_rps: float, duration_s: float, payloads: list[dict[str, Any]], *,
                 origin: float | None = None, result_timeout_s: float = 60.0) -> list[Sent]:
    """Send ``ceil(rate_rps * duration_s)`` requests, request i at ``origin + i / rate_rps``, and wait for each
    final state at most ``result_timeout_s`` after its POST; returns one :class:`Sent` per request.

    Args:
        url: the API, on 127.0.0.1.
        rate_rps: requests per second.
        duration_s: how long requests are started for.
        payloads: request bodies (``data`` and optional ``model_name``), used in turn.
        origin: ``time.monotonic()`` the schedule and the returned times count from (default: now).
        result_timeout_s: the longest a request is waited for after its POST (default: 60).
    """
    check_local(url)
    count = math.ceil(round(rate_rps * duration_s, 6))
    if rate_rps <= 0 or duration_s <= 0 or not payloads:
        raise ValueError("rate, duration and payloads must be positive / non-empty")
    if count > MAX_REQUESTS:
        raise ValueError(f"{rate_rps:g} requests/s for {duration_s:g} s is {count} requests; at most {MAX_REQUESTS}")
    bodies = [json.dumps(p).encode() for p in payloads]  # encoded once: the sender shares the cores
    origin = time.monotonic() if origin is None else origin
    return asyncio.run(_run(url, rate_rps, count, bodies, origin, result_timeout_s))


def rows(records: list[Sent]) -> list[dict[str, Any]]:
    return [{**asdict(r), "late_ms": None if r.late_ms is None else round(r.late_ms, 2)} for r in records]
