"""One router module per resource, gathered into ``api_router``."""

from fastapi import APIRouter

from src.serve.routes import docs, inference, probes

api_router = APIRouter()
api_router.include_router(probes.router)
api_router.include_router(inference.router)
api_router.include_router(docs.router)

__all__ = ["api_router"]
