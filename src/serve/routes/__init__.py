"""One router module per resource; ``ROUTERS`` lists them for the app to include."""

from fastapi import APIRouter

from src.serve.routes import docs, inference, probes

ROUTERS: tuple[APIRouter, ...] = (probes.router, inference.router, docs.router)

__all__ = ["ROUTERS"]
