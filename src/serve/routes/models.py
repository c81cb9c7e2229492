"""The model lifecycle's admin API (admin scope): the repository's models and versions with
their states, loading and unloading versions, traffic weights (canary / A-B), rollback, a
shadow version and the comparison of two versions on the requests both scored.

States: ``ready`` (loaded; it serves when the traffic or a pinned request sends it work),
``loading``, ``failed`` (the last load failed: ``reason`` says why) and ``available`` (on disk).
Only the served model (``DFD_MODEL_NAME``) can be loaded; other models in the repository are
listed. See ``src/serve/lifecycle.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from src.core.errors import InvalidParameterError, NotFoundError
from src.core.settings import Settings, version_order
from src.models.repository import ModelRepository, VersionEntry
from src.serve.deps import AdminCallerDep, SettingsDep, ready_models
from src.serve.routes.openapi import error_responses

if TYPE_CHECKING:
    from src.serve.lifecycle import ModelManager

router = APIRouter(tags=["models"])

State = Literal["available", "loading", "ready", "failed"]


class VersionView(BaseModel):
    version: str
    state: State
    reason: str | None = Field(default=None, description="why the last load failed")
    files: list[str] = Field(description="the checkpoint and what was exported beside it")
    size_bytes: int = Field(description="the checkpoint's size")


class ShadowView(BaseModel):
    version: str
    sample: float = Field(description="share of /infer requests also scored by it, aside")


class ModelView(BaseModel):
    name: str
    versions: list[VersionView] = Field(description="oldest first")
    traffic: dict[str, int] = Field(description="each serving version's share, in percent")
    shadow: ShadowView | None = Field(description="the version scoring a sample aside")
    previous_traffic: dict[str, int] | None = Field(
        default=None, description="what POST /models/{model}/rollback returns to"
    )
    revision: int = Field(default=0, description="grows with each routing change (replicas)")


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(description="the shadow version; null removes the shadow")
    sample: float = Field(default=0.1, gt=0.0, le=1.0, description="share of requests")


class CompareResponse(BaseModel):
    model: str
    versions: tuple[str, str]
    shared_requests: int = Field(description="requests scored by both versions")
    label_agreement: float | None = Field(description="share with the same label")
    mean_abs_diff: float | None = Field(description="mean |fake_prob difference|")
    p95_abs_diff: float | None = Field(description="95th percentile of |fake_prob difference|")


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
    models = ready_models(request)
    found = await asyncio.to_thread(_scan, settings, models)
    views = [
        _model_view(models, name, entries)
        if name == models.name
        else ModelView(
            name=name,
            versions=[_version_view(entry, "available") for entry in entries],
            traffic={},
            shadow=None,
        )
        for name, entries in found.items()
    ]
    repository = settings.model_repository
    return ModelsResponse(repository=None if repository is None else str(repository), models=views)


@router.post(
    "/models/{model}/versions/{version}/load",
    response_model=VersionView,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def load_version(
    request: Request, caller: AdminCallerDep, model: str, version: str
) -> VersionView:
    """Load and warm a version beside the serving ones; it takes no traffic until
    ``PUT /models/{model}/traffic`` gives it some (or a request pins it with
    ``X-Model-Version``). 409 while it loads, or when ``DFD_MAX_LOADED_VERSIONS`` are resident;
    422 when it cannot be loaded (the reason is kept in ``GET /models``)."""
    models = _served(request, model)
    await models.load(version)
    return _version_view(models.versions_on_disk()[version], "ready")


@router.post(
    "/models/{model}/versions/{version}/unload",
    response_model=VersionView,
    responses=error_responses(401, 403, 404, 409, 503),
)
async def unload_version(
    request: Request, caller: AdminCallerDep, model: str, version: str
) -> VersionView:
    """Unload a version once the requests routed to it have finished. 409 while it has a
    share of the traffic, or when it is the only one loaded."""
    models = _served(request, model)
    await models.unload(version)
    entry = models.versions_on_disk().get(version)
    if entry is None:  # its folder went away meanwhile
        raise NotFoundError(f"model {model!r} has no version {version!r}")
    return _version_view(entry, "available")


@router.put(
    "/models/{model}/traffic",
    response_model=ModelView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def set_traffic(
    request: Request,
    caller: AdminCallerDep,
    model: str,
    weights: Annotated[
        dict[str, int],
        Body(
            description="percent per loaded version, summing to 100",
            examples=[{"0.2.0-demo": 90, "0.2.1-demo": 10}],
        ),
    ],
) -> ModelView:
    """Split the traffic between loaded versions (weights in percent, summing to 100). The
    switch is atomic; requests already routed finish on their version. Replicas follow within
    ``DFD_ROUTING_SYNC_S``."""
    models = _served(request, model)
    await models.set_traffic(weights)
    return await _current(models)


@router.post(
    "/models/{model}/rollback",
    response_model=ModelView,
    responses=error_responses(401, 403, 404, 409, 503),
)
async def rollback(request: Request, caller: AdminCallerDep, model: str) -> ModelView:
    """Return to the traffic setting before the last change (409 when there is none, or its
    versions are no longer loaded)."""
    models = _served(request, model)
    await models.rollback()
    return await _current(models)


@router.put(
    "/models/{model}/shadow",
    response_model=ModelView,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def set_shadow(
    request: Request, caller: AdminCallerDep, model: str, body: ShadowRequest
) -> ModelView:
    """Score a sampled share of ``/infer`` requests with a loaded version too, in the
    background, never delaying or changing the answer (``version: null`` stops it)."""
    models = _served(request, model)
    await models.set_shadow(body.version, body.sample)
    return await _current(models)


@router.get(
    "/models/{model}/compare",
    response_model=CompareResponse,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def compare(
    request: Request,
    caller: AdminCallerDep,
    model: str,
    a: Annotated[str | None, Query(description="default: the version with most traffic")] = None,
    b: Annotated[str | None, Query(description="default: the shadow version")] = None,
) -> CompareResponse:
    """Two versions on the requests both scored (one answering, the other as its shadow):
    how many, how often their labels agree, and the mean and p95 of |fake_prob difference|."""
    models = _served(request, model)
    first = a or models.primary().version
    shadow = models.registry.routing.shadow
    second = b or (shadow.version if shadow is not None else None)
    if second is None:
        raise InvalidParameterError("name the versions to compare (?a=...&b=...): no shadow is set")
    if first == second:
        raise InvalidParameterError("compare two different versions")
    result = await models.compare(first, second)
    return CompareResponse(model=model, versions=(first, second), **result.__dict__)


def _served(request: Request, model: str) -> ModelManager:
    models = ready_models(request)
    if model != models.name:
        raise NotFoundError(f"model {model!r} is not served here (DFD_MODEL_NAME={models.name!r})")
    return models


async def _current(models: ModelManager) -> ModelView:
    entries = await asyncio.to_thread(models.versions_on_disk)
    return _model_view(models, models.name, sorted(entries.values(), key=_order))


def _order(entry: VersionEntry) -> tuple[tuple[int, int | str], ...]:
    return version_order(entry.version)


def _scan(settings: Settings, models: ModelManager) -> dict[str, list[VersionEntry]]:
    """The repository's listing, or the one checkpoint as a one-model repository."""
    if settings.model_repository is None:
        return {models.name: list(models.versions_on_disk().values())}
    return ModelRepository(settings.model_repository).models()


def _model_view(models: ModelManager, name: str, entries: list[VersionEntry]) -> ModelView:
    routing = models.registry.routing
    views = []
    for entry in entries:
        state, reason = models.state_of(entry.version)
        views.append(_version_view(entry, state, reason))
    return ModelView(
        name=name,
        versions=views,
        traffic=dict(routing.traffic),
        shadow=None
        if routing.shadow is None
        else ShadowView(version=routing.shadow.version, sample=routing.shadow.sample),
        previous_traffic=dict(routing.history[-1]) if routing.history else None,
        revision=routing.revision,
    )


def _version_view(entry: VersionEntry, state: State, reason: str | None = None) -> VersionView:
    return VersionView(
        version=entry.version,
        state=state,
        reason=reason,
        files=list(entry.files),
        size_bytes=entry.size_bytes,
    )
