"""A bounded load generator for the async inference API (127.0.0.1 only).

    python PR2_async_inference/load_test.py --url http://127.0.0.1:8000 --requests 200 --concurrency 16 \\
        --time-limit-s 60

``concurrency`` closed-loop clients each POST a request and wait for its final state, until ``requests`` are
done or ``time_limit_s`` passes, in one of two ways (``--client``): ``one-call`` POSTs with ``?wait=S`` and
gets the final state in the answer; ``two-call`` takes the 202 and then long-polls ``GET /inference/{id}?wait=S``.
End-to-end latency is POST start -> the final state in hand: what a client sees, with no polling interval of
the client's own added. Importable: :func:`run_load` returns throughput, latency percentiles and the median of
each hop of a request's way (:data:`HOPS`) as a flat dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import numpy as np

from modelops.errors import UsageError
from modelops.timing import latency_stats
from PR2_async_inference.messaging.messages import FINAL_STATES
from PR2_async_inference.settings import MAX_STATUS_WAIT_S

logger = logging.getLogger(__name__)


def check_local(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"load tests only target 127.0.0.1; got host {host!r}")


async def _request(session: aiohttp.ClientSession, method: str, path: str, timeout_s: float,
                   **kwargs: Any) -> tuple[int, bytes, Mapping[str, str]]:
    """(status, body, headers) of one request on the client's own connection."""
    async with session.request(method, path, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as response:
        return response.status, await response.read(), response.headers


async def wait_final(session: aiohttp.ClientSession, request_id: str, timeout_s: float) -> dict[str, Any] | None:
    """Long-poll the request's status until it is final or ``timeout_s`` has passed (then None)."""
    give_up = time.perf_counter() + timeout_s
    while (left := give_up - time.perf_counter()) > 0:
        wait = round(min(left, MAX_STATUS_WAIT_S), 3)
        status_code, content, _ = await _request(session, "GET", f"/inference/{request_id}", wait + 10,
                                                 params={"wait": str(wait)})
        if status_code != 200:
            await asyncio.sleep(0.1)  # e.g. a replica that has not seen the request yet: do not spin
            continue
        status = json.loads(content)  # plain json: the generator shares the CPU it measures
        if status["status"] in FINAL_STATES:
            return status
    return None


#: Where a request's time goes, from the client's clock and the timestamps of its final state (one host, one
#: clock): the API taking it in (HTTP, parsing, decoding), its produce being acknowledged (the 202), the wait
#: until a worker's batch starts (produce, fetch, batching), the forward pass, and the result reaching the
#: client (result produce, the API's results reader, the answer). The produce hop is known only from a 202.
HOPS = ("hop_ms_api_intake", "hop_ms_api_produce", "hop_ms_queue", "hop_ms_forward", "hop_ms_result")


def request_hops(final: dict[str, Any], posted_at: float, accepted_at: float | None,
                 done_at: float) -> dict[str, float | None]:
    """:data:`HOPS` of one succeeded request (ms; the produce hop None without a 202); the queue hop overlaps the
    produce hop."""
    created, queue_s, forward_s = final["created_at"], final["queue_time_s"] or 0.0, final["inference_time_s"] or 0.0
    return {
        "hop_ms_api_intake": (created - posted_at) * 1000,
        "hop_ms_api_produce": (accepted_at - created) * 1000 if accepted_at is not None else None,
        "hop_ms_queue": queue_s * 1000,
        "hop_ms_forward": forward_s * 1000,
        "hop_ms_result": (done_at - final["updated_at"]) * 1000,
    }


#: How a simulated client gets its result: in the POST's answer (``?wait``), or from a GET after the 202.
CLIENT_MODES = ("one-call", "two-call")


async def _run(url: str, requests: int, concurrency: int, time_limit_s: float,
               payloads: list[dict[str, Any]], client_mode: str) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    batch_sizes: list[int] = []
    hops: list[dict[str, float | None]] = []
    errors: dict[str, int] = {}
    issued = 0
    stop_at = time.perf_counter() + time_limit_s

    bodies = [json.dumps(p).encode() for p in payloads]  # encoded once: the generator shares the CPU it measures
    headers = {"Content-Type": "application/json"}
    post_params = {"wait": str(MAX_STATUS_WAIT_S)} if client_mode == "one-call" else {}

    async def client_loop(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < stop_at:
            body = bodies[issued % len(bodies)]
            issued += 1
            start = time.perf_counter()
            posted_at = time.time()
            status_code, content, answer_headers = await _request(
                session, "POST", "/inference", MAX_STATUS_WAIT_S + 10, data=body, headers=headers, params=post_params)
            accepted_at = time.time() if status_code == 202 else None
            if status_code == 200:  # one call: the final state is the answer
                final = json.loads(content)
            elif status_code == 202:
                final = await wait_final(session, json.loads(content)["request_id"],
                                          max(0.1, stop_at - time.perf_counter() + 30))
            else:
                key = f"http_{status_code}"
                errors[key] = errors.get(key, 0) + 1
                if status_code == 429:
                    await asyncio.sleep(float(answer_headers.get("retry-after", "1")))
                continue
            done_at = time.perf_counter()
            if final is None:
                errors["timeout"] = errors.get("timeout", 0) + 1
                continue
            statuses[final["status"]] = statuses.get(final["status"], 0) + 1
            if final["status"] == "succeeded":
                latencies.append((done_at - start) * 1000)
                batch_sizes.append(final.get("batch_size") or 1)
                hops.append(request_hops(final, posted_at, accepted_at, time.time()))

    # One client session with one connection per simulated user, on aiohttp: a client's own cost is part of
    # every latency measured and of the CPU the service shares, and aiohttp's round trip costs less of both than
    # httpx's (docs/measurements/http_client_roundtrip.py compares them).
    sessions = [aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=1))
                for _ in range(concurrency)]
    try:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(session) for session in sessions))
        wall = time.perf_counter() - began
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    return {"requests_sent": issued, "concurrency": concurrency, "client": client_mode, "wall_s": round(wall, 3),
            **summary(latencies, statuses, errors, batch_sizes, hops, wall)}


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(float(np.median(known)), 2) if known else None


def summary(latencies: list[float], statuses: dict[str, int], errors: dict[str, int], batch_sizes: list[int],
            hops: list[dict[str, float | None]], wall: float) -> dict[str, Any]:
    """The flat result of a run: counts, throughput, latency percentiles, mean batch, median of each hop."""
    stats = latency_stats(latencies) if latencies else {}
    return {
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0), "expired": statuses.get("expired", 0),
        "errors": sum(errors.values()), "error_kinds": json.dumps(errors) if errors else "",
        "throughput_rps": round(statuses.get("succeeded", 0) / wall, 2) if wall else 0.0,
        "latency_ms_p50": stats.get("latency_ms_p50"), "latency_ms_p95": stats.get("latency_ms_p95"),
        "latency_ms_p99": stats.get("latency_ms_p99"), "latency_ms_mean": stats.get("latency_ms_mean"),
        "batch_size_mean": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
        **{f"{name}_p50": median_or_none([h[name] for h in hops]) for name in HOPS},
    }


def make_payloads(input_shape: list[int], count: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"data": rng.standard_normal(input_shape).round(4).tolist()} for _ in range(count)]


def run_load(url: str, *, requests: int = 200, concurrency: int = 16, time_limit_s: float = 60.0,
             input_shape: list[int] | None = None, payloads: list[dict[str, Any]] | None = None,
             client_mode: str = "one-call") -> dict[str, Any]:
    """Send at most ``requests`` requests with ``concurrency`` closed-loop clients for at most ``time_limit_s``,
    each getting its result as ``client_mode`` says (:data:`CLIENT_MODES`).

    Returns a flat dict: throughput_rps, latency_ms_p50/p95/p99, succeeded/failed/expired counts, errors.
    """
    check_local(url)
    if client_mode not in CLIENT_MODES:
        raise UsageError(f"client mode must be one of {', '.join(CLIENT_MODES)}; got {client_mode!r}")
    if requests < 1 or concurrency < 1 or time_limit_s <= 0:
        raise UsageError(f"requests ({requests}), concurrency ({concurrency}) and time limit must be positive")
    if payloads is None:
        if input_shape is None:
            try:
                models = httpx.get(f"{url}/models", timeout=10).json()
            except httpx.TransportError as exc:
                raise UsageError(f"no API answers at --url {url} ({exc}); start one with "
                                 "python PR2_async_inference/local_stack.py") from exc
            input_shape = next(m["input_shape"] for m in models if m["default"])
        payloads = make_payloads(input_shape)
    return asyncio.run(_run(url, requests, concurrency, time_limit_s, payloads, client_mode))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bounded load test of the async inference API (127.0.0.1).",
                                     add_help=add_help)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="API URL (default: http://127.0.0.1:8000)")
    parser.add_argument("--requests", type=int, default=200, help="requests to send at most (default: 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default: 16)")
    parser.add_argument("--time-limit-s", type=float, default=60.0, help="stop after this long (default: 60)")
    parser.add_argument("--client", choices=CLIENT_MODES, default="one-call",
                        help="one-call: POST ?wait=S answers with the final state; two-call: the 202, then a "
                        "long-polling GET (default: one-call)")
    parser.add_argument("--output", default=None, help="write the result as JSON here (default: print only)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = run_load(args.url, requests=args.requests, concurrency=args.concurrency,
                      time_limit_s=args.time_limit_s, client_mode=args.client)
    print(json.dumps(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
