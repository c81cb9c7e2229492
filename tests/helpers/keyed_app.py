"""An app from the factory with small routes behind each scope, to test keys, scopes and rate
limits without loading a model (the lifespan is not run; nothing here needs the service)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI, Request

from src.core.settings import Settings
from src.serve.app import create_app
from src.serve.deps import AdminCallerDep, HistoryCallerDep, InferCallerDep
from src.serve.ratelimit import charge

REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix() -> str:
    """A Redis key prefix of its own, so tests never see each other's counters."""
    return f"dfd-test-{uuid.uuid4().hex[:12]}"


def keyed_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    router = APIRouter(prefix="/t")

    @router.post("/charge/{units}")
    async def charged(request: Request, units: int, caller: InferCallerDep) -> dict[str, str]:
        await charge(request, units)
        return {"name": caller.name}

    @router.get("/infer")
    async def infer_scope(caller: InferCallerDep) -> dict[str, str]:
        return {"name": caller.name}

    @router.get("/history")
    async def history_scope(caller: HistoryCallerDep) -> dict[str, str]:
        return {"name": caller.name}

    @router.get("/admin")
    async def admin_scope(caller: AdminCallerDep) -> dict[str, str]:
        return {"name": caller.name}

    app.include_router(router)
    return app


@asynccontextmanager
async def client_for(app: FastAPI, client: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(client, 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http
    finally:
        await app.state.rate_limits.aclose()
