"""The key file (``DFD_KEYS_FILE``): managed keys as JSON, hashed, written atomically.

JSON because the standard library both reads and writes it (TOML would need a writer package for
a file that people rarely edit by hand). Every change is a read-modify-write under an exclusive
lock on a ``.lock`` file beside it, written to a temporary file in the same folder, flushed, and
renamed over the old one: a reader (the service re-reading on change) sees the old file or the new
one, never half of one, and two CLI runs at once cannot lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from src.keys.records import FILE_FORMAT, KeyRecord, KeyRecordError, new_record, now_utc

FILE_MODE = 0o600


class KeyStoreError(Exception):
    """The key file cannot be read or changed as asked."""


@dataclass(frozen=True)
class FileStamp:
    """What tells a changed file from an unchanged one without reading it."""

    mtime_ns: int
    size: int
    inode: int


class KeyFile:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def stamp(self) -> FileStamp | None:
        """The file's stamp, or None when it does not exist (yet)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return None
        return FileStamp(info.st_mtime_ns, info.st_size, info.st_ino)

    def read(self) -> list[KeyRecord]:
        """Every record (active, expired and revoked); none when the file does not exist."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"cannot read the key file {self.path}: {exc}") from exc
        return _parse(text, self.path)

    def create(
        self,
        name: str,
        scopes: list[str],
        rate: str | None = None,
        quota: str | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[str, KeyRecord]:
        """Add a new key; returns the key (shown once) and its record. Names of active keys are
        unique, so ``revoke NAME`` means one key."""
        key, record = new_record(name, scopes, rate, quota, expires_at)
        with self._locked():
            records = self.read()
            if any(r.name == name and r.status() == "active" for r in records):
                raise KeyStoreError(f"an active key named {name!r} exists; revoke it first")
            self._write([*records, record])
        return key, record

    def revoke(self, name: str) -> list[KeyRecord]:
        """Revoke every unrevoked key called ``name`` (expired ones too); the records stay, for
        the audit trail."""
        with self._locked():
            records = self.read()
            moment = now_utc()
            changed = [r for r in records if r.name == name and r.revoked_at is None]
            if not changed:
                raise KeyStoreError(f"no unrevoked key named {name!r}")
            self._write([r.revoked(moment) if r in changed else r for r in records])
        return [r.revoked(moment) for r in changed]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a", encoding="utf-8") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, records: list[KeyRecord]) -> None:
        document = {"format": FILE_FORMAT, "keys": [r.to_json() for r in records]}
        descriptor, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_dir(self.path.parent)


def _parse(text: str, path: Path) -> list[KeyRecord]:
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyStoreError(f"the key file {path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise KeyStoreError(f"the key file {path} is not a {FILE_FORMAT} document")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeyStoreError(f"the key file {path} has no list of keys")
    try:
        return [KeyRecord.from_json(entry) for entry in entries]
    except KeyRecordError as exc:
        raise KeyStoreError(f"the key file {path}: {exc}") from None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
