"""Request body size limit: an ASGI middleware answering 413 before an oversized upload reaches a route.

A declared ``Content-Length`` over the limit is refused at once, without reading the body; a body sent
without a length (chunked) is counted as it arrives and refused with 413 as soon as it passes the limit
(the route's form parsing stops there, so nothing is written to the datastore).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _message(max_bytes: int) -> str:
    return f"the request is larger than the server's limit of {max_bytes / 2**20:.0f} MiB."


class BodyTooLarge(HTTPException):
    """Raised inside a request whose body grew past the limit (an HTTP 413, so the framework answers it)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=_message(max_bytes))


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": _message(self.max_bytes)}).encode()
        headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
