"""One router module per resource; ``ROUTERS`` lists them for the app to include."""

from fastapi import APIRouter

from src.serve.routes import (
    batch,
    docs,
    explain,
    inference,
    jobs,
    models,
    monitoring,
    predictions,
    probes,
    ui,
    v2,
    video,
)

ROUTERS: tuple[APIRouter, ...] = (
    probes.router,
    inference.router,
    video.router,
    batch.router,
    explain.router,
    predictions.router,
    jobs.router,
    models.router,
    monitoring.router,
    docs.router,
    v2.router,
    ui.router,  # last: GET / and /ui/... only
)

__all__ = ["ROUTERS"]
