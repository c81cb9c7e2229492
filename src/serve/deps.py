"""Typed dependencies for the routes, in one place.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency on its thread pool,
which would cost three thread hops per request for what are attribute reads and a hash.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.config import Settings
from src.exceptions import AuthenticationError, ServiceUnavailableError
from src.inference import AsyncInferenceService

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="One of the keys in DFD_API_KEYS (several may be valid at once for rotation).",
)


def key_digests(keys: list[str]) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(key.encode()).digest() for key in keys)


def key_is_valid(candidate: str | None, digests: tuple[bytes, ...]) -> bool:
    """Constant-time check against every key (digests make the lengths equal)."""
    if not candidate:
        return False
    probe = hashlib.sha256(candidate.encode()).digest()
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(probe, digest)
    return matched


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> AsyncInferenceService:
    service: AsyncInferenceService | None = getattr(request.app.state, "service", None)
    if service is None or not service.accepts(getattr(request.state, "arrived_at", None)):
        raise ServiceUnavailableError("the model is not loaded yet, or the service is draining")
    return service


async def require_api_key(
    request: Request, api_key: Annotated[str | None, Security(api_key_header)]
) -> None:
    if not key_is_valid(api_key, request.app.state.api_key_digests):
        raise AuthenticationError()


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[AsyncInferenceService, Depends(get_service)]
ApiKeyDep = Annotated[None, Depends(require_api_key)]
