"""The queue's command line, as docker-compose's ``topics`` service and PR1's init container run it: ``create-topics``
makes the three topics with the settings' partition counts and ``check`` lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from PR2_async_inference.local_stack import service_env
from PR2_async_inference.processes import REPO_ROOT
from tests.pr2.conftest import suite_settings, topic_overrides

CLI = str(REPO_ROOT / "PR2_async_inference" / "kafka_queue_service.py")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CLI, *args], env={**os.environ, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)


def test_create_topics_then_check_lists_them(broker):
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    settings = suite_settings(broker, prefix)
    env = service_env(broker, **topic_overrides(prefix))
    expected = {settings.requests_topic: settings.requests_partitions,
                settings.results_topic: settings.results_partitions, settings.dlq_topic: settings.dlq_partitions}
    for command in ("create-topics", "check"):
        done = run_cli(env, command, "--timeout-s", "60")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer == {"bootstrap": settings.kafka_bootstrap_servers, "partitions": expected}



def test_no_broker_is_one_line_naming_the_servers_and_what_to_do():
    from PR2_async_inference.processes import free_port

    server = f"127.0.0.1:{free_port()}"  # nothing listens there
    for command in ("create-topics", "check"):
        done = run_cli({"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": server}, command, "--timeout-s", "1")
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ConnectionError: no Kafka broker answers at " + server)
        assert "make compose-up" in lines[0] and done.stdout == ""
