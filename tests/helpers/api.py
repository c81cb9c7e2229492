"""Talking to an app in-process: keys, a started client, and the one error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

TEST_KEY = "test-key-0123456789"
ROTATED_KEY = "rotated-key-0123456789"
AUTH = {"X-API-Key": TEST_KEY}


async def started_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (model load, warm-up, drain) around an httpx client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The answer is the one JSON error shape with ``code`` and the request's id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error
