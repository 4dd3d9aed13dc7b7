"""What an HTTP client costs per request, the load generator's own share of every latency it measures.

    python docs/measurements/http_client_roundtrip.py --requests 500 --rounds 3

Serves one trivial FastAPI endpoint (uvicorn with uvloop and httptools, as the API runs) on a free 127.0.0.1 port
in a thread, then times, in turns, POST round trips of one of bench_e2e's JSON photo bodies (about 30 KB) from an
httpx and an aiohttp client, each with one connection, and prints the median per round. The endpoint reads the
body and answers a fixed final state, so the difference between the two rows is the clients' own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import uvicorn
from fastapi import FastAPI, Request, Response

from modelops.errors import UsageError
from PR2_async_inference.benchmarks.bench_e2e import photo_payloads
from PR2_async_inference.processes import free_port, wait_port

FINAL = json.dumps({"request_id": "x", "status": "succeeded", "created_at": 1.0, "updated_at": 2.0,
                    "outputs": [{"label": "a", "score": 0.5}]}).encode()


def serve(port: int) -> None:
    app = FastAPI()

    @app.post("/inference")
    async def answer(request: Request) -> Response:
        await request.body()
        return Response(FINAL, media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools")


async def time_clients(url: str, requests: int, rounds: int) -> list[dict[str, Any]]:
    body = json.dumps(photo_payloads([3, 224, 224])[0]).encode()
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    rows = []
    async with (httpx.AsyncClient(base_url=url, limits=limits) as hx,
                aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=1)) as ah):

        async def with_httpx() -> None:
            json.loads((await hx.post("/inference", content=body, headers=headers)).content)

        async def with_aiohttp() -> None:
            async with ah.post("/inference", data=body, headers=headers) as response:
                json.loads(await response.read())

        clients: dict[str, Callable[[], Awaitable[None]]] = {"httpx": with_httpx, "aiohttp": with_aiohttp}
        for round_ in range(1, rounds + 1):
            for name, call in clients.items():
                for _ in range(50):  # untimed: connection set-up, first allocations
                    await call()
                latencies = []
                for _ in range(requests):
                    start = time.perf_counter()
                    await call()
                    latencies.append((time.perf_counter() - start) * 1000)
                p50 = round(statistics.median(latencies), 3)
                rows.append({"round": round_, "client": name, "round_trip_ms_p50": p50})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="POST round trip of httpx and aiohttp clients to a trivial endpoint.",
                                     add_help=add_help)
    parser.add_argument("--requests", type=int, default=500, help="timed requests per client and round (default: 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both clients in turns (default: 3)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.requests < 1 or args.rounds < 1:
        raise UsageError("--requests and --rounds must be >= 1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would be timed with httpx
    port = free_port()
    threading.Thread(target=serve, args=(port,), daemon=True).start()
    wait_port(port, timeout_s=30)
    return {"rows": asyncio.run(time_clients(f"http://127.0.0.1:{port}", args.requests, args.rounds))}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
