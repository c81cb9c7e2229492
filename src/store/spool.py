"""The on-disk spool: where results go while the database is unreachable.

Append-only JSON lines, one result a line, fsynced once per batch, so what the writer took
from the queue survives a crash of the process as well as an outage of the database. Replay
renames the file aside (``*.replaying``) so new results can keep arriving while it is read;
inserts are idempotent on the request id, so a replay cut short is simply done again.

Bounded in bytes (``DFD_SPOOL_MAX_BYTES``). When it is full, new results are dropped with a
metric and an ERROR log, and readiness stays up: the service keeps answering, because a
detector that stops answering while its history database is down hurts its users more than
a gap in the history does (the choice is documented in DEPLOYMENT.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.replaying = path.with_name(path.name + ".replaying")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.replaying) if p.exists())

    def has_rows(self) -> bool:
        return self.size_bytes > 0

    def append(self, rows: list[dict[str, Any]]) -> int:
        """Append ``rows`` and fsync; returns how many were kept (0 when the spool is full)."""
        if not rows:
            return 0
        lines = "".join(json.dumps(row, separators=(",", ":"), default=str) + "\n" for row in rows)
        data = lines.encode()
        with self._lock:
            if self.size_bytes + len(data) > self.max_bytes:
                return 0
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(rows)

    def begin_replay(self) -> bool:
        """Move the spool aside for reading (unless a cut-short replay is still there)."""
        with self._lock:
            if self.replaying.exists():
                return True
            if not self.path.exists() or self.path.stat().st_size == 0:
                return False
            os.replace(self.path, self.replaying)
            return True

    def replay_batches(self, batch_size: int) -> Iterator[list[dict[str, Any]]]:
        """The rows set aside by :meth:`begin_replay`, in batches. A torn last line (a crash in
        the middle of a write) is skipped with a warning."""
        batch: list[dict[str, Any]] = []
        with self.replaying.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    batch.append(json.loads(line))
                except ValueError:
                    logger.warning("spool line %d is torn; skipped", number)
                    continue
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def finish_replay(self) -> None:
        with self._lock:
            self.replaying.unlink(missing_ok=True)
