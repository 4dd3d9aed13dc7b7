"""The command line of the async inference service's Kafka layer (topic admin).

    python PR2_async_inference/kafka_queue_service.py create-topics   # settings from INFERENCE_* variables
    python PR2_async_inference/kafka_queue_service.py check

Three topics (names and partition counts in :mod:`settings`):

- requests (key = request id): the value is the input sample's raw bytes (C, H, W): ``uint8`` image pixels
  or a ``float32`` tensor, as the ``dtype`` header says; headers carry ``request_id``, ``model``,
  ``deadline``, ``attempt``, ``enqueued_at``, ``shape``, ``dtype``, ``top_k`` and ``callback_url``.
- results (key = request id): JSON :class:`StatusMessage` records. The API publishes ``queued`` when it
  accepts a request, the worker ``running`` when a batch starts
  (with ``INFERENCE_PUBLISH_RUNNING=true``) and exactly one final state
  (``succeeded | failed | expired``) per request. Every API replica reads the whole topic (no group) into a
  bounded cache, so any replica answers ``GET /inference/{id}``.
- dead-letter (key = request id): the request as it was, plus ``error``, ``failed_at`` and ``source_topic``
  headers.

The code lives in :mod:`PR2_async_inference.messaging`: message formats (``messages``), topic admin
(``admin``, kafka-python), and on librdkafka the producer (``producer``), the worker's group consumer
(``clients``) and the API's results reader (``results_reader``). Settings one broker needs are chosen by
``INFERENCE_BROKER_KIND`` (``kafka`` or ``tansu``). The API, the worker and the tests import those modules
directly; this module is the command line only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from PR2_async_inference.messaging.admin import ensure_topics, wait_for_topics
from PR2_async_inference.settings import get_settings


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Kafka admin for the inference service (settings from INFERENCE_*).", add_help=add_help
    )
    parser.add_argument(
        "command",
        choices=["create-topics", "check"],
        help="create-topics: create the requests/results/DLQ topics; check: list them",
    )
    parser.add_argument("--timeout-s", type=float, default=120.0, help="how long to wait for the broker (default: 120)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = get_settings()
    counts = (
        ensure_topics(settings, args.timeout_s)
        if args.command == "create-topics"
        else wait_for_topics(settings, args.timeout_s)
    )
    print(json.dumps({"bootstrap": settings.kafka_bootstrap_servers, "partitions": counts}))
    return counts


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
