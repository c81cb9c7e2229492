"""Typed dependencies for the routes, in one place: settings, the service, and who is calling.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency on its thread pool,
which would cost a thread hop per dependency for what are attribute reads and a hash.

Who is calling: ``InferCallerDep`` (also ``CallerDep``), ``HistoryCallerDep`` and
``AdminCallerDep`` authenticate the ``X-API-Key`` (401 without a valid one; 429 once the client
address has failed too often) and check the route's scope (403 outside it). The caller lands on
``request.state.caller`` for the access log, the rate limiter and the ``RateLimit`` headers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader

from src.core.errors import (
    AuthenticationError,
    ForbiddenError,
    RateLimitedError,
    ServiceUnavailableError,
)
from src.core.settings import MODEL_NAME_PATTERN, Settings
from src.engine.service import InferenceService
from src.serve.auth import ALL_SCOPES, REFUSAL_MESSAGES, Caller, KeyRing, require_scope
from src.serve.metrics import Metrics
from src.serve.ratelimit import FailedAuthLimiter, RateLimits
from src.serve.uploads import UploadGate

if TYPE_CHECKING:
    from src.serve.lifecycle import ModelManager

__all__ = [
    "ALL_SCOPES",
    "AdminCallerDep",
    "Caller",
    "CallerDep",
    "HistoryCallerDep",
    "InferCallerDep",
    "KeyRing",
    "RoutedServiceDep",
    "ServiceDep",
    "SettingsDep",
    "UploadGateDep",
]

audit_logger = logging.getLogger("src.audit")

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key: one made with `python -m src.keys create`, or one of DFD_API_KEYS "
    "(several may be valid at once for rotation).",
)


def ready_models(request: Request, arrived_at: float | None = None) -> ModelManager:
    """The served model's versions, if they take work that arrived at ``arrived_at``; else 503.

    The one readiness check: ``/ready`` asks about now (not while draining); an inference route
    asks about its arrival, so a request that came before a drain began is still served.
    """
    models: ModelManager | None = getattr(request.app.state, "models", None)
    if models is None or not models.core.admission.accepts(arrived_at):
        raise ServiceUnavailableError(
            "the model is not loaded yet, or the service is draining",
            retry_after_s=request.app.state.settings.retry_after_s,
        )
    return models


def ready_service(
    request: Request, arrived_at: float | None = None, pinned: str | None = None
) -> InferenceService:
    """The version that answers this request (503 when not ready): ``pinned`` if the client
    named a loaded one (404 otherwise), else the traffic split's draw for the caller's key."""
    models = ready_models(request, arrived_at)
    caller: Caller | None = getattr(request.state, "caller", None)
    service = models.route(None if caller is None else caller.key_id, pinned)
    request.state.cache_fingerprint = service.fingerprint
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ModelVersionHeader = Annotated[
    str | None,
    Header(
        alias="X-Model-Version",
        description="Answer with this loaded version of the model instead of the traffic "
        "split's choice (GET /models lists them).",
        pattern=MODEL_NAME_PATTERN,
    ),
]


async def get_service(
    request: Request, model_version: ModelVersionHeader = None
) -> AsyncIterator[InferenceService]:
    """The routed version, held (leased) until the request is answered: a version being
    unloaded waits for the requests routed to it."""
    service = ready_service(request, getattr(request.state, "arrived_at", None), model_version)
    with service.lease():
        yield service


async def get_routed_service(
    request: Request, model_version: ModelVersionHeader = None
) -> InferenceService:
    """The routed version, as :func:`get_service` chooses it, *not* leased: the route takes
    ``service.lease()`` itself for its whole body, its first statement (nothing runs on the
    loop between the two). A dependency with ``yield`` costs FastAPI an exit stack, an async
    context manager and a cancel scope per request; this one costs a call (the hot path)."""
    return ready_service(request, getattr(request.state, "arrived_at", None), model_version)


async def authenticate(request: Request, api_key: str | None) -> Caller:
    """The caller holding ``api_key``. A client address past its failed-authentication limit
    is refused (429) before its key is even looked at."""
    state = request.app.state
    metrics: Metrics = state.metrics
    failed_auth: FailedAuthLimiter = state.rate_limits.failed_auth
    address = failed_auth.address(request.scope)
    try:
        failed_auth.check(address)
    except RateLimitedError:
        metrics.auth_refusals.labels(reason="address_limited").inc()
        raise
    ring: KeyRing = state.key_ring
    caller, outcome = ring.check(api_key)
    if caller is None:
        metrics.auth_refusals.labels(reason=outcome).inc()
        await failed_auth.failed(address)
        raise AuthenticationError(REFUSAL_MESSAGES[outcome])
    request.state.caller = caller
    return caller


async def _scoped(request: Request, api_key: str | None, scope: str) -> Caller:
    caller = await authenticate(request, api_key)
    try:
        return require_scope(caller, scope)
    except ForbiddenError:
        request.app.state.metrics.auth_refusals.labels(reason="scope").inc()
        raise


async def get_caller(
    request: Request, api_key: Annotated[str | None, Security(api_key_header)]
) -> Caller:
    """A caller with the ``infer`` scope (the inference routes)."""
    return await _scoped(request, api_key, "infer")


async def get_history_caller(
    request: Request, api_key: Annotated[str | None, Security(api_key_header)]
) -> Caller:
    """A caller with the ``history`` scope (its own results, feedback)."""
    return await _scoped(request, api_key, "history")


async def get_admin_caller(
    request: Request, api_key: Annotated[str | None, Security(api_key_header)]
) -> Caller:
    """A caller with the ``admin`` scope; every admin request writes an audit line."""
    caller = await _scoped(request, api_key, "admin")
    audit_logger.info(
        "admin action: %s %s by %s",
        request.method,
        request.url.path,
        caller.name,
        extra={"audit": "admin_action", "key_name": caller.name, "key_id": caller.key_id},
    )
    return caller


async def get_upload_gate(request: Request) -> UploadGate:
    gate: UploadGate = request.app.state.upload_gate
    return gate


async def get_rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


SettingsDep = Annotated[Settings, Depends(get_settings)]
UploadGateDep = Annotated[UploadGate, Depends(get_upload_gate)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
RoutedServiceDep = Annotated[InferenceService, Depends(get_routed_service)]
InferCallerDep = Annotated[Caller, Depends(get_caller)]
HistoryCallerDep = Annotated[Caller, Depends(get_history_caller)]
AdminCallerDep = Annotated[Caller, Depends(get_admin_caller)]
CallerDep = InferCallerDep
RateLimitsDep = Annotated[RateLimits, Depends(get_rate_limits)]
