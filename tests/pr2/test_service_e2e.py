"""End to end with real processes: API (uvicorn) and worker subprocesses on the session's real broker
(Apache Kafka when Java is there, see conftest.py).

Round trip for images and tensors served in batches > 1, long-polling GET, a poison request dead-lettered
after its attempts while later requests are still served, an expired request never run, graceful SIGTERM.
The round trip and the dead letters also run on Tansu, the broker of machines without Java."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from PR2_async_inference.local_stack import Proc, service_env, start_api, start_worker, stop_process
from PR2_async_inference.messaging.messages import FINAL_STATES, RequestMessage
from PR2_async_inference.messaging.producer import make_producer, send_request
from tests.pr2.conftest import make_topics, metric_value, suite_settings, topic_overrides, wait_final

pytestmark = pytest.mark.slow

PREFIX = f"e2e-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def running_stack(broker: Proc, registry, logs, prefix: str) -> Iterator[dict]:
    """API and one worker on ``broker``, with topics and group of their own; stopped by pid on exit."""
    settings = suite_settings(broker, prefix, registry, max_attempts=3)
    make_topics(settings)
    env = service_env(broker, registry, **topic_overrides(prefix), max_attempts=3, torch_threads=1)
    api = worker = client = None
    try:
        api = start_api(logs, env, name=f"{prefix}-api")
        worker = start_worker(logs, env, name=f"{prefix}-worker")
        client = httpx.Client(base_url=api.info["url"], timeout=30)
        yield {"settings": settings, "api": api, "worker": worker, "client": client, "env": env}
    finally:
        if client is not None:
            client.close()
        stop_process(worker)
        stop_process(api)


@pytest.fixture(scope="module")
def stack(broker, pr2_registry, pr2_logs) -> Iterator[dict]:
    with running_stack(broker, pr2_registry, pr2_logs, PREFIX) as running:
        yield running


def worker_metrics(stack) -> str:
    return httpx.get(stack["worker"].info["metrics_url"] + "/metrics", timeout=10).text


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_round_trip_image_and_tensor_burst_in_batches(stack, digits_data):
    check_round_trip(stack, digits_data)


def check_round_trip(stack: dict, digits_data) -> None:
    client = stack["client"]
    images, labels = digits_data.test.tensors
    burst = 24
    ids = [client.post("/inference", json={"data": images[i].numpy().round(4).tolist(),
                                           "parameters": {"top_k": 3}}).json()["request_id"]
           for i in range(burst)]
    # An image the way a user sends it: a PNG, preprocessed by the API with the manifest's mean/std.
    mean = np.asarray(digits_data.mean).reshape(3, 1, 1)
    std = np.asarray(digits_data.std).reshape(3, 1, 1)
    pixels = ((images[0].numpy() * std + mean).clip(0, 1) * 255).round().astype("uint8").transpose(1, 2, 0)
    image_id = client.post("/inference", json={"model_name": "image_classification",
                                               "data": png_b64(pixels)}).json()["request_id"]
    done = wait_final(client, [*ids, image_id])
    assert {d["status"] for d in done.values()} == {"succeeded"}
    for d in done.values():
        scores = [p["score"] for p in d["result"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert all(len(done[i]["result"]) == 3 for i in ids) and len(done[image_id]["result"]) == 5
    assert max(d["batch_size"] for d in done.values()) > 1
    text = worker_metrics(stack)
    forward_passes = metric_value(text, "inference_batch_size_count", model="image_classification")
    served = metric_value(text, "inference_batch_size_sum", model="image_classification")
    assert served >= burst + 1 and forward_passes < served  # batches larger than one
    if not os.environ.get("PR2_TEST_ARTIFACT"):  # the trained digits model: predictions mean something
        top1 = [int(done[i]["result"][0]["label"]) for i in ids]
        assert np.mean(np.asarray(top1) == labels[:burst].numpy()) >= 0.7
        assert done[image_id]["result"][0]["label"] == done[ids[0]]["result"][0]["label"]


def dead_letters(settings, keys: set[str], timeout_s: float = 30.0) -> dict[str, dict[str, str]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    tp = TopicPartition(settings.dlq_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while keys - set(found) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    found[r.key.decode()] = {k: v.decode(errors="replace") for k, v in r.headers}
    finally:
        consumer.close()
    return found


def test_long_poll_answers_with_the_final_state_in_one_request(stack):
    client = stack["client"]
    request_id = client.post("/inference", json={"data": np.zeros((3, 32, 32)).tolist()}).json()["request_id"]
    response = client.get(f"/inference/{request_id}", params={"wait": 60}, timeout=70)
    assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert client.get(f"/inference/{request_id}", params={"wait": 61}).status_code == 422  # above the cap


def test_poison_requests_are_dead_lettered_and_later_requests_served(stack):
    check_poison_dead_lettered(stack)


def check_poison_dead_lettered(stack: dict) -> None:
    settings, client = stack["settings"], stack["client"]
    producer = make_producer(settings)
    now = time.time()
    malformed_id, wrong_shape_id = str(uuid.uuid4()), str(uuid.uuid4())
    # Bytes that do not match their shape header: undecodable on the worker.
    malformed = RequestMessage(malformed_id, "image_classification", np.zeros((3, 32, 32), np.float32),
                               deadline=now + 300, enqueued_at=now)
    producer.send(settings.requests_topic, key=malformed_id.encode(), value=b"\x00" * 40,
                  headers=malformed.headers()).result(10)
    # Decodes fine but the model refuses it (wrong shape) - inside a batch with good requests.
    wrong = RequestMessage(wrong_shape_id, "image_classification", np.zeros((3, 16, 16), np.float32),
                           deadline=now + 300, enqueued_at=now)
    send_request(producer, settings, wrong).result(10)
    producer.close()
    good = [client.post("/inference", json={"data": np.zeros((3, 32, 32)).tolist()}).json()["request_id"]
            for _ in range(6)]
    done = wait_final(client, [malformed_id, wrong_shape_id, *good])
    for poison in (malformed_id, wrong_shape_id):
        assert done[poison]["status"] == "failed"
        assert done[poison]["attempt"] == settings.max_attempts
    assert "malformed request" in done[malformed_id]["error"]
    assert "expects input of shape" in done[wrong_shape_id]["error"]
    assert all(done[g]["status"] == "succeeded" for g in good)
    letters = dead_letters(settings, {malformed_id, wrong_shape_id})
    assert set(letters) == {malformed_id, wrong_shape_id}
    assert "expects input of shape" in letters[wrong_shape_id]["error"]
    assert letters[malformed_id]["attempt"] == str(settings.max_attempts)
    failed = metric_value(worker_metrics(stack), "inference_requests_failed_total", model="image_classification")
    assert failed >= 2 * settings.max_attempts
    # The worker keeps going after the poison.
    later = client.post("/inference", json={"data": np.ones((3, 32, 32)).tolist()}).json()["request_id"]
    assert wait_final(client, [later])[later]["status"] == "succeeded"
    assert stack["worker"].alive()


def test_expired_request_is_never_run(stack):
    client = stack["client"]
    before = worker_metrics(stack)
    expired_id = client.post("/inference", json={"data": np.zeros((3, 32, 32)).tolist(),
                                                 "ttl_s": 0.001}).json()["request_id"]
    done = wait_final(client, [expired_id])[expired_id]
    assert done["status"] == "expired" and done.get("result") is None
    assert "not run" in done["error"]
    after = worker_metrics(stack)
    label = {"model": "image_classification"}
    assert metric_value(after, "inference_requests_expired_total", **label) == \
        metric_value(before, "inference_requests_expired_total", **label) + 1
    # Not a single forward pass happened for it.
    assert metric_value(after, "inference_batch_size_sum", **label) == \
        metric_value(before, "inference_batch_size_sum", **label)


def test_sigterm_finishes_and_leaves_the_group(stack, pr2_logs):
    client = stack["client"]
    extra = start_worker(pr2_logs, stack["env"], name=f"{PREFIX}-worker-extra")
    ids = [client.post("/inference", json={"data": np.zeros((3, 32, 32)).tolist()}).json()["request_id"]
           for _ in range(8)]
    assert stop_process(extra, timeout_s=30) == 0  # SIGTERM: batch finished, offsets committed, group left
    assert "SIGTERM" in extra.log.read_text()
    done = wait_final(client, ids)
    assert {d["status"] for d in done.values()} == {"succeeded"}


@pytest.mark.parametrize("client_mode", ["one-call", "two-call"])
def test_load_generator_is_bounded_and_reports_percentiles(stack, client_mode):
    from PR2_async_inference.load_test import HOPS, run_load

    result = run_load(stack["api"].info["url"], requests=12, concurrency=3, time_limit_s=60, input_shape=[3, 32, 32],
                      client_mode=client_mode)
    assert result["requests_sent"] == 12 and result["succeeded"] == 12 and result["errors"] == 0
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p95"] <= result["latency_ms_p99"]
    assert result["throughput_rps"] > 0
    # Every hop of a request's way is reported (the produce hop only from a 202); each is a duration within the
    # request's own latency.
    expected = [hop for hop in HOPS if client_mode == "two-call" or hop != "hop_ms_api_produce"]
    hops = {hop: result[f"{hop}_p50"] for hop in HOPS}
    assert all(0 <= hops[hop] <= result["latency_ms_p99"] for hop in expected), hops
    assert (hops["hop_ms_api_produce"] is None) == (client_mode == "one-call")


def test_post_with_wait_answers_the_final_state_in_one_call(stack):
    client = stack["client"]
    response = client.post("/inference", params={"wait": 30}, json={"data": np.zeros((3, 32, 32)).tolist()})
    assert response.status_code == 200, response.text
    final = response.json()
    assert final["status"] == "succeeded" and len(final["result"]) == 5
    assert response.headers["location"].endswith(f"/inference/{final['request_id']}")
    assert client.get(response.headers["location"]).json() == final  # the same body GET answers


def test_tansu_smoke_round_trip_and_dead_letters(tansu_broker, pr2_registry, pr2_logs, digits_data):
    """The no-Java path: the same round trip and dead letters on Tansu (in-memory storage)."""
    with running_stack(tansu_broker, pr2_registry, pr2_logs, f"{PREFIX}-tansu") as tansu_stack:
        assert tansu_stack["settings"].broker_kind == "tansu"
        check_round_trip(tansu_stack, digits_data)
        check_poison_dead_lettered(tansu_stack)


def kcat_records(bootstrap: str, topic: str) -> list[dict]:
    """Every record of ``topic`` as Debian's ``kcat`` (librdkafka, a second client) reads it: key, headers, value."""
    kcat = shutil.which("kcat")
    if kcat is None:
        if shutil.which("apt-get") is None:
            pytest.skip("kcat not installed and no apt-get to install it")
        pytest.fail("kcat not installed: apt-get install -y kcat (.ci/run installs it)")
    # Header line, then exactly %S value bytes: values are binary.
    out = subprocess.run([kcat, "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q",
                          "-f", "%k\t%S\t%h\n%s"], capture_output=True, timeout=60, check=True).stdout
    records, pos = [], 0
    while pos < len(out):
        end = out.index(b"\n", pos)
        key, size, headers = out[pos:end].decode().split("\t")
        size = max(int(size), 0)  # kcat prints -1 for a null value
        # kcat joins headers as k1=v1,k2=v2 and a value may hold commas (shape=3,32,32): split before names.
        pairs = dict(re.findall(r"([A-Za-z_]+)=(.*?)(?=,[A-Za-z_]+=|$)", headers))
        records.append({"key": key, "headers": pairs, "value": out[end + 1:end + 1 + size]})
        pos = end + 1 + size
    return records


def test_kcat_reads_requests_and_results_as_the_readme_documents(stack, broker):
    if broker.info["kind"] != "kafka":
        pytest.skip("kcat speaks to Apache Kafka; the session broker is Tansu")
    client, settings = stack["client"], stack["settings"]
    tensor = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    tensor_id = client.post("/inference", json={"data": tensor.tolist(), "parameters": {"top_k": 3}}
                            ).json()["request_id"]
    pixels = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image_id = client.post("/inference", json={"data": png_b64(pixels)}).json()["request_id"]
    assert {d["status"] for d in wait_final(client, [tensor_id, image_id]).values()} == {"succeeded"}

    requests = {r["key"]: r for r in kcat_records(settings.kafka_bootstrap_servers, settings.requests_topic)}
    sent = requests[tensor_id]
    assert sent["headers"]["request_id"] == tensor_id and sent["headers"]["model"] == "image_classification"
    assert sent["headers"]["shape"] == "3,32,32" and sent["headers"]["dtype"] == "float32"
    assert sent["headers"]["top_k"] == "3" and sent["headers"]["attempt"] == "1"
    assert float(sent["headers"]["enqueued_at"]) < float(sent["headers"]["deadline"])
    assert sent["value"] == tensor.tobytes()  # float32, (C, H, W), C order
    image = requests[image_id]
    assert image["headers"]["dtype"] == "uint8" and image["headers"]["shape"] == "3,32,32"
    assert image["value"] == pixels.transpose(2, 0, 1).tobytes()  # the PNG's pixels, (C, H, W)

    results: dict[str, list[dict]] = {}
    for record in kcat_records(settings.kafka_bootstrap_servers, settings.results_topic):
        results.setdefault(record["key"], []).append(json.loads(record["value"]))
    for request_id, top_k in ((tensor_id, 3), (image_id, 5)):
        states = [r["status"] for r in results[request_id]]
        # The API's "queued" and the worker's states come from two producers: their order may interleave.
        assert "queued" in states and [s for s in states if s in FINAL_STATES] == ["succeeded"], states
        assert all(r["request_id"] == request_id for r in results[request_id])
        final = next(r for r in results[request_id] if r["status"] == "succeeded")
        assert len(final["result"]) == top_k and {"label", "index", "score"} <= set(final["result"][0])
