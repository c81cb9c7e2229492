"""Answer only for the hosts this service is meant to serve (``DFD_ALLOWED_HOSTS``)."""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from src.core.context import current_request_id
from src.serve.schemas import error_body

# host (an IP literal keeps its brackets, as in Starlette) and an optional port
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/@\s]+)(?::[0-9]{1,5})?")


class AllowedHostsMiddleware(TrustedHostMiddleware):
    """Starlette's ``TrustedHostMiddleware`` (its patterns and their checks; no www redirect),
    answering a Host that is not allowed with 400 in the one JSON error shape."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        super().__init__(app, allowed_hosts=allowed_hosts, www_redirect=False)

    def allows(self, host_header: str | None) -> bool:
        match = _HOST_HEADER.fullmatch(host_header or "")
        if match is None:
            return False
        host = match["host"].lower()
        return any(
            host == pattern or (pattern.startswith("*") and host.endswith(pattern[1:]))
            for pattern in self.allowed_hosts
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.allow_any
            or scope["type"] not in ("http", "websocket")
            or self.allows(Headers(scope=scope).get("host"))
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            message = "the Host header names no host this service answers for"
            body = error_body("invalid_host", message, current_request_id())
            await JSONResponse(body, status_code=400)(scope, receive, send)
