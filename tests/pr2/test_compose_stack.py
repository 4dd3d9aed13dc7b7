"""`docker-compose up -d` for real: PR2's compose stack on a local Docker engine, with local images.

One stack per module (distinct compose project, free 127.0.0.1 ports, the digits ResNet-18 quantized by PR3 as
models/quantized_model.pt): the README's curl request, a burst of digit images, bad input, Prometheus scraping the
queue metrics the HPA uses, `--scale worker=3` with every request of a new burst answered, a worker killed with
SIGKILL mid-burst without a request lost, and `down -v` leaving nothing, the engine stopped and its network
changes undone when this module started it. Never skipped: without an engine it fails with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from PR2_async_inference import container_engine
from PR2_async_inference.compose_stack import ComposeStack, compose, compose_down, compose_up, wait_healthy
from PR2_async_inference.processes import free_port
from PR2_async_inference.settings import Settings
from tests.pr2.conftest import wait_final

# The first test's set-up builds the local images when the engine has none: about 15 minutes cold on a busy
# 2-core machine (see the README), past the suite's 900 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PROJECT = "pr2-compose-test"
MODEL = "image_classification"


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the stack (.ci/run installs all of it)."""
    needed = {"dockerd": "docker.io", "docker": "docker.io", "docker-compose": "docker-compose",
              "debootstrap": "debootstrap"}
    missing = [f"{cmd} (apt-get install {pkg})" for cmd, pkg in needed.items() if shutil.which(cmd) is None]
    if not container_engine.engine_running() and os.geteuid() != 0:
        missing.append("root, to start dockerd")
    return missing


@pytest.fixture(scope="module")
def engine() -> Iterator[dict | None]:
    """The engine: started here when none runs (its state, to stop it and undo its network changes), else None."""
    missing = missing_prerequisites()
    if missing:
        pytest.fail(f"the compose stack cannot run here: missing {', '.join(missing)}")
    state = container_engine.start_engine()
    try:
        yield state
    finally:
        if state is not None and container_engine.read_state() is not None:  # the last test did not stop it
            container_engine.stop_engine(state)


@pytest.fixture(scope="module")
def stack(engine, pr2_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    models = tmp_path_factory.mktemp("compose_models")
    started = None
    try:
        started = compose_up(PROJECT, images="local", models_dir=models, base_model=pr2_model,
                             api_host="127.0.0.1", api_port=free_port(), prometheus_port=free_port(),
                             kafka_port=free_port())
        yield started
    finally:
        if container_engine.engine_running():
            compose_down(PROJECT, env=started.env if started else None, stop_engine=False)


def png_b64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def digit_pixels(digits_data, index: int) -> np.ndarray:
    """Test image ``index`` as the uint8 RGB picture a user would send (the manifest's normalisation undone)."""
    images, _ = digits_data.test.tensors
    mean = np.asarray(digits_data.mean).reshape(3, 1, 1)
    std = np.asarray(digits_data.std).reshape(3, 1, 1)
    return ((images[index].numpy() * std + mean).clip(0, 1) * 255).round().astype("uint8").transpose(1, 2, 0)


def post_images(stack: ComposeStack, digits_data, indices: list[int],
                on_accepted: Callable[[int], None] | None = None) -> list[str]:
    """POST each test image as the README's body (base64 PNG, top_k 3) from 8 clients; returns the request ids.
    ``on_accepted(n)`` runs as the answers come in, in order (n answers so far), while later POSTs go on."""
    bodies = [{"model_name": MODEL, "data": png_b64(digit_pixels(digits_data, i)), "parameters": {"top_k": 3}}
              for i in indices]
    answers = []
    with httpx.Client(base_url=stack.api_url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(client.post, "/inference", json=body) for body in bodies]:
            answers.append(future.result())
            if on_accepted is not None:
                on_accepted(len(answers))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers if a.status_code != 202][:3]
    return [a.json()["request_id"] for a in answers]


def check_answers(stack: ComposeStack, digits_data, ids: list[str], indices: list[int]) -> dict[str, dict]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        done = wait_final(client, ids, timeout_s=180)
    assert {d["status"] for d in done.values()} == {"succeeded"}
    _, labels = digits_data.test.tensors
    top1 = np.asarray([int(done[i]["result"][0]["label"]) for i in ids])
    assert np.mean(top1 == labels[indices].numpy()) >= 0.7  # the trained digits model, int8, through the stack
    return done


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def test_readme_curl_request_is_answered(stack: ComposeStack, digits_data, tmp_path: Path):
    """The README's two curl commands, as written but for the port: an image POSTed, then its status."""
    (tmp_path / "cat.png").write_bytes(base64.b64decode(png_b64(digit_pixels(digits_data, 0))))
    post = (f'curl -sS -i -X POST {stack.api_url}/inference -H "Content-Type: application/json" '
            f'-d "{{\\"model_name\\":\\"image_classification\\",\\"data\\":\\"$(base64 -w0 cat.png)\\",'
            f'\\"parameters\\":{{\\"top_k\\":3}}}}"')
    head, _, body = subprocess.run(["bash", "-c", post], cwd=tmp_path, check=True, capture_output=True,
                                   text=True, timeout=60).stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 202 Accepted")
    accepted = json.loads(body)
    assert accepted["status"] == "queued" and accepted["model_name"] == MODEL
    assert f"location: {stack.api_url}/inference/{accepted['request_id']}" in head.lower()
    deadline, status = time.monotonic() + 60, {}
    while time.monotonic() < deadline and status.get("status") not in ("succeeded", "failed", "expired"):
        status = json.loads(curl(f"{stack.api_url}/inference/{accepted['request_id']}"))
        time.sleep(0.2)
    assert status["status"] == "succeeded", status
    assert [sorted(p) for p in status["result"]] == [["index", "label", "score"]] * 3


def test_burst_of_images_is_answered_in_batches(stack: ComposeStack, digits_data):
    indices = list(range(1, 33))
    done = check_answers(stack, digits_data, post_images(stack, digits_data, indices), indices)
    assert max(d["batch_size"] for d in done.values()) > 1


def test_bad_input_gets_the_same_answers_as_the_local_stack(stack: ComposeStack):
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        unknown = client.post("/inference", json={"model_name": "x", "data": [[[0.0]]]})
        wrong_shape = client.post("/inference", json={"data": np.zeros((3, 16, 16)).tolist()})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Unknown model 'x'. Choose one of: image_classification"}
    assert wrong_shape.status_code == 422
    assert wrong_shape.json()["detail"].startswith("'data' has shape [3, 16, 16]; model expects [3, 32, 32]")


def prometheus_query(stack: ComposeStack, query: str) -> list[dict]:
    url = f"{stack.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    answer = httpx.get(url, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_prometheus(stack: ComposeStack, query: str, ok, timeout_s: float = 90.0) -> list[dict]:
    """Query until ``ok(result)`` (scrapes every 5 s, worker discovery every 15 s); fails with the last result."""
    deadline = time.monotonic() + timeout_s
    result: list[dict] = []
    while time.monotonic() < deadline:
        result = prometheus_query(stack, query)
        if ok(result):
            return result
        time.sleep(2)
    raise AssertionError(f"{query}: {result} after {timeout_s:.0f} s")


def test_prometheus_scrapes_the_queue_metrics_the_hpa_uses(stack: ComposeStack):
    """inference_consumer_lag, summed per pod by PR1's adapter rule, from the workers' scrapes."""
    up = wait_prometheus(stack, "up", lambda r: {s["metric"]["job"] for s in r if s["value"][1] == "1"}
                         >= {"inference-api", "inference-worker"})
    assert len(up) >= 2
    lag = wait_prometheus(stack, 'sum(inference_consumer_lag{job="inference-worker"})', lambda r: len(r) == 1)
    assert float(lag[0]["value"][1]) >= 0


def group_members(stack: ComposeStack) -> int:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=10000)
    try:
        group = admin.describe_groups([Settings().worker_group])[Settings().worker_group]
        return len(group["members"]) if group["group_state"] == "Stable" else -1
    finally:
        admin.close()


def wait_members(stack: ComposeStack, count: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    members = -1
    while time.monotonic() < deadline and (members := group_members(stack)) != count:
        time.sleep(1)
    assert members == count, f"the worker group has {members} members, not {count}"


def test_scale_to_three_workers_shares_the_queue(stack: ComposeStack, digits_data):
    compose(PROJECT, "up", "-d", "--scale", "worker=3", env=stack.env)
    wait_healthy(PROJECT, stack.env, stack.prometheus_url, timeout_s=300)
    wait_members(stack, 3)
    indices = list(range(40, 100))
    check_answers(stack, digits_data, post_images(stack, digits_data, indices), indices)
    wait_prometheus(stack, 'count(up{job="inference-worker"} == 1)', lambda r: r and r[0]["value"][1] == "3")


def test_worker_killed_mid_burst_loses_no_request(stack: ComposeStack, digits_data):
    workers = [line for line in compose(PROJECT, "ps", "-q", "worker", env=stack.env).stdout.split() if line]
    assert len(workers) == 3
    indices = list(range(100, 300))
    killed_at = []

    def kill_one_worker(accepted: int) -> None:
        if accepted == 60:  # a third of the burst in: requests still arrive, batches are in the workers' hands
            subprocess.run(["docker", "kill", "-s", "KILL", workers[0]], check=True, capture_output=True)
            killed_at.append(accepted)

    ids = post_images(stack, digits_data, indices, on_accepted=kill_one_worker)
    assert killed_at == [60]
    done = check_answers(stack, digits_data, ids, indices)
    assert len(done) == len(set(ids)) == len(indices)


def test_down_leaves_nothing_and_the_engine_is_undone(stack: ComposeStack, engine):
    before_stop = container_engine.read_state()
    result = compose_down(PROJECT, env=stack.env, stop_engine=engine is not None, engine_state=engine)
    assert result["leftovers"] == {"containers": [], "networks": [], "volumes": []}
    if engine is not None:
        assert before_stop is not None and container_engine.read_state() is None
        assert not container_engine.engine_running()
        after = container_engine.network_fingerprint(container_engine.host_network_state())
        assert after == container_engine.network_fingerprint(engine["before"])
