"""The inference worker: a consumer-group member that batches requests per model and publishes results.

    python PR2_async_inference/model_worker.py                 # settings from INFERENCE_* variables
    python PR2_async_inference/model_worker.py --metrics-port 9101

The loop (:mod:`worker.batching`): poll -> gather a batch per model -> expired requests are reported
``expired`` and never run, the rest run through :func:`modelops.artifact.load_artifact` predictors -> results
are produced (acks=all) -> only then the consumed offsets are committed (at-least-once). A request that raises
is re-queued with ``attempt + 1`` up to ``max_attempts``, then goes to the dead-letter topic and gets a final
``failed`` status (:mod:`worker.retries`); the worker keeps going. Final results go to callback URLs, signed
(:mod:`worker.callbacks`). SIGTERM: finish the current batch, commit, leave the group.

Metrics (names in :mod:`metrics`) and ``/healthz`` ``/readyz`` are served on ``worker_metrics_port``
(:mod:`worker.health`). With callbacks allowed (``INFERENCE_CALLBACK_ALLOWLIST``) the worker refuses to start
while ``INFERENCE_CALLBACK_HMAC_SECRET`` is the placeholder.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import torch

from PR2_async_inference.callback_security import require_callback_secret
from PR2_async_inference.settings import get_settings
from PR2_async_inference.worker.batching import ModelWorker
from PR2_async_inference.worker.callbacks import CallbackSender
from PR2_async_inference.worker.health import serve_metrics
from PR2_async_inference.worker.inference import torch_only_preprocesses

__all__ = ["CallbackSender", "ModelWorker", "get_args_parser", "main", "serve_metrics"]

logger = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Kafka inference worker (settings from INFERENCE_* variables).", add_help=add_help
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="metrics bind address (default: 0.0.0.0)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="metrics port (default: settings.worker_metrics_port, 9100)",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=None, help="stop after this long (default: run forever)"
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = get_settings()
    require_callback_secret(settings)
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    worker = ModelWorker(settings)
    server = serve_metrics(worker, args.metrics_host, args.metrics_port or settings.worker_metrics_port)

    def on_sigterm(signum, frame):
        logger.info("SIGTERM: finishing the current batch, committing, leaving the group")
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    worker.load_models()
    if torch_only_preprocesses(worker.predictors):
        torch.set_num_threads(1)
    worker.connect()
    try:
        worker.run(args.max_seconds)
    finally:
        server.shutdown()
    return {"worker": worker.worker_id, "batches_run": worker.batches_run}


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
