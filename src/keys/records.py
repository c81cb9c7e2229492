"""A managed API key as it is stored: its name, the SHA-256 of the key (never the key), what it
may do, its limits and its dates.

Why SHA-256 and not a password hash: the keys are 256 random bits made by :func:`generate_key`,
so no dictionary or brute force reaches them and a slow hash (bcrypt, argon2) would add only
milliseconds to every request. A plain digest also lets the service find a key in one dictionary
look-up instead of comparing against every stored key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from src.core.settings import check_rate, check_scopes

KEY_PREFIX = "dfd_"
KEY_ID_HEX_CHARS = 16
UNLIMITED = "unlimited"
FILE_FORMAT = "dfd-keys/1"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Labels the service gives to keys that are not managed, or to metrics past the top N.
RESERVED_NAME = re.compile(r"(other|(env|admin)-.*)", re.IGNORECASE)
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

KeyStatus = Literal["active", "expired", "revoked"]


class KeyRecordError(ValueError):
    """A key's fields (name, scopes, limits, expiry) or the stored record are not valid."""


def generate_key() -> str:
    """A new key: 256 random bits, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(digest: bytes) -> str:
    """The key's public id: a prefix of its SHA-256, safe in logs and metrics."""
    return digest.hex()[:KEY_ID_HEX_CHARS]


def now_utc() -> datetime:
    """Whole seconds, as the file stores them, so a record reads back equal to itself."""
    return datetime.now(UTC).replace(microsecond=0)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise KeyRecordError(
            f"key name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit"
        )
    if RESERVED_NAME.fullmatch(name):
        raise KeyRecordError(f"key name {name!r} is reserved (other, env-*, admin-*)")
    return name


def check_limit(value: str | None) -> str | None:
    """A per-key rate or quota: None (the service's default), ``unlimited``, or a limit."""
    if value is None:
        return None
    if value.strip().lower() == UNLIMITED:
        return UNLIMITED
    try:
        return check_rate(value)
    except ValueError as exc:
        raise KeyRecordError(str(exc)) from None


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s`` from now, or an ISO 8601 date or time (UTC
    unless it says otherwise)."""
    now = now or now_utc()
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        return now + timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise KeyRecordError(
            f"expiry {text!r}: give a duration like 90d, 12h, 2w or a date like 2027-01-31"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class KeyRecord:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    rate: str | None = None
    quota: str | None = None
    created_at: datetime = field(default_factory=now_utc)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def key_id(self) -> str:
        return self.sha256[:KEY_ID_HEX_CHARS]

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256)

    def status(self, now: datetime | None = None) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or now_utc()):
            return "expired"
        return "active"

    def revoked(self, at: datetime | None = None) -> KeyRecord:
        return replace(self, revoked_at=at or now_utc())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "sha256": self.sha256,
            "scopes": list(self.scopes),
            "rate": self.rate,
            "quota": self.quota,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        """A stored record, checked field by field: a hand-edited file fails loudly."""
        try:
            sha256 = str(data["sha256"]).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", sha256):
                raise KeyRecordError("sha256 must be 64 hex digits")
            return cls(
                name=check_name(str(data["name"])),
                sha256=sha256,
                scopes=tuple(check_scopes(list(data["scopes"]))),
                rate=check_limit(data.get("rate")),
                quota=check_limit(data.get("quota")),
                created_at=_parse_time(data.get("created_at")) or now_utc(),
                expires_at=_parse_time(data.get("expires_at")),
                revoked_at=_parse_time(data.get("revoked_at")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            name = data.get("name") if isinstance(data, dict) else None
            raise KeyRecordError(f"key record {name!r}: {exc}") from None


def new_record(
    name: str,
    scopes: list[str],
    rate: str | None = None,
    quota: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, KeyRecord]:
    """A fresh key and its record; the key is returned once and never stored."""
    try:
        checked_scopes = tuple(check_scopes(scopes))
    except ValueError as exc:
        raise KeyRecordError(str(exc)) from None
    if expires_at is not None and expires_at <= now_utc():
        raise KeyRecordError("the expiry is in the past")
    key = generate_key()
    record = KeyRecord(
        name=check_name(name),
        sha256=key_digest(key).hex(),
        scopes=checked_scopes,
        rate=check_limit(rate),
        quota=check_limit(quota),
        expires_at=expires_at,
    )
    return key, record


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
