"""The app factory's lifespan: torch runs on one thread while the API serves, and the count is restored after."""

from __future__ import annotations

import asyncio

from PR2_async_inference.api.main import create_app
from PR2_async_inference.settings import Settings


def test_the_api_runs_torch_on_one_thread_while_it_serves_and_restores_the_count(pr2_registry):
    import torch
    from fastapi.concurrency import run_in_threadpool

    app = create_app(Settings(model_registry=pr2_registry), start_kafka=False)

    async def threads_while_serving() -> tuple[int, int]:
        async with app.router.lifespan_context(app):  # as uvicorn runs it: in the event loop's thread
            return torch.get_num_threads(), await run_in_threadpool(torch.get_num_threads)  # a request thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert asyncio.run(threads_while_serving()) == (1, 1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
