"""The request body limit: 413 with a JSON body before a large body is read into memory."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from PR2_async_inference import metrics


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length when given, by counting chunks otherwise."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                return await self._reject(scope, receive, send, length.decode(errors="replace"))
            return await self.app(scope, receive, send)
        return await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked): read it, counting, then replay it to the app."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await self._reject(scope, receive, send, f">{self.max_bytes}")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        metrics.REQUESTS_REJECTED.labels("unknown", "too_large").inc()
        response = JSONResponse(
            {"detail": f"request body of {size} bytes is over the limit of {self.max_bytes} bytes "
             "(INFERENCE_MAX_BODY_BYTES)"},
            status_code=413,
        )
        await response(scope, receive, send)
