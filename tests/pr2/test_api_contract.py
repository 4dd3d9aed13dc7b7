"""The API's contract without a broker: the OpenAPI document fitted to the settings (API key scheme only when a
key is set, every error status with a JSON body, the service's own limits), and the refusal to start with
callbacks allowed on the placeholder signing secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelops.errors import UsageError
from PR2_async_inference.async_fastapi_server import create_app
from PR2_async_inference.callback_security import (
    PLACEHOLDER_SECRET,
    SECRET_ENV,
    ensure_callback_secret,
    require_callback_secret,
)
from PR2_async_inference.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GUARDED = {"/inference", "/inference/{request_id}", "/models", "/v2/models/{model_name}/infer", "/metrics"}
POSTS = ("/inference", "/v2/models/{model_name}/infer")


def document(**overrides: Any) -> dict[str, Any]:
    return create_app(Settings(**overrides)).openapi()


def operations(doc: dict[str, Any]):
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_without_a_key_no_operation_asks_for_one():
    doc = document(api_key=None)
    assert "securitySchemes" not in doc.get("components", {})
    for path, method, operation in operations(doc):
        assert "security" not in operation, (method, path)
        assert "401" not in operation["responses"], (method, path)
        assert all(p["name"].lower() != "x-api-key" for p in operation.get("parameters", []))


def test_with_a_key_it_is_a_security_scheme_on_every_guarded_operation():
    doc = document(api_key="s3cret")
    assert doc["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "required when the service sets INFERENCE_API_KEY"}
    for path, method, operation in operations(doc):
        guarded = path in GUARDED
        assert ("security" in operation) == guarded, (method, path)
        assert ("401" in operation["responses"]) == guarded, (method, path)


def test_every_error_an_operation_can_answer_is_listed_with_a_json_body():
    doc = document(api_key="s3cret")
    for path in POSTS:
        responses = doc["paths"][path]["post"]["responses"]
        assert {"202", "400", "401", "404", "413", "422", "429", "503"} <= set(responses), path
        assert "Location" in responses["202"]["headers"]
        for code in ("400", "401", "404", "413", "422", "429", "503"):
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
        assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    one_call = doc["paths"]["/inference"]["post"]
    assert one_call["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferenceStatus"}
    assert "Location" in one_call["responses"]["200"]["headers"]
    assert any(p["name"] == "wait" and p["in"] == "query" for p in one_call["parameters"])
    assert {"401", "404", "422"} <= set(doc["paths"]["/inference/{request_id}"]["get"]["responses"])
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]


def test_value_constraints_are_the_services_own():
    schemas = document(max_top_k=7, max_ttl_s=90.0)["components"]["schemas"]
    assert schemas["InferenceParameters"]["properties"]["top_k"]["maximum"] == 7
    assert schemas["OIPParameters"]["properties"]["top_k"]["maximum"] == 7
    ttl = schemas["InferenceRequest"]["properties"]["ttl_s"]["anyOf"][0]
    assert ttl["maximum"] == 90.0 and ttl["exclusiveMinimum"] == 0
    shape = schemas["OIPTensor"]["properties"]["shape"]
    assert shape["items"]["minimum"] == 1 and shape["minItems"] == 1
    assert schemas["OIPTensor"]["properties"]["data"]["minItems"] == 1


def test_callback_url_is_null_only_while_no_host_is_allowed():
    closed = document()["components"]["schemas"]["InferenceRequest"]["properties"]["callback_url"]
    assert closed["type"] == "null"
    opened = document(callback_allowlist=["hooks.example.test"], callback_hmac_secret="x" * 32)
    prop = opened["components"]["schemas"]["InferenceRequest"]["properties"]["callback_url"]
    assert {"type": "string", "maxLength": 2000} in prop["anyOf"]


def test_callbacks_on_the_placeholder_secret_refuse_to_start():
    allowing = {"callback_allowlist": ["hooks.example.test"]}
    for secret in (PLACEHOLDER_SECRET, ""):
        with pytest.raises(UsageError, match=SECRET_ENV):
            create_app(Settings(callback_hmac_secret=secret, **allowing))
    require_callback_secret(Settings())  # no callback host allowed: nothing is signed, nothing to refuse
    create_app(Settings(callback_hmac_secret="a-real-secret-" + "0" * 20, **allowing))


def test_the_entry_point_says_what_to_set_in_one_line():
    env = {**os.environ, "INFERENCE_CALLBACK_ALLOWLIST": json.dumps(["hooks.example.test"])}
    env.pop(SECRET_ENV, None)
    done = subprocess.run([sys.executable, "PR2_async_inference/async_fastapi_server.py", "--port", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"set {SECRET_ENV}" in lines[0]


def test_local_runs_can_generate_a_secret(caplog):
    env: dict[str, str] = {SECRET_ENV: PLACEHOLDER_SECRET}
    secret = ensure_callback_secret(env)
    assert secret and env[SECRET_ENV] == secret and len(secret) == 64
    assert f"{SECRET_ENV} was not set: generated a random one" in caplog.text
    assert ensure_callback_secret(env) is None and env[SECRET_ENV] == secret  # an existing secret stays


def test_an_unavailable_model_names_its_missing_file_but_no_server_path(tmp_path):
    """The 503 a request gets and the /models entry both say which file is missing, by file name only."""
    from PR2_async_inference.api.routes.models import model_info
    from PR2_async_inference.api.state import ModelUnavailable, ServiceState
    from PR2_async_inference.registry import ModelSpec, Registry

    folder = tmp_path / "server" / "models"
    folder.mkdir(parents=True)
    (folder / "bare.pt").write_bytes(b"weights without a manifest")
    registry = Registry(default_model="gone", models={
        "gone": ModelSpec(name="gone", artifact=folder / "resnet50_int8.onnx"),
        "no_manifest": ModelSpec(name="no_manifest", artifact=folder / "bare.pt"),
    })
    state = ServiceState(Settings(), registry)
    for name, file in (("gone", "resnet50_int8.onnx"), ("no_manifest", "bare.pt.json")):
        with pytest.raises(ModelUnavailable) as raised:
            state.manifest(name)
        message = str(raised.value)
        assert file in message and str(tmp_path) not in message, message
        info = model_info(state, name)
        assert info.available is False and info.error == message
