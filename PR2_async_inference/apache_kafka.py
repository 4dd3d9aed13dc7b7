"""Apache Kafka 3.9.1 without Docker: one KRaft node (broker and controller in one JVM) on 127.0.0.1.

    python PR2_async_inference/apache_kafka.py fetch          # jars into .cache/kafka-3.9.1/libs (Maven)
    python PR2_async_inference/apache_kafka.py run            # format a data dir, serve until Ctrl-C

The server jars are the ones Maven Central publishes (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies, plus the reload4j logging binding the binary distribution ships); Maven copies them into a cache
folder that git ignores. A node gets free 127.0.0.1 ports for its client and controller listeners, a data dir
formatted once with ``kafka.tools.StorageTool`` (started again on the same dir, it keeps its topics, records
and committed offsets), a small heap, and is stopped by its pid. Broker settings follow ``docker-compose.yaml``.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from PR2_async_inference.processes import (
    REPO_ROOT,
    Proc,
    free_port,
    interrupt_on_signal,
    spawn,
    stop_process,
    wait_port,
)

KAFKA_VERSION = "3.9.1"
#: Where the jars land (git ignores .cache/); INFERENCE_KAFKA_JARS_DIR overrides it.
DEFAULT_CACHE = REPO_ROOT / ".cache" / f"kafka-{KAFKA_VERSION}"
#: kafka_2.13 declares no logging binding; Kafka's binary distribution ships these two.
LOGGING_ARTIFACTS = ("org.slf4j:slf4j-reload4j:1.7.36", "ch.qos.reload4j:reload4j:1.2.25")
DEFAULT_HEAP = "256m"
_COMPLETE = ".complete"

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.inference</groupId>
  <artifactId>apache-kafka-runner</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""

LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaConfig=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""


def cache_dir() -> Path:
    return Path(os.environ.get("INFERENCE_KAFKA_JARS_DIR") or DEFAULT_CACHE)


def jars_present(cache: Path | None = None) -> bool:
    return ((cache or cache_dir()) / "libs" / _COMPLETE).exists()


def java_available() -> bool:
    return shutil.which("java") is not None


def availability(fetch: bool = True) -> tuple[bool, str]:
    """Whether a node can start here (fetching the jars first when ``fetch`` and Maven is there), and why not."""
    if not java_available():
        return False, "no java on PATH"
    if jars_present():
        return True, f"jars in {cache_dir()}"
    if not shutil.which("mvn"):
        return False, f"no jars in {cache_dir()} and no mvn on PATH to fetch them"
    if not fetch:
        return False, f"no jars in {cache_dir()} (fetch them: make kafka-jars)"
    try:
        fetch_jars()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return False, f"fetching the jars with Maven failed: {exc}"
    return True, f"jars fetched into {cache_dir()}"


def _dependency_xml(coordinates: str) -> str:
    group, artifact, version = coordinates.split(":")
    return (f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
            f"<version>{version}</version></dependency>")


def fetch_jars(cache: Path | None = None, timeout_s: float = 600.0) -> Path:
    """Copy the server jars and their runtime dependencies into ``cache/libs`` with Maven; returns that dir."""
    cache = cache or cache_dir()
    libs = cache / "libs"
    if jars_present(cache):
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    coordinates = (f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}", *LOGGING_ARTIFACTS)
    pom = cache / "pom.xml"
    pom.write_text(POM.format(dependencies="\n".join(_dependency_xml(c) for c in coordinates)))
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={libs}"],
        check=True, timeout=timeout_s, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    (libs / _COMPLETE).write_text(" ".join(coordinates) + "\n")
    return libs


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` writes it: 16 random bytes, URL-safe base64, no padding, and
    (as Kafka's ``Uuid.randomUuid``) never starting with "-", which StorageTool's ``-t`` would read as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir / 'log'}",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Topics come from ensure_topics with the partition counts of settings.py, as in docker-compose.yaml.
        "auto.create.topics.enable=false",
        # A 224x224 float32 request is ~600 KB; leave room above Kafka's 1 MB default.
        "message.max.bytes=4194304",
        "",
    ])


def java_command(main_class: str, *args: str, data_dir: Path, heap: str = DEFAULT_HEAP) -> list[str]:
    libs = cache_dir() / "libs"
    return [
        "java", f"-Xmx{heap}", f"-Xms{heap}",
        # One GC thread and no concurrent phases: the machines have 2 cores, shared with API and workers.
        "-XX:+UseSerialGC", "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{data_dir / 'log4j.properties'}",
        "-cp", f"{libs}/*", main_class, *args,
    ]


def format_storage(data_dir: Path, config: Path, heap: str = DEFAULT_HEAP, timeout_s: float = 120.0) -> None:
    """``kafka-storage format`` once per data dir (a formatted dir has ``meta.properties``)."""
    if (data_dir / "log" / "meta.properties").exists():
        return
    subprocess.run(
        java_command("kafka.tools.StorageTool", "format", "-t", random_cluster_id(), "-c", str(config),
                     data_dir=data_dir, heap=heap),
        check=True, timeout=timeout_s, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def wait_ready(bootstrap: str, timeout_s: float, proc: Proc) -> None:
    """Until the node answers a metadata request with itself as a broker (the port opens a little earlier)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"Apache Kafka exited with {proc.popen.returncode}; see {proc.log}")
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                if admin.describe_cluster().get("brokers"):
                    return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise TimeoutError(f"Apache Kafka at {bootstrap} not ready after {timeout_s:.0f} s ({last}); see {proc.log}")


def start_kafka(
    log_dir: Path,
    port: int | None = None,
    *,
    data_dir: Path | None = None,
    controller_port: int | None = None,
    heap: str = DEFAULT_HEAP,
    name: str = "broker",
    timeout_s: float = 120.0,
) -> Proc:
    """One KRaft node on 127.0.0.1:``port``, formatting ``data_dir`` first if it is new; stop it by its pid.

    Started again with the same ``data_dir``, ``port`` and ``controller_port`` it serves what it stored.
    """
    fetch_jars()
    port = port or free_port()
    controller_port = controller_port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="kafka-", dir=log_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "log4j.properties").write_text(LOG4J)
    config = data_dir / "server.properties"
    config.write_text(server_properties(data_dir, port, controller_port))
    format_storage(data_dir, config, heap)
    bootstrap = f"127.0.0.1:{port}"
    proc = spawn(name, java_command("kafka.Kafka", str(config), data_dir=data_dir, heap=heap), log_dir,
                 port=port, kind="kafka", bootstrap=bootstrap, controller_port=controller_port,
                 data_dir=str(data_dir))
    try:
        wait_port(port, timeout_s, proc.popen)
        wait_ready(bootstrap, timeout_s, proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Apache Kafka 3.9.1 on 127.0.0.1 without Docker.",
                                     add_help=add_help)
    parser.add_argument("command", choices=["fetch", "run"],
                        help="fetch: the jars into the cache; run: one broker+controller until Ctrl-C")
    parser.add_argument("--port", type=int, default=None, help="client port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--data-dir", default=None, help="KRaft data dir, formatted when new (default: a new one)")
    parser.add_argument("--log-dir", default="runs/apache_kafka", help="process log (default: runs/apache_kafka)")
    parser.add_argument("--heap", default=DEFAULT_HEAP, help=f"JVM heap (default: {DEFAULT_HEAP})")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    from modelops.errors import UsageError

    if args.command == "fetch":
        libs = fetch_jars()
        info = {"libs": str(libs), "jars": len(list(libs.glob("*.jar")))}
        print(f"Apache Kafka {KAFKA_VERSION}: {info['jars']} jars in {libs}", flush=True)
        return info
    if not java_available():
        raise UsageError("no java on PATH: Apache Kafka needs Java 17")
    signal.signal(signal.SIGTERM, interrupt_on_signal)
    signal.signal(signal.SIGINT, interrupt_on_signal)
    proc = None
    try:
        proc = start_kafka(Path(args.log_dir), args.port, data_dir=Path(args.data_dir) if args.data_dir else None,
                           heap=args.heap)
        info = {"bootstrap": proc.info["bootstrap"], "pid": proc.pid, "data_dir": proc.info["data_dir"]}
        print(f"Apache Kafka {KAFKA_VERSION} at {info['bootstrap']} (pid {proc.pid}); Ctrl-C stops it", flush=True)
        while proc.alive():
            time.sleep(0.5)
    finally:
        stop_process(proc)
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
