"""Security headers on every answer: ``X-Content-Type-Options: nosniff``, a
``Content-Security-Policy`` chosen by path, and a few more that cost nothing.

The API answers JSON and needs nothing from a browser, so its policy forbids everything. The web
page (``/`` and ``/ui/...``) loads its own scripts, styles and images and calls this origin; the
docs (``/docs``, ``/redoc``) run Swagger UI and ReDoc from assets this process serves
(routes/docs.py), which set inline styles and, for ReDoc, a worker from a blob. A route that sets
its own policy keeps it.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
UI_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
UI_PREFIXES = ("/ui/",)
DOCS_PREFIXES = ("/docs/",)
UI_PATHS = frozenset({"/", "/ui"})
DOCS_PATHS = frozenset({"/docs", "/redoc"})
HSTS = b"max-age=31536000"


def _added(policy: str, https: bool) -> tuple[tuple[bytes, bytes], ...]:
    added = (
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", policy.encode()),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )
    return (*added, (b"strict-transport-security", HSTS)) if https else added


# Every (policy, scheme) pair's headers, built once rather than per request.
_ADDED = {
    (policy, https): _added(policy, https)
    for policy in (API_CSP, UI_CSP, DOCS_CSP)
    for https in (False, True)
}


def policy_for(path: str) -> str:
    if path in UI_PATHS or path.startswith(UI_PREFIXES):
        return UI_CSP
    if path in DOCS_PATHS or path.startswith(DOCS_PREFIXES):
        return DOCS_CSP
    return API_CSP


class SecurityHeadersMiddleware:
    """Pure ASGI: adds the headers at ``http.response.start``, keeping any a route set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope.get("path", "")
        path = path[len(root) :] if root and path.startswith(root) else path
        added = _ADDED[policy_for(path), scope.get("scheme") == "https"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in added if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_cors(app: FastAPI, origins: list[str]) -> None:
    """Starlette's CORS middleware for ``DFD_CORS_ORIGINS`` (off when empty): browser pages on
    those origins may send ``X-API-Key`` and read the rate-limit and request-id headers. No
    credentials (cookies): the key travels in a header."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["X-API-Key", "Content-Type", "X-Request-ID"],
        expose_headers=["RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-ID"],
        max_age=600,
    )
