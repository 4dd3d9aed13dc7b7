"""Measure the API's and the worker's memory (RSS) at rest and after a bounded burst, to size requests.

    python PR1_horizontal_pod_autoscaling/measure_footprint.py --requests 48 --image-size 224

Starts PR2's local stack (a broker, the API, one worker; all on 127.0.0.1, stopped by pid) with a
random-weight model of ``--arch``, reads each process's RSS before and after ``--requests`` POSTs, and
prints the figures as JSON. The memory requests in k8s-deployment.yaml and the memory target in hpa.yaml
are based on these figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from modelops.errors import UsageError


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def random_model_artifact(folder: Path, arch: str, image_size: int) -> Path:
    """A random-weight ``arch`` artifact (10 classes) in ``folder``."""
    from modelops.artifact import Manifest, save_artifact
    from modelops.models import create_model

    model_path = folder / f"{arch}.pt"
    save_artifact(create_model(arch, 10), model_path,
                  Manifest(arch=arch, num_classes=10, input_shape=[3, image_size, image_size], dataset="fake",
                           labels=[str(i) for i in range(10)]))
    return model_path


def random_model_registry(folder: Path, arch: str, image_size: int) -> Path:
    """A random-weight ``arch`` artifact in ``folder`` and a registry that serves it as image_classification."""
    from PR2_async_inference.registry import write_registry

    model_path = random_model_artifact(folder, arch, image_size)
    return write_registry(folder / "registry.yaml",
                          {"image_classification": {"artifact": model_path, "max_batch_size": 16}})


def measure(arch: str, image_size: int, requests: int, threads: int, settle_s: float) -> dict[str, Any]:
    from PR2_async_inference import local_stack

    tmp = Path(tempfile.mkdtemp(prefix="pr1-footprint-"))
    stack = local_stack.start_stack(random_model_registry(tmp, arch, image_size), workers=1, log_dir=tmp / "logs",
                                    torch_threads=threads)
    try:
        api, worker = stack.api.pid, stack.workers[0].pid
        result: dict[str, Any] = {"arch": arch, "image_size": image_size, "requests": requests,
                                  "api_rss_mib_idle": round(rss_mib(api)),
                                  "worker_rss_mib_idle": round(rss_mib(worker))}
        tensor = [[[0.0] * image_size] * image_size] * 3
        body = json.dumps({"model_name": "image_classification", "data": tensor}).encode()
        for _ in range(requests):
            req = urllib.request.Request(f"{stack.api_url}/inference", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        time.sleep(settle_s)  # let the worker drain the burst
        result["api_rss_mib_after"] = round(rss_mib(api))
        result["worker_rss_mib_after"] = round(rss_mib(worker))
        return result
    finally:
        local_stack.stop_stack(stack)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="RSS of the API and the worker, idle and after a burst.",
                                     add_help=add_help)
    parser.add_argument("--arch", default="resnet18", help="torchvision architecture (default: resnet18)")
    parser.add_argument("--image-size", type=int, default=224, help="input height/width (default: 224)")
    parser.add_argument("--requests", type=int, default=48, help="requests in the burst, 1-1000 (default: 48)")
    parser.add_argument("--threads", type=int, default=2, help="worker torch threads (default: 2)")
    parser.add_argument("--settle-s", type=float, default=15.0,
                        help="wait after the burst before reading RSS (default: 15)")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.requests <= 1000:
        raise UsageError(f"--requests must be between 1 and 1000, got {args.requests}")
    if args.image_size < 16:
        raise UsageError(f"--image-size must be at least 16, got {args.image_size}")
    result = measure(args.arch, args.image_size, args.requests, args.threads, args.settle_s)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
