"""The worker's callback client: POSTs each final result to the request's callback URL, signed."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from PR2_async_inference.callback_security import host_allowed, sign
from PR2_async_inference.messaging.messages import StatusMessage
from PR2_async_inference.settings import Settings

logger = logging.getLogger(__name__)


class CallbackSender:
    """POSTs final results to callback URLs, signed, retried with exponential back-off, in a small pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback")

    def submit(self, url: str, status: StatusMessage) -> None:
        if not host_allowed(url, self.settings.callback_allowlist):
            logger.warning("callback host of %s not on the allowlist; not calling it", url)
            return
        self.pool.submit(self._deliver, url, status.to_bytes())

    def _deliver(self, url: str, body: bytes) -> bool:
        s = self.settings
        delay = s.callback_backoff_s
        for attempt in range(1, s.callback_max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Inference-Timestamp": timestamp,
                "X-Inference-Signature": "sha256=" + sign(body, s.callback_hmac_secret, timestamp),
            }
            try:
                response = httpx.post(
                    url, content=body, headers=headers, timeout=s.callback_timeout_s, follow_redirects=False
                )
                if response.status_code < 300:
                    return True
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = str(exc)
            logger.info("callback %s attempt %d/%d failed: %s", url, attempt, s.callback_max_attempts, reason)
            if attempt < s.callback_max_attempts:
                time.sleep(delay)
                delay *= 2
        return False

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
