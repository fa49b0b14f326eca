"""An ASGI middleware that adds headers to every HTTP response."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ResponseHeaders"]

HeaderList = list[tuple[bytes, bytes]]


class ResponseHeaders:
    """Adds `headers(scope)` to every HTTP response, pages, errors and redirects alike; a header
    the response already has is left as it is. Example: the dashboard's security headers,
    the gateway's `x-request-id`."""

    def __init__(self, app: ASGIApp, headers: Callable[[Scope], HeaderList]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self.headers(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((n, v) for n, v in added if n not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
