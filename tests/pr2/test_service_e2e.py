"""End to end with real processes: API (uvicorn) and worker subprocesses on a real Tansu broker.

Round trip for images and tensors served in batches > 1, long-polling GET, a poison request dead-lettered
after its attempts while later requests are still served, an expired request never run, graceful SIGTERM."""

from __future__ import annotations

import base64
import io
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from PR2_async_inference.kafka_queue_service import RequestMessage, make_producer, send_request
from PR2_async_inference.local_stack import service_env, start_api, start_worker, stop_process
from tests.pr2.conftest import make_topics, metric_value, suite_settings, topic_overrides, wait_final

pytestmark = pytest.mark.slow

PREFIX = f"e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def stack(broker, pr2_registry, pr2_logs) -> Iterator[dict]:
    settings = suite_settings(broker.info["bootstrap"], PREFIX, pr2_registry, max_attempts=3)
    make_topics(settings)
    env = service_env(broker.info["bootstrap"], pr2_registry, **topic_overrides(PREFIX), max_attempts=3,
                      torch_threads=1)
    api = start_api(pr2_logs, env, name=f"{PREFIX}-api")
    worker = start_worker(pr2_logs, env, name=f"{PREFIX}-worker")
    client = httpx.Client(base_url=api.info["url"], timeout=30)
    try:
        yield {"settings": settings, "api": api, "worker": worker, "client": client, "env": env}
    finally:
        client.close()
        stop_process(worker)
        stop_process(api)


def worker_metrics(stack) -> str:
    return httpx.get(stack["worker"].info["metrics_url"] + "/metrics", timeout=10).text


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_round_trip_image_and_tensor_burst_in_batches(stack, digits_data):
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
    settings, client = stack["settings"], stack["client"]
    producer = make_producer(settings)
    now = time.time()
    malformed_id, wrong_shape_id = str(uuid.uuid4()), str(uuid.uuid4())
    # Bytes that do not match their shape header: undecodable on the worker.
    malformed = RequestMessage(malformed_id, "image_classification", np.zeros((3, 32, 32), np.float32),
                               deadline=now + 300, enqueued_at=now)
    producer.send(settings.requests_topic, key=malformed_id.encode(), value=b"\x00" * 40,
                  headers=malformed.headers()).get(10)
    # Decodes fine but the model refuses it (wrong shape) - inside a batch with good requests.
    wrong = RequestMessage(wrong_shape_id, "image_classification", np.zeros((3, 16, 16), np.float32),
                           deadline=now + 300, enqueued_at=now)
    send_request(producer, settings, wrong).get(10)
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


def test_load_generator_is_bounded_and_reports_percentiles(stack):
    from PR2_async_inference.load_test import run_load

    result = run_load(stack["api"].info["url"], requests=12, concurrency=3, time_limit_s=60, input_shape=[3, 32, 32])
    assert result["requests_sent"] == 12 and result["succeeded"] == 12 and result["errors"] == 0
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p95"] <= result["latency_ms_p99"]
    assert result["throughput_rps"] > 0
