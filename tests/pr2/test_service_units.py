"""Pieces of the service that need no broker: the result cache's state rules, message encoding, input
decoding, callback signing and allowlist, batching precedence, and the compose/Prometheus files."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from modelops.artifact import Manifest
from modelops.errors import UsageError
from PR2_async_inference import metrics
from PR2_async_inference.api.main import create_app
from PR2_async_inference.async_fastapi_server import ResultStore
from PR2_async_inference.callback_security import host_allowed, sign
from PR2_async_inference.codec import decode_input, model_input, top_k
from PR2_async_inference.messaging.messages import RequestMessage, StatusMessage
from PR2_async_inference.model_worker import ModelWorker
from PR2_async_inference.registry import load_registry
from PR2_async_inference.settings import IMAGE_NAME, Settings
from PR2_async_inference.worker.inference import torch_only_preprocesses

PR2 = Path(__file__).resolve().parents[2] / "PR2_async_inference"


def status(request_id: str, state: str, created: float = 1.0, **kw) -> StatusMessage:
    return StatusMessage(request_id=request_id, model_name="m", status=state, created_at=created, **kw)


def test_result_store_first_final_state_wins_and_never_goes_back():
    store = ResultStore(size=10, idempotency_size=10)
    store.apply(status("a", "queued", idempotency_key="k1"))
    store.apply(status("a", "running"))
    store.apply(status("a", "queued"))  # late echo of the API's own message
    assert store.get("a").status == "running"
    store.apply(status("a", "succeeded"))
    store.apply(status("a", "expired"))  # a redelivered copy judged later must not flip the result
    store.apply(status("a", "running"))
    assert store.get("a").status == "succeeded"
    assert store.by_idempotency_key("k1") == "a"


def test_result_store_backlog_and_lru_bound():
    store = ResultStore(size=3, idempotency_size=3)
    now = time.time()
    for i in range(3):
        store.apply(status(f"r{i}", "queued", created=now - 10 + i))
    pending, oldest = store.backlog(now)
    assert pending == 3 and oldest == pytest.approx(10, abs=0.01)
    store.apply(status("r0", "failed", created=now - 10))
    assert store.backlog(now)[0] == 2
    for i in range(3, 6):
        store.apply(status(f"r{i}", "succeeded"))
    assert store.get("r1") is None and len(store.statuses) == 3
    assert store.backlog(now) == (0, 0.0)  # evicted entries leave the backlog too


def test_result_store_long_poll_wakes_on_the_final_state_from_another_thread():
    store = ResultStore(size=10, idempotency_size=10)
    store.apply(status("a", "queued"))

    async def scenario() -> tuple:
        # The results reader applies states on its own thread: "running" must not wake the waiter.
        threading.Timer(0.05, store.apply, [status("a", "running")]).start()
        threading.Timer(0.2, store.apply, [status("a", "succeeded")]).start()
        final = await store.wait_final("a", timeout_s=10)
        timed_out = await store.wait_final("b-unknown", timeout_s=10)  # unknown ids answer at once
        store.apply(status("c", "queued"))
        still_queued = await store.wait_final("c", timeout_s=0.05)
        return final, timed_out, still_queued

    final, unknown, still_queued = asyncio.run(scenario())
    assert final.status == "succeeded"  # not the "running" that arrived first
    assert unknown is None and still_queued.status == "queued"
    assert store.waiters == {}  # nobody left registered after a wake-up or a timeout


def test_request_message_round_trips_through_record_fields():
    tensor = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    message = RequestMessage("id-1", "m", tensor, deadline=123.5, enqueued_at=100.25, attempt=2, top_k=3,
                             callback_url="https://h/x")
    record = SimpleNamespace(topic="t", partition=1, offset=7, key=b"id-1", value=message.value(),
                             headers=message.headers())
    back = RequestMessage.from_record(record)
    assert np.array_equal(back.tensor, tensor)
    assert (back.deadline, back.enqueued_at, back.attempt, back.top_k, back.callback_url) == \
        (123.5, 100.25, 2, 3, "https://h/x")
    record.value = b"\x00" * 8
    with pytest.raises(ValueError, match="header shape"):
        RequestMessage.from_record(record)


def test_image_pixels_travel_as_uint8():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    message = RequestMessage("id-2", "m", pixels, deadline=1.0, enqueued_at=0.5)
    assert len(message.value()) == 12 and dict(message.headers())["dtype"] == b"uint8"
    record = SimpleNamespace(topic="t", partition=0, offset=0, key=b"id-2", value=message.value(),
                             headers=message.headers())
    back = RequestMessage.from_record(record)
    assert back.tensor.dtype == np.uint8 and np.array_equal(back.tensor, pixels)
    record.headers = [(k, b"int64" if k == "dtype" else v) for k, v in record.headers]
    with pytest.raises(ValueError, match="unsupported dtype"):
        RequestMessage.from_record(record)


def manifest() -> Manifest:
    return Manifest(num_classes=3, input_shape=[3, 8, 8], labels=["a", "b", "c"],
                    preprocessing={"size": 8, "mean": [0.5] * 3, "std": [0.5] * 3})


def test_decode_input_shapes_and_errors():
    m = manifest()
    assert decode_input(np.zeros((1, 3, 8, 8)).tolist(), m).shape == (3, 8, 8)
    with pytest.raises(UsageError, match=r"model expects \[3, 8, 8\]"):
        decode_input(np.zeros((3, 4, 4)).tolist(), m)
    with pytest.raises(UsageError, match="NaN"):
        decode_input(np.full((3, 8, 8), np.nan).tolist(), m)
    with pytest.raises(UsageError, match="must be a base64 image string or a nested list"):
        decode_input(3, m)


def test_decode_image_applies_manifest_preprocessing():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 127)).save(buf, "PNG")
    pixels = decode_input(base64.b64encode(buf.getvalue()).decode(), manifest())
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8  # what the queue carries
    tensor = model_input(pixels, manifest())  # what the worker feeds the model
    assert tensor.dtype == np.float32
    # (x/255 - 0.5) / 0.5 per channel
    assert tensor[0].mean() == pytest.approx(1.0) and tensor[1].mean() == pytest.approx(-1.0)
    assert tensor[2].mean() == pytest.approx(127 / 255 * 2 - 1, abs=1e-4)


@pytest.mark.parametrize("side", [20, 600])  # decoded on the event loop; on a worker thread (over 512x512)
def test_the_api_decodes_small_and_large_images_alike(side: int):
    import asyncio
    import base64
    import io

    from PIL import Image

    from PR2_async_inference.api.admission import INLINE_DECODE_PIXELS, decode

    assert (side * side <= INLINE_DECODE_PIXELS) == (side == 20)
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (255, 0, 127)).save(buf, "PNG")
    pixels = asyncio.run(decode(base64.b64encode(buf.getvalue()).decode(), manifest()))
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8
    assert pixels[0].min() == 255 and pixels[1].max() == 0
    truncated = base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    with pytest.raises(UsageError, match="not a decodable PNG/JPEG image"):
        asyncio.run(decode(truncated, manifest()))
    with pytest.raises(UsageError, match="not a decodable"):
        asyncio.run(decode(base64.b64encode(b"not an image").decode(), manifest()))


def test_top_k_is_softmax_sorted():
    out = top_k(np.array([1.0, 3.0, 2.0]), ["a", "b", "c"], 2)
    assert [p["label"] for p in out] == ["b", "c"]
    assert out[0]["score"] > out[1]["score"] and sum(p["score"] for p in top_k(np.zeros(3), [], 3)) == \
        pytest.approx(1.0)


def test_callback_allowlist_and_signature():
    allow = ["hooks.example.test", "localhost:9999"]
    assert host_allowed("https://hooks.example.test/x", allow)
    assert host_allowed("http://localhost:9999/cb", allow)
    assert not host_allowed("http://localhost:8000/cb", allow)
    assert not host_allowed("http://169.254.169.254/", allow)
    assert not host_allowed("file:///etc/passwd", allow)
    assert not host_allowed("https://hooks.example.test/x", [])
    body, secret = b'{"a":1}', "s"
    expected = hmac.new(b"s", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(body, secret, "1700000000") == expected


def test_worker_refuses_the_placeholder_secret_when_callbacks_are_allowed(tmp_path):
    import os
    import sys

    env = {**os.environ, "INFERENCE_CALLBACK_ALLOWLIST": '["hooks.example.test"]',
           "INFERENCE_CALLBACK_HMAC_SECRET": "change-me", "INFERENCE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    done = subprocess.run([sys.executable, str(PR2 / "model_worker.py"), "--max-seconds", "1"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=PR2.parent)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "INFERENCE_CALLBACK_HMAC_SECRET" in lines[0] and "change-me" in lines[0]


def test_batching_explicit_setting_beats_registry(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text("models:\n  m:\n    artifact: missing.pt\n    max_batch_size: 4\n    max_batch_delay_ms: 7\n")
    registry = load_registry(reg)
    assert ModelWorker(Settings(model_registry=reg), registry).batching("m") == (4, 0.007)
    explicit = Settings(model_registry=reg, max_batch_size=1)
    assert ModelWorker(explicit, registry).batching("m") == (1, 0.007)
    with pytest.raises(UsageError, match="Choose one of: m"):
        registry.get("image_classification")


def test_adaptive_batching_runs_a_partial_batch_only_when_nothing_else_is_queued(tmp_path):
    reg = tmp_path / "r.yaml"
    reg.write_text("models:\n  m:\n    artifact: missing.pt\n    max_batch_size: 8\n    max_batch_delay_ms: 1000\n")
    record = SimpleNamespace(headers=[("model", b"m")])
    for adaptive, caught_up, expected in [(True, True, True), (True, False, False), (False, True, False)]:
        worker = ModelWorker(Settings(model_registry=reg, adaptive_batching=adaptive), load_registry(reg))
        worker._buffer, worker._caught_up = [record], caught_up
        assert worker._should_flush(time.monotonic()) is expected
    worker._buffer = [record] * 8  # a full batch never waits
    assert worker._should_flush(time.monotonic()) is True


def test_a_request_without_model_name_asks_the_shipped_registry_for_pr3s_int8_model(tmp_path):
    """The shipped registry's default model is image_classification, PR3's quantized_model.pt: a request that
    names no model asks for it (here its file is absent, so the answer is the 503 that names both)."""
    from fastapi.testclient import TestClient

    copy = tmp_path / "registry" / "model_registry.yaml"  # its ../models/ is empty, whatever the repo's holds
    copy.parent.mkdir()
    shutil.copy(PR2 / "model_registry.yaml", copy)
    with TestClient(create_app(Settings(model_registry=copy), start_kafka=False)) as client:
        assert [m["name"] for m in client.get("/models").json() if m["default"]] == ["image_classification"]
        response = client.post("/inference", json={"data": [[[0.0]]]})
    assert response.status_code == 503, response.text
    assert "'image_classification'" in response.json()["detail"] and "quantized_model.pt" in response.json()["detail"]


def test_metric_names_are_the_shared_ones():
    from prometheus_client import generate_latest

    metrics.REQUESTS_RECEIVED.labels("unit").inc(0)
    metrics.CONSUMER_LAG.labels("t", "0").set(0)
    text = generate_latest().decode()
    for name in ("inference_requests_received_total", "inference_consumer_lag",
                 "inference_oldest_request_age_seconds"):
        assert name in text
    assert set(metrics.METRIC_NAMES.values()) >= {
        "inference_requests_processed_total", "inference_requests_failed_total",
        "inference_requests_expired_total", "inference_batch_size", "inference_latency_seconds",
        "inference_queue_time_seconds", "inference_forward_cpu_seconds_total"}


def test_a_forward_pass_adds_its_process_cpu_time_to_the_counter(pr2_model):
    from prometheus_client import REGISTRY

    from modelops.artifact import load_artifact
    from PR2_async_inference.worker.inference import forward

    def counted() -> float:
        return REGISTRY.get_sample_value("inference_forward_cpu_seconds_total", {"model": "unit-cpu"}) or 0.0

    predictor = load_artifact(pr2_model, threads=1)
    before = counted()
    logits, _ = forward(predictor, [np.zeros(predictor.input_shape, dtype=np.float32)] * 4, "unit-cpu")
    assert logits.shape[0] == 4
    assert counted() > before


def compose() -> dict:
    return yaml.safe_load((PR2 / "docker-compose.yaml").read_text())


def test_compose_file_agrees_with_settings():
    doc, s = compose(), Settings()
    services = doc["services"]
    assert {"kafka", "topics", "api", "worker", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"] and "healthcheck" in services["kafka"]
    for name in ("topics", "api", "worker"):
        assert services[name]["image"] == IMAGE_NAME
    assert services["api"]["ports"] == [f"{s.api_port}:{s.api_port}"]
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


def test_load_generator_refuses_non_local_targets():
    from PR2_async_inference.load_test import run_load

    with pytest.raises(UsageError, match=r"only target 127\.0\.0\.1"):
        run_load("http://example.com:8000", requests=1)


def test_load_generator_says_when_no_api_answers():
    from PR2_async_inference.load_test import run_load
    from PR2_async_inference.processes import free_port

    with pytest.raises(UsageError, match=r"no API answers at --url http://127\.0\.0\.1:\d+ .*local_stack\.py"):
        run_load(f"http://127.0.0.1:{free_port()}", requests=1)


def test_tansu_gets_its_fetch_wait_when_the_caller_passes_none() -> None:
    """bench_e2e and local_stack pass fetch_max_wait_ms=None for "the default": on Tansu that is Tansu's wait."""
    from pathlib import Path

    from PR2_async_inference.local_stack import TANSU_FETCH_MAX_WAIT_MS, service_env
    from PR2_async_inference.processes import Proc

    tansu = Proc("broker", popen=None, log=Path("broker.log"), info={"kind": "tansu", "bootstrap": "127.0.0.1:1"})
    assert service_env(tansu, fetch_max_wait_ms=None)["INFERENCE_FETCH_MAX_WAIT_MS"] == str(TANSU_FETCH_MAX_WAIT_MS)
    assert service_env(tansu, fetch_max_wait_ms=80)["INFERENCE_FETCH_MAX_WAIT_MS"] == "80"
    assert "INFERENCE_FETCH_MAX_WAIT_MS" not in service_env("127.0.0.1:1", fetch_max_wait_ms=None)


def test_bench_e2e_thread_cpu_seconds_names_the_threads_of_a_process_and_sums_to_its_cpu():
    from PR2_async_inference.benchmarks.bench_e2e import cpu_seconds, thread_cpu_seconds

    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # some CPU on this (main) thread
        pass
    threads = thread_cpu_seconds(os.getpid())
    total = cpu_seconds(os.getpid())  # read second: it also counts threads that have ended
    main_thread_name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert threads[main_thread_name] > 0
    assert 0 < sum(threads.values()) <= total + 0.01
    assert thread_cpu_seconds(2**22 + 1) == {}  # no such process: nothing, not an error


def test_bench_e2e_cpu_bound_ratio_is_what_the_cpu_per_request_allows_on_the_cores():
    from PR2_async_inference.benchmarks.bench_e2e import cpu_bound_ratio, cpu_ms_per_request

    names = ("broker", "broker_jit", "api", "workers", "loadgen", "forward")
    before = dict.fromkeys(names, 0.0)
    # 100 requests: broker 0.1 s (JIT included), API 0.2 s, workers 0.5 s (0.4 forward), load generator 0.2 s
    after = {"broker": 0.1, "broker_jit": 0.02, "api": 0.2, "workers": 0.5, "loadgen": 0.2, "forward": 0.4}
    cpu_ms = cpu_ms_per_request(before, after, 100)
    assert cpu_ms["cpu_ms_per_req_service_overhead"] == 4.0  # broker 1 + API 2 + workers outside forward 1
    # 10 ms of CPU per request: 2 cores pass at most 200 requests/s, half of 400 in-process; 4 cores all of it
    assert cpu_bound_ratio(cpu_ms, 400.0, cores=2) == pytest.approx(0.5)
    assert cpu_bound_ratio(cpu_ms, 400.0, cores=4) == pytest.approx(1.0)


def test_the_worker_keeps_one_torch_thread_when_every_model_runs_on_its_own_runtime_pool():
    ort, openvino, eager = (SimpleNamespace(backend=b) for b in ("onnxruntime", "openvino", "torch"))
    assert torch_only_preprocesses({"a": ort, "b": openvino}) is True
    assert torch_only_preprocesses({"a": ort, "b": eager}) is False  # torch runs a model: its threads stay
    assert torch_only_preprocesses({"a": eager}) is False
    assert torch_only_preprocesses({}) is False  # nothing loaded: nothing to decide from


def test_the_api_runs_torch_on_one_thread_while_it_serves_and_restores_the_count(pr2_registry):
    import torch
    from fastapi.concurrency import run_in_threadpool

    app = create_app(Settings(model_registry=pr2_registry), start_kafka=False)

    async def threads_while_serving() -> tuple[int, int]:
        async with app.router.lifespan_context(app):  # as uvicorn runs it: in the event loop's thread
            return torch.get_num_threads(), await run_in_threadpool(torch.get_num_threads)  # a request thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert asyncio.run(threads_while_serving()) == (1, 1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
