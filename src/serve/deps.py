"""Typed dependencies for the routes, in one place: settings, the service, and who is calling.

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency on its thread pool,
which would cost a thread hop per dependency for what are attribute reads and a hash.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.core.errors import AuthenticationError, ServiceUnavailableError
from src.core.settings import Settings
from src.engine.service import InferenceService
from src.serve.uploads import UploadGate

KEY_ID_HEX_CHARS = 16
ALL_SCOPES = frozenset({"infer"})

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="One of the keys in DFD_API_KEYS (several may be valid at once for rotation).",
)


@dataclass(frozen=True)
class Caller:
    """Who sent the request: a key id (a prefix of the key's SHA-256, never the key) and what
    that key may do."""

    key_id: str
    scopes: frozenset[str] = ALL_SCOPES


@dataclass(frozen=True)
class KeyRing:
    """The valid keys, held as SHA-256 digests only."""

    digests: tuple[bytes, ...]

    @classmethod
    def from_keys(cls, keys: list[str]) -> KeyRing:
        return cls(tuple(_digest(key) for key in keys))

    def identify(self, candidate: str | None) -> Caller | None:
        """The caller holding ``candidate``, or None. Compares against every key in constant
        time (digests make the lengths equal), so timing says nothing about which one matched."""
        if not candidate:
            return None
        probe = _digest(candidate)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(probe, digest)
        return Caller(key_id=probe.hex()[:KEY_ID_HEX_CHARS]) if matched else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def ready_service(request: Request, arrived_at: float | None = None) -> InferenceService:
    """The service, if it takes work that arrived at ``arrived_at``; else 503.

    The one readiness check: ``/ready`` asks about now (not while draining); an inference route
    asks about its arrival, so a request that came before a drain began is still served.
    """
    service: InferenceService | None = getattr(request.app.state, "service", None)
    if service is None or not service.accepts(arrived_at):
        raise ServiceUnavailableError(
            "the model is not loaded yet, or the service is draining",
            retry_after_s=request.app.state.settings.retry_after_s,
        )
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> InferenceService:
    return ready_service(request, getattr(request.state, "arrived_at", None))


async def get_caller(
    request: Request, api_key: Annotated[str | None, Security(api_key_header)]
) -> Caller:
    caller: Caller | None = request.app.state.key_ring.identify(api_key)
    if caller is None:
        raise AuthenticationError()
    request.state.caller = caller
    return caller


async def get_upload_gate(request: Request) -> UploadGate:
    gate: UploadGate = request.app.state.upload_gate
    return gate


SettingsDep = Annotated[Settings, Depends(get_settings)]
UploadGateDep = Annotated[UploadGate, Depends(get_upload_gate)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
CallerDep = Annotated[Caller, Depends(get_caller)]
