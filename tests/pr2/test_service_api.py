"""The API in-process (FastAPI TestClient) against the session's real broker: validation, 202 + Location,
idempotency, backpressure, API key, callbacks allowlist, OIP v2, replicas sharing results, and schemathesis with
every check against the OpenAPI document."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from PR2_async_inference.api.schemas import EXAMPLE_IMAGE
from PR2_async_inference.async_fastapi_server import create_app
from PR2_async_inference.registry import write_registry
from PR2_async_inference.settings import Settings
from tests.pr2.conftest import make_topics, metric_value, suite_settings


def client_for(settings: Settings) -> Iterator[TestClient]:
    make_topics(settings)
    app = create_app(settings)
    with TestClient(app) as client:
        reader = app.state.service.reader
        assert reader.caught_up.wait(30), "results reader never caught up"
        yield client


@pytest.fixture(scope="module")
def api_settings(broker, pr2_registry) -> Settings:
    return suite_settings(broker.info["bootstrap"], "api", pr2_registry, max_body_bytes=200_000,
                          callback_allowlist=["hooks.example.test"], callback_hmac_secret="api-tests-" + "0" * 32)


@pytest.fixture(scope="module")
def api(api_settings) -> Iterator[TestClient]:
    yield from client_for(api_settings)


def tensor(shape=(3, 32, 32)) -> list:
    return np.random.default_rng(0).standard_normal(shape).round(3).tolist()


def png_b64(fmt: str = "PNG", size=(40, 40)) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((*size, 3)) * 255).astype("uint8")).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def post(client: TestClient, body: dict[str, Any], **headers: str):
    return client.post("/inference", json=body, headers=headers)


def test_tensor_request_is_accepted_and_queued(api):
    response = post(api, {"model_name": "image_classification", "data": tensor(), "parameters": {"top_k": 3}})
    assert response.status_code == 202, response.text
    body = response.json()
    assert uuid.UUID(body["request_id"]).version == 4
    assert response.headers["location"] == body["status_url"]
    assert body["status_url"].endswith(f"/inference/{body['request_id']}")
    assert body["deadline"] > time.time()
    status = api.get(f"/inference/{body['request_id']}").json()
    assert status["status"] == "queued" and status["model_name"] == "image_classification"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_request_is_accepted_with_default_model(api, fmt):
    response = post(api, {"data": png_b64(fmt)})
    assert response.status_code == 202, response.text
    assert response.json()["model_name"] == "image_classification"


@pytest.mark.parametrize(("default", "expected"), [(None, "original"), ("optimized", "optimized")])
def test_a_request_without_model_name_is_served_by_the_registrys_default(broker, pr2_model, tmp_path, default,
                                                                          expected):
    """The main job's registry (``original``, ``optimized``): the model GET /models marks default is the one a
    POST without ``model_name`` gets, whether the registry names it or it is the first entry."""
    registry = write_registry(tmp_path / "model_registry.yaml", {"original": pr2_model, "optimized": pr2_model},
                              default_model=default)
    settings = suite_settings(broker.info["bootstrap"], f"default-{uuid.uuid4().hex[:6]}", registry)
    for client in client_for(settings):
        assert [m["name"] for m in client.get("/models").json() if m["default"]] == [expected]
        response = post(client, {"data": tensor()})
        assert response.status_code == 202, response.text
        assert response.json()["model_name"] == expected
        status = client.get(response.headers["location"]).json()
        assert status["status"] == "queued" and status["model_name"] == expected


def test_the_documented_example_is_accepted(api):
    example = api.get("/openapi.json").json()["components"]["schemas"]["InferenceRequest"]["examples"][0]
    assert example["data"] == EXAMPLE_IMAGE
    assert post(api, example).status_code == 202


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"data": tensor((3, 16, 16))}, 422, "model expects [3, 32, 32]"),
        ({"data": [[1, 2], [3]]}, 422, "not a rectangular"),
        ({"data": base64.b64encode(b"definitely not a png").decode()}, 422, "not a decodable PNG/JPEG"),
        ({"data": "%%%not-base64%%%"}, 422, "valid base64"),
        ({"model_name": "no_such_model", "data": tensor()}, 404, "Choose one of: image_classification"),
        ({"data": tensor(), "parameters": {"top_k": 50}}, 422, "above the maximum"),
        ({"data": tensor(), "ttl_s": 0}, 422, "ttl_s"),
    ],
)
def test_bad_requests_get_precise_4xx(api, body, code, fragment):
    response = post(api, body)
    assert response.status_code == code, response.text
    assert fragment in response.text


def test_oversized_body_is_413(api, api_settings):
    big = {"data": "A" * (api_settings.max_body_bytes + 10)}
    response = post(api, big)
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]


def test_idempotency_key_maps_repeats_to_one_request(api):
    key = f"order-{uuid.uuid4()}"
    first = post(api, {"data": tensor()}, **{"Idempotency-Key": key})
    second = post(api, {"data": tensor()}, **{"Idempotency-Key": key})
    other = post(api, {"data": tensor()}, **{"Idempotency-Key": key + "-other"})
    assert first.status_code == second.status_code == other.status_code == 202
    assert first.json()["request_id"] == second.json()["request_id"] != other.json()["request_id"]
    assert second.headers.get("idempotent-replayed") == "true"


def test_a_repeated_idempotency_key_with_a_bad_value_is_refused(api):
    key = f"order-{uuid.uuid4()}"
    assert post(api, {"data": tensor()}, **{"Idempotency-Key": key}).status_code == 202
    repeat = post(api, {"data": tensor(), "parameters": {"top_k": 50}}, **{"Idempotency-Key": key})
    assert repeat.status_code == 422 and "above the maximum" in repeat.json()["detail"]


def test_unknown_and_malformed_ids(api):
    assert api.get(f"/inference/{uuid.uuid4()}").status_code == 404
    assert api.get("/inference/not-a-uuid").status_code == 422
    assert api.get(f"/inference/{uuid.uuid4()}", params={"wait": 61}).status_code == 422  # over the 60 s bound


def test_models_lists_registry_with_manifest(api, pr2_model):
    response = api.get("/models")
    models = response.json()
    assert [m["name"] for m in models] == ["image_classification"]
    model = models[0]
    assert model["available"] and model["default"]
    assert model["input_shape"] == [3, 32, 32] and model["num_classes"] == 10
    assert model["max_batch_size"] == 8
    assert model["artifact"] == pr2_model.name and str(pr2_model.parent) not in response.text  # no server paths


def test_callback_host_must_be_allowlisted(api):
    denied = post(api, {"data": tensor(), "callback_url": "http://169.254.169.254/latest/meta-data"})
    assert denied.status_code == 422 and "allowlist" in denied.json()["detail"]
    allowed = post(api, {"data": tensor(), "callback_url": "https://hooks.example.test/done"})
    assert allowed.status_code == 202


def test_oip_v2_infer_is_queued(api):
    flat = np.zeros(3 * 32 * 32, dtype=np.float32).tolist()
    body = {"id": "client-1", "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": flat}]}
    response = api.post("/v2/models/image_classification/infer", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["id"] == "client-1"
    assert api.get(response.headers["location"]).json()["status"] == "queued"
    body["inputs"][0]["shape"] = [1, 3, 32, 31]
    wrong = api.post("/v2/models/image_classification/infer", json=body)
    assert wrong.status_code == 422 and "needs" in wrong.json()["detail"]
    assert api.post("/v2/models/nope/infer", json=body).status_code == 404
    body["inputs"][0]["shape"] = [0, 3, 32, 32]  # the schema says dimensions are >= 1, and so does the answer
    zero = api.post("/v2/models/image_classification/infer", json=body)
    assert zero.status_code == 422 and zero.json()["detail"][0]["loc"][-2:] == ["shape", 0]


def test_health_ready_and_metrics(api):
    assert api.get("/healthz").json()["status"] == "ok"
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"]["broker_reachable"] is True
    assert ready.json()["detail"]["callbacks_allowed"] is True and ready.json()["detail"]["callback_secret"] == "set"
    text = api.get("/metrics").text
    assert metric_value(text, "inference_requests_received_total", model="image_classification") >= 1
    assert metric_value(text, "inference_requests_rejected_total", reason="invalid_input") >= 1


def test_second_replica_rebuilds_states_from_results_topic(api, api_settings):
    request_id = post(api, {"data": tensor()}).json()["request_id"]
    for replica in client_for(api_settings):  # a fresh replica: empty cache, reads the topic from the start
        status = replica.get(f"/inference/{request_id}")
        assert status.status_code == 200 and status.json()["status"] == "queued"


def test_backpressure_answers_429_with_retry_after(broker, pr2_registry):
    settings = suite_settings(broker.info["bootstrap"], f"bp-{uuid.uuid4().hex[:6]}", pr2_registry,
                              backpressure_max_lag=3, backpressure_retry_after_s=7)
    for client in client_for(settings):  # no worker runs: the backlog only grows
        codes = [post(client, {"data": tensor()}).status_code for _ in range(3)]
        assert codes == [202, 202, 202]
        refused = post(client, {"data": tensor()})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "7"
        assert "3 requests pending" in refused.json()["detail"]


def test_api_key_guards_everything_but_health(broker, pr2_registry):
    settings = suite_settings(broker.info["bootstrap"], "api", pr2_registry, api_key="s3cret")
    for client in client_for(settings):
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/models").status_code == 401
        assert post(client, {"data": tensor()}).status_code == 401
        assert post(client, {"data": tensor()}, **{"X-API-Key": "wrong"}).status_code == 401
        assert post(client, {"data": tensor()}, **{"X-API-Key": "s3cret"}).status_code == 202


SCHEMATHESIS_CONFIG = Path(__file__).resolve().parents[2] / "PR2_async_inference" / "api" / "schemathesis.toml"


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """The app on a free 127.0.0.1 port (uvicorn in a thread, its lifespan run once); yields the base URL."""
    import uvicorn

    from PR2_async_inference.local_stack import free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="schemathesis-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the API did not start"
        assert app.state.service.reader.caught_up.wait(30), "results reader never caught up"
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def run_schemathesis(url: str, api_key: str | None, max_examples: int = 10) -> tuple[dict[str, set[str]], list[str]]:
    """What ``schemathesis --config-file PR2_async_inference/api/schemathesis.toml run --checks all URL`` does,
    in process: every phase (examples, coverage, fuzzing, stateful), positive and negative data. Returns
    ({phase: statuses of its scenarios}, failures as "operation: check: message")."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import Status, events

    config = SchemathesisConfig.from_path(SCHEMATHESIS_CONFIG)
    config.update(seed=1, max_failures=None)
    project = config.projects.override
    project.checks.update(included_check_names=["all"])
    project.generation.update(max_examples=max_examples)
    # The long poll holds a queued request's answer up to ?wait seconds and no worker runs here.
    project.update(parameters={"query.wait": 0.1}, headers={"X-API-Key": api_key} if api_key else None)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    phases: dict[str, set[str]] = {}
    failures: list[str] = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError | events.NonFatalError):
            failures.append(f"{type(event).__name__}: {event.info.message}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        phases.setdefault(event.phase.name.lower(), set()).add(event.status.name)
        for case_id, checks in event.recorder.checks.items():
            case = event.recorder.cases[case_id].value
            answer = event.recorder.interactions.get(case_id)
            got = f"{answer.response.status_code} {answer.response.content[:300]!r}" if answer else "no answer"
            failures += [f"{event.label}: {c.name}: {c.failure_info.failure} ({case.method} {case.path} -> {got})"
                         for c in checks if c.failure_info]
        assert event.status is not Status.ERROR or failures, event
    return phases, failures


@pytest.mark.parametrize("api_key", [None, "s3cret"], ids=["no-key", "key"])
def test_openapi_document_holds_under_every_schemathesis_check(broker, pr2_registry, api_key):
    """The document tells the truth about status codes, bodies, headers, constraints and the API key, with and
    without a key set: schemathesis with every check finds nothing."""
    settings = suite_settings(broker.info["bootstrap"], f"st-{uuid.uuid4().hex[:6]}", pr2_registry,
                              max_body_bytes=200_000, api_key=api_key)
    make_topics(settings)
    with served(create_app(settings)) as url:
        phases, failures = run_schemathesis(url, api_key)
    assert not failures, "\n".join(failures[:10])
    for phase in ("examples", "coverage", "fuzzing", "stateful_testing"):
        assert "SUCCESS" in phases.get(phase, ()), phases
