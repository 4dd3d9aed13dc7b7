"""The OpenAPI document, fitted to the running settings so that it describes what this service answers.

- The API key is a security scheme only when ``INFERENCE_API_KEY`` is set; without it no operation lists the
  scheme or a 401 (requests without the header succeed).
- ``top_k`` and ``ttl_s`` carry the service's own maxima (``INFERENCE_MAX_TOP_K``, ``INFERENCE_MAX_TTL_S``).
- With no callback host allowed, ``callback_url`` admits only null.

What no JSON schema can say (an image that decodes, a tensor of the model's shape, a callback host on the
allowlist) is answered with 422 and a ``detail`` naming the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from PR2_async_inference.settings import Settings


def drop_api_key(document: dict[str, Any]) -> None:
    """Remove the API key scheme, every operation's use of it and the 401 it would answer."""
    document.get("components", {}).pop("securitySchemes", None)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)


def set_maximum(document: dict[str, Any], model: str, field: str, maximum: float) -> None:
    """Put ``maximum`` on a body field of ``model`` (inside ``anyOf`` for an optional field)."""
    prop = document.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(field)
    if prop is None:
        return
    for option in prop.get("anyOf", [prop]):
        if option.get("type") in ("integer", "number"):
            option["maximum"] = maximum


def forbid_callbacks(document: dict[str, Any]) -> None:
    """With an empty allowlist every callback URL is refused: the schema admits only null."""
    schemas = document.get("components", {}).get("schemas", {})
    for model, field in (("InferenceRequest", "callback_url"), ("OIPParameters", "callback_url")):
        prop = schemas.get(model, {}).get("properties", {}).get(field)
        if prop is not None:
            prop.pop("anyOf", None)
            prop.pop("maxLength", None)
            prop["type"] = "null"
            prop["description"] = "no callback host is allowed (INFERENCE_CALLBACK_ALLOWLIST is empty)"


def fitted_openapi(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi`` that builds the document once, fitted to ``settings``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            if not settings.api_key:
                drop_api_key(document)
            for model in ("InferenceParameters", "OIPParameters"):
                set_maximum(document, model, "top_k", settings.max_top_k)
                set_maximum(document, model, "ttl_s", settings.max_ttl_s)
            set_maximum(document, "InferenceRequest", "ttl_s", settings.max_ttl_s)
            if not settings.callback_allowlist:
                forbid_callbacks(document)
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
