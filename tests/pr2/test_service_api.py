"""The API in-process (FastAPI TestClient) against a real Tansu broker: validation, 202 + Location,
idempotency, backpressure, API key, callbacks allowlist, OIP v2, replicas sharing results, OpenAPI fuzzing."""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from PR2_async_inference.async_fastapi_server import create_app
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
                          callback_allowlist=["hooks.example.test"])


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


def test_unknown_and_malformed_ids(api):
    assert api.get(f"/inference/{uuid.uuid4()}").status_code == 404
    assert api.get("/inference/not-a-uuid").status_code == 422


def test_models_lists_registry_with_manifest(api):
    models = api.get("/models").json()
    assert [m["name"] for m in models] == ["image_classification"]
    model = models[0]
    assert model["available"] and model["default"]
    assert model["input_shape"] == [3, 32, 32] and model["num_classes"] == 10
    assert model["max_batch_size"] == 8


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


def test_health_ready_and_metrics(api):
    assert api.get("/healthz").json()["status"] == "ok"
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["detail"]["broker_reachable"] is True
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


def test_openapi_schema_fuzzing_finds_no_server_error(api):
    """Property-based run of every operation in the OpenAPI schema (bounded examples): never a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            case.call_and_validate(checks=[not_a_server_error])

        run()
