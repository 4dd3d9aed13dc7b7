"""Callback policy shared by the API (which accepts a callback URL) and the worker (which calls it).

The API refuses a callback URL whose host is not on the allowlist; the worker checks again before it calls and
signs each body so the receiver can tell the result came from this service. A signature is only worth its
secret: with callbacks allowed (a non-empty ``INFERENCE_CALLBACK_ALLOWLIST``), both processes refuse to start
while ``INFERENCE_CALLBACK_HMAC_SECRET`` is empty or the placeholder ``change-me``
(:func:`require_callback_secret`). Local runs may call :func:`ensure_callback_secret` to generate one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import MutableMapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from modelops.errors import UsageError

if TYPE_CHECKING:
    from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)

#: The environment variable that holds the signing secret.
SECRET_ENV = "INFERENCE_CALLBACK_HMAC_SECRET"
#: The default of ``Settings.callback_hmac_secret``: known to everyone, so it signs nothing.
PLACEHOLDER_SECRET = "change-me"


def host_allowed(url: str, allowlist: list[str]) -> bool:
    """True when the URL's host (or host:port) is on the allowlist. An empty allowlist allows nothing."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    hostport = f"{host}:{parts.port}" if parts.port else host
    allowed = {a.lower() for a in allowlist}
    return host in allowed or hostport in allowed


def sign(body: bytes, secret: str, timestamp: str) -> str:
    """HMAC-SHA256 over ``timestamp.body`` (the timestamp stops replays of an old signed body)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def callbacks_allowed(settings: Settings) -> bool:
    """True when some callback host is allowed (an empty allowlist refuses every callback URL)."""
    return bool(settings.callback_allowlist)


def secret_is_placeholder(secret: str | None) -> bool:
    return not secret or secret.strip() == PLACEHOLDER_SECRET


def require_callback_secret(settings: Settings) -> None:
    """Refuse to start with callbacks allowed and a placeholder secret (anyone could forge a signature).

    Raises:
        UsageError: one line that names the variable to set.
    """
    if callbacks_allowed(settings) and secret_is_placeholder(settings.callback_hmac_secret):
        found = "the placeholder " + repr(PLACEHOLDER_SECRET) if settings.callback_hmac_secret else "empty"
        raise UsageError(
            f"callbacks are allowed (INFERENCE_CALLBACK_ALLOWLIST={','.join(settings.callback_allowlist)}) but "
            f"{SECRET_ENV} is {found}"
            f"; set {SECRET_ENV} to a random secret (python -c 'import secrets; print(secrets.token_hex(32))') "
            "or empty the allowlist"
        )


def ensure_callback_secret(env: MutableMapping[str, str] | None = None) -> str | None:
    """For local runs: put a random secret into ``env`` (default ``os.environ``) when it holds none or the
    placeholder, and log that it did. Returns the generated secret, or None when ``env`` already had one.

    Processes started with that ``env`` (API and worker) share the secret, so their callbacks verify.
    """
    env = os.environ if env is None else env
    if not secret_is_placeholder(env.get(SECRET_ENV)):
        return None
    secret = secrets.token_hex(32)
    env[SECRET_ENV] = secret
    logger.warning("%s was not set: generated a random one for this local run (set it to choose your own)",
                   SECRET_ENV)
    return secret
