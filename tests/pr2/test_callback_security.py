"""Callbacks: the host allowlist, the HMAC signature, and the worker's refusal to start with callbacks allowed on
the placeholder secret."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
from pathlib import Path

from PR2_async_inference.callback_security import host_allowed, sign

PR2 = Path(__file__).resolve().parents[2] / "PR2_async_inference"


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
