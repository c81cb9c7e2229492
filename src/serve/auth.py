"""Who is calling: the key ring (keys from settings and managed keys from the key file), the
``Caller`` it yields, and the scope check.

Keys are held as SHA-256 digests only. A candidate is hashed once and looked up in a dictionary:
the look-up's timing depends on the candidate's digest, which a caller cannot steer towards a
stored one, so it says nothing about the stored keys (the reason GitHub and others look tokens up
by hash). Managed keys come from ``DFD_KEYS_FILE``; its stamp (mtime, size, inode) is checked at
most every ``DFD_KEYS_RELOAD_S`` on the request path, a ``stat`` that costs microseconds, and the
file is re-read only when the stamp changed. Expiry is checked against the clock on every request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from src.core.errors import ConfigurationError, ForbiddenError
from src.core.settings import KEY_SCOPES, Settings
from src.keys import FileStamp, KeyFile, KeyRecord, KeyStoreError, key_digest, key_id_of
from src.keys.records import now_utc

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("src.audit")

DEFAULT_SCOPES = frozenset({"infer"})
ALL_SCOPES = frozenset(KEY_SCOPES)
AuthOutcome = Literal["ok", "missing", "unknown", "expired", "revoked"]
REFUSAL_MESSAGES: dict[str, str] = {
    "missing": "a valid X-API-Key header is required",
    "unknown": "a valid X-API-Key header is required",
    "expired": "this API key has expired",
    "revoked": "this API key was revoked",
}


@dataclass(frozen=True)
class Caller:
    """Who sent the request: a key id (a prefix of the key's SHA-256, never the key), what the
    key may do, its name (a managed key's name, or ``env-<id>`` / ``admin-<id>`` for keys from
    settings), and its own rate and quota (None: the service's default; ``unlimited``)."""

    key_id: str
    scopes: frozenset[str] = DEFAULT_SCOPES
    name: str = ""
    rate: str | None = None
    quota: str | None = None


@dataclass(frozen=True)
class _Entry:
    caller: Caller
    expires_at: datetime | None = None
    revoked: bool = False

    def outcome(self, now: datetime) -> AuthOutcome:
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "ok"


def _static_entries(keys: Iterable[str], scopes: frozenset[str], label: str) -> dict[bytes, _Entry]:
    entries = {}
    for key in keys:
        digest = key_digest(key)
        key_id = key_id_of(digest)
        entries[digest] = _Entry(Caller(key_id, scopes, f"{label}-{key_id[:8]}"))
    return entries


def _managed_entry(record: KeyRecord) -> _Entry:
    caller = Caller(record.key_id, frozenset(record.scopes), record.name, record.rate, record.quota)
    return _Entry(caller, record.expires_at, record.revoked_at is not None)


class KeyRing:
    """The valid keys: from settings (fixed for the process's life) and from the key file."""

    def __init__(
        self,
        static: dict[bytes, _Entry],
        key_file: KeyFile | None = None,
        reload_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[bool, dict[str, int]], None] | None = None,
    ) -> None:
        self._static = static
        self._key_file = key_file
        self._reload_s = reload_s
        self._clock = clock
        self._on_reload = on_reload
        self._managed: dict[bytes, _Entry] = {}
        self._records: dict[str, KeyRecord] = {}
        self._stamp: FileStamp | None = None
        self._failed_stamp: FileStamp | None = None
        self._checked_at = clock()
        if key_file is not None:
            self._load(key_file.stamp(), at_start=True)

    @classmethod
    def from_keys(cls, keys: list[str], scopes: Iterable[str] = DEFAULT_SCOPES) -> KeyRing:
        return cls(_static_entries(keys, frozenset(scopes), "env"))

    @classmethod
    def from_settings(
        cls, settings: Settings, on_reload: Callable[[bool, dict[str, int]], None] | None = None
    ) -> KeyRing:
        static = _static_entries(settings.api_keys, frozenset(settings.api_key_scopes), "env")
        static.update(_static_entries(settings.admin_api_keys, ALL_SCOPES, "admin"))
        key_file = KeyFile(settings.keys_file) if settings.keys_file else None
        return cls(static, key_file, settings.keys_reload_s, on_reload=on_reload)

    def identify(self, candidate: str | None) -> Caller | None:
        """The caller holding ``candidate`` if that key may be used now, else None."""
        caller, _ = self.check(candidate)
        return caller

    def check(self, candidate: str | None) -> tuple[Caller | None, AuthOutcome]:
        """The caller and ``ok``, or None and why the key was refused."""
        if not candidate:
            return None, "missing"
        self._maybe_reload()
        digest = key_digest(candidate)
        entry = self._managed.get(digest) or self._static.get(digest)
        if entry is None:
            return None, "unknown"
        outcome = entry.outcome(now_utc())
        return (entry.caller if outcome == "ok" else None), outcome

    def managed_counts(self) -> dict[str, int]:
        counts = {"active": 0, "expired": 0, "revoked": 0}
        for record in self._records.values():
            counts[record.status()] += 1
        return counts

    # ------------------------------------------------------------------ re-reading the file
    def _maybe_reload(self) -> None:
        if self._key_file is None:
            return
        now = self._clock()
        if now - self._checked_at < self._reload_s:
            return
        self._checked_at = now
        stamp = self._key_file.stamp()
        if stamp != self._stamp and stamp != self._failed_stamp:
            self._load(stamp, at_start=False)

    def _load(self, stamp: FileStamp | None, at_start: bool) -> None:
        assert self._key_file is not None
        try:
            records = self._key_file.read()
        except KeyStoreError as exc:
            if at_start:
                raise ConfigurationError(str(exc)) from exc
            # Keep serving with the keys read last; one error line per bad version of the file.
            self._failed_stamp = stamp
            logger.error("key file not reloaded, the previous keys stay in force: %s", exc)
            if self._on_reload:
                self._on_reload(False, self.managed_counts())
            return
        if at_start and stamp is None:
            logger.warning(
                "the key file %s does not exist yet; no managed keys", self._key_file.path
            )
        self._audit_changes(records, at_start)
        self._records = {r.sha256: r for r in records}
        self._managed = {r.digest: _managed_entry(r) for r in records}
        self._stamp, self._failed_stamp = stamp, None
        if self._on_reload:
            self._on_reload(True, self.managed_counts())

    def _audit_changes(self, records: list[KeyRecord], at_start: bool) -> None:
        if at_start:
            logger.info("managed keys loaded: %d", len(records))
            return
        for record in records:
            before = self._records.get(record.sha256)
            if before is None:
                _audit_key("key added", record)
            elif before.revoked_at is None and record.revoked_at is not None:
                _audit_key("key revoked", record)
        current = {r.sha256 for r in records}
        for sha256, record in self._records.items():
            if sha256 not in current:
                _audit_key("key removed", record)


def _audit_key(action: str, record: KeyRecord) -> None:
    audit_logger.info(
        "%s: %s",
        action,
        record.name,
        extra={"audit": action, "key_name": record.name, "key_id": record.key_id},
    )


def require_scope(caller: Caller, scope: str) -> Caller:
    if scope not in caller.scopes:
        raise ForbiddenError(f"this API key may not use {scope} routes (it has no {scope} scope)")
    return caller
