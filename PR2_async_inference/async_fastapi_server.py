"""The asynchronous inference API (FastAPI): accept a request, queue it on Kafka, answer 202 at once.

    python PR2_async_inference/async_fastapi_server.py --port 8000          # or, in the image:
    uvicorn PR2_async_inference.async_fastapi_server:create_app --factory --host 0.0.0.0 --port 8000

Endpoints: ``POST /inference`` (202 + request id + Location), ``GET /inference/{id}`` (``?wait=S`` holds the
answer until the request is final, at most S seconds: long polling), ``GET /models``,
``POST /v2/models/{name}/infer`` (the KServe Open Inference Protocol v2 body, answered with 202),
``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Settings come from :mod:`settings` (``INFERENCE_*``).

Every replica reads the whole results topic into a bounded cache (:class:`~api.state.ResultStore`), so any
replica answers ``GET /inference/{id}``; the same cache gives the backlog (requests queued but not final, and the
oldest one's age) that drives backpressure (429 + Retry-After) without asking the broker on every request.
With callbacks allowed (``INFERENCE_CALLBACK_ALLOWLIST``) the API refuses to start while
``INFERENCE_CALLBACK_HMAC_SECRET`` is the placeholder. The code lives in :mod:`PR2_async_inference.api`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from PR2_async_inference.api.main import create_app
from PR2_async_inference.settings import get_settings

__all__ = ["create_app", "get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Async inference API (settings from INFERENCE_* variables).", add_help=add_help
    )
    parser.add_argument("--host", default=None, help="bind address (default: settings.api_host, 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help="port (default: settings.api_port, 8000)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    app = create_app(settings)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)
    return {"host": host, "port": port}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
