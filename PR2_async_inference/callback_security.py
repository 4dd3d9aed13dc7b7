"""Callback policy shared by the API (which accepts a callback URL) and the worker (which calls it).

The API refuses a callback URL whose host is not on the allowlist; the worker checks again before it calls and
signs each body so the receiver can tell the result came from this service.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit


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
