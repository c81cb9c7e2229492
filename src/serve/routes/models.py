"""``GET /models`` (admin scope): the model repository's models and versions, which version
serves, and its share of the traffic.

States: ``ready`` (loaded and serving), ``available`` (on disk, not loaded). Loading a version
while another serves, canary weights and shadows are not built yet: until they are, the one
serving version takes all the traffic and no model has a shadow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from src.core.errors import ServiceUnavailableError
from src.core.settings import Settings
from src.engine.service import InferenceService
from src.models.repository import ModelRepository, VersionEntry, single_checkpoint
from src.serve.deps import AdminCallerDep, SettingsDep
from src.serve.routes.openapi import error_responses

router = APIRouter(tags=["models"])

State = Literal["available", "loading", "ready", "failed"]


class VersionView(BaseModel):
    version: str
    state: State
    files: list[str] = Field(description="the checkpoint and what was exported beside it")
    size_bytes: int = Field(description="the checkpoint's size")


class ModelView(BaseModel):
    name: str
    versions: list[VersionView] = Field(description="oldest first")
    traffic: dict[str, int] = Field(description="each serving version's share, in percent")
    shadow: str | None = Field(description="the version scoring a sample of requests aside")


class ModelsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "repository": "checkpoints",
                    "models": [
                        {
                            "name": "deepfake-detector",
                            "versions": [
                                {
                                    "version": "1",
                                    "state": "available",
                                    "files": ["MODEL_CARD.md", "model.pt"],
                                    "size_bytes": 13750447,
                                },
                                {
                                    "version": "2",
                                    "state": "ready",
                                    "files": ["MODEL_CARD.md", "model.onnx", "model.pt"],
                                    "size_bytes": 13750447,
                                },
                            ],
                            "traffic": {"2": 100},
                            "shadow": None,
                        }
                    ],
                }
            ]
        }
    )

    repository: str | None = Field(description="DFD_MODEL_REPOSITORY; null: DFD_CHECKPOINT_PATH")
    models: list[ModelView]


@router.get("/models", response_model=ModelsResponse, responses=error_responses(401, 403, 503))
async def list_models(
    request: Request, caller: AdminCallerDep, settings: SettingsDep
) -> ModelsResponse:
    """Every model in the repository with its versions and their states (admin scope)."""
    service: InferenceService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ServiceUnavailableError(
            "the model is not loaded yet", retry_after_s=settings.retry_after_s
        )
    found = await asyncio.to_thread(_scan, settings, service.metadata.version)
    served = settings.checkpoint_path.resolve()
    models = []
    for name, entries in found.items():
        views = [_view(entry, served) for entry in entries]
        traffic = {view.version: 100 for view in views if view.state == "ready"}
        models.append(ModelView(name=name, versions=views, traffic=traffic, shadow=None))
    repository = settings.model_repository
    return ModelsResponse(repository=None if repository is None else str(repository), models=models)


def _scan(settings: Settings, loaded_version: str) -> dict[str, list[VersionEntry]]:
    """The repository's listing, or the one checkpoint as a one-model repository."""
    if settings.model_repository is None:
        entry = single_checkpoint(settings.model_name, loaded_version, settings.checkpoint_path)
        return {settings.model_name: [entry]}
    return ModelRepository(settings.model_repository).models()


def _view(entry: VersionEntry, served: Path) -> VersionView:
    state: State = "ready" if entry.checkpoint.resolve() == served else "available"
    return VersionView(
        version=entry.version, state=state, files=list(entry.files), size_bytes=entry.size_bytes
    )
