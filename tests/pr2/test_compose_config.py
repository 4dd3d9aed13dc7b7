"""The container setup's files: docker-compose.yaml and prometheus.yml agree with the settings, `docker-compose
config` validates the compose file, the Dockerfile's image runs as non-root with CPU torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from PR2_async_inference.compose_stack import CONTEXT_DIRS, CONTEXT_FILES
from PR2_async_inference.settings import IMAGE_NAME, Settings

PR2 = Path(__file__).resolve().parents[2] / "PR2_async_inference"


def compose() -> dict:
    return yaml.safe_load((PR2 / "docker-compose.yaml").read_text())


def with_defaults(value: str) -> str:
    """A compose value as docker-compose reads it when no variable is set: ``${NAME:-default}`` -> default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_file_agrees_with_settings():
    doc, s = compose(), Settings()
    services = doc["services"]
    assert {"kafka", "topics", "api", "worker", "prometheus"} <= set(services)
    assert with_defaults(services["kafka"]["image"]).startswith("apache/kafka:")
    assert with_defaults(services["prometheus"]["image"]).startswith("prom/prometheus:")
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"] and "healthcheck" in services["kafka"]
    for name in ("topics", "api", "worker"):
        assert services[name]["image"] == IMAGE_NAME
    assert [with_defaults(p) for p in services["api"]["ports"]] == [f"0.0.0.0:{s.api_port}:{s.api_port}"]
    assert services["topics"]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"
    assert str(s.worker_metrics_port) in services["worker"]["command"]
    assert "ports" not in services["worker"]  # fixed host ports would stop --scale worker=N
    assert services["api"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    prometheus = yaml.safe_load((PR2 / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["inference-api"]["static_configs"][0]["targets"] == [f"api:{s.api_port}"]
    assert jobs["inference-worker"]["dns_sd_configs"][0]["port"] == s.worker_metrics_port


def test_docker_compose_config_validates():
    """`docker-compose config` validates the file offline (no Docker engine needed). CI installs Debian's
    docker-compose (.ci/run), so this never skips there; elsewhere it skips only without apt-get to install it."""
    if shutil.which("docker-compose") is None:
        reason = "docker-compose is not installed: `apt-get install docker-compose` (.ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("true", "1") or shutil.which("apt-get"):
            pytest.fail(reason)
        pytest.skip(f"{reason}; this machine has no apt-get")
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=PR2, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_as_non_root_with_cpu_torch():
    text = (PR2 / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert "\nUSER inference" in text and "pip install --no-deps -e ." in text


def test_build_context_is_what_the_dockerfile_copies():
    """The root .dockerignore lets through, and compose_stack's build key hashes, exactly what the Dockerfile
    copies: a file the image needs is never left out of the context, nor a change to it out of the key."""
    copied = set()
    for line in (PR2 / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            copied |= set(line.split()[1:-1])
    allowed = {line[1:] for line in (PR2.parent / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert copied == allowed == set(CONTEXT_FILES) | set(CONTEXT_DIRS)
