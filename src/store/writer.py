"""The bounded background writer: results leave the request path through a queue and reach the
database in batches, on a thread of their own.

``submit`` never blocks on the database: it puts the record on a bounded queue (or, when the
queue is full, appends it to the spool). The thread takes up to ``batch_size`` records at a time
and inserts them idempotently. When the database fails, the batch goes to the on-disk
:class:`Spool` and the thread stops trying for ``retry_s``; once an insert works again, the
spool is replayed. Nothing taken from a request is lost unless the spool itself is full.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from src.monitoring import tracing
from src.store.repository import PredictionRecord, insert_predictions
from src.store.spool import Spool

logger = logging.getLogger(__name__)
POLL_S = 0.5
# How long the writer waits for more rows once one is queued: fewer, larger commits. Each
# batch costs about 1 ms of CPU beyond its rows (SQLAlchemy's execution and the commit): at 130
# rows/s the writer thread spends 0.27 ms per row with a 0.05-s linger and 0.11 ms with 0.2 s
# (`python -m bench.writer`). On this replica a result not yet written is read from the
# pending map, so the delay shows only to other replicas.
LINGER_S = 0.2


class StoreEvents(Protocol):
    """What the writer reports (``src.serve.metrics.Metrics`` implements it)."""

    def store_queue_depth(self, depth: int) -> None: ...
    def store_rows_written(self, rows: int) -> None: ...
    def store_write_failed(self) -> None: ...
    def store_rows_spooled(self, rows: int) -> None: ...
    def store_rows_dropped(self, rows: int) -> None: ...
    def store_spool_bytes(self, size: int) -> None: ...


class NullStoreEvents:
    def store_queue_depth(self, depth: int) -> None: ...
    def store_rows_written(self, rows: int) -> None: ...
    def store_write_failed(self) -> None: ...
    def store_rows_spooled(self, rows: int) -> None: ...
    def store_rows_dropped(self, rows: int) -> None: ...
    def store_spool_bytes(self, size: int) -> None: ...


class ResultWriter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        spool: Spool,
        events: StoreEvents | None = None,
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        retry_s: float = 2.0,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """``on_idle``: called on the thread between batches (retention purges run there)."""
        self.sessions = sessions
        self.spool = spool
        self.events: StoreEvents = events or NullStoreEvents()
        self.batch_size = batch_size
        self.retry_s = retry_s
        # None is the stop sentinel, so stopping does not wait out a poll.
        self._queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self._pending: dict[str, PredictionRecord] = {}
        # The request span each traced record came from (only while tracing is on): the
        # batch's "store.write" span links to them, as a forward pass does.
        self._traces: dict[str, tracing.ActiveSpan] = {}
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._in_flight = 0
        self.on_idle = on_idle
        self.database_up = True

    # ------------------------------------------------------------------ request side
    def submit(self, record: PredictionRecord) -> None:
        """Hand a result over; returns at once. When the queue is full the record is appended
        to the spool instead (a rare, slower path), so it is still not lost."""
        active = tracing.current()
        with self._pending_lock:
            self._pending[record.request_id] = record
            if active is not None:
                self._traces[record.request_id] = active
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._spool([record])
            self._forget([record])
        self.events.store_queue_depth(self._queue.qsize())

    def pending(self, request_id: str) -> PredictionRecord | None:
        """A result handed over but not yet in the database (so a lookup right after the answer
        finds it)."""
        with self._pending_lock:
            return self._pending.get(request_id)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record submitted so far has been written or spooled."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (or spool it), then end the thread."""
        self._stop.set()
        with contextlib.suppress(queue.Full):  # a full queue wakes the thread anyway
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        leftovers = self._drain_queue(self._queue.qsize())
        if leftovers:
            self._spool(leftovers)
            self._forget(leftovers)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            batch = self._take_batch(0.0 if self._stop.is_set() else POLL_S)
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                break
            if self.database_up or time.monotonic() >= self._retry_at:
                self._replay_spool()
            if self.on_idle is not None:
                self._idle_work()

    def _take_batch(self, wait_s: float) -> list[PredictionRecord]:
        """The next batch: the first record, then, after lingering ``LINGER_S`` (one commit of
        many rows costs far less than many commits of one), whatever else is queued. The linger
        is a sleep, not a wait on the queue: one wake-up per batch instead of one per record,
        each of which would take the GIL from the request threads. The stop ends it early."""
        try:
            first = self._queue.get(timeout=wait_s)
        except queue.Empty:
            return []
        if first is None:
            self._queue.task_done()
            return self._drain_queue(self.batch_size)
        if self._queue.qsize() < self.batch_size - 1 and not self._stop.is_set():
            self._stop.wait(LINGER_S)
        return [first, *self._drain_queue(self.batch_size - 1)]

    def _drain_queue(self, limit: int) -> list[PredictionRecord]:
        batch: list[PredictionRecord] = []
        while len(batch) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.task_done()
            else:
                batch.append(item)
        return batch

    def _write(self, batch: list[PredictionRecord]) -> None:
        started_ns = time.time_ns()
        outcome = "spooled"
        try:
            if not self.database_up and time.monotonic() < self._retry_at:
                self._spool(batch)
                return
            try:
                written = self._insert(batch)
            except SQLAlchemyError as exc:
                self._database_failed(exc)
                self._spool(batch)
                return
            outcome = "written"
            self._database_back()
            self.events.store_rows_written(written)
        finally:
            self._trace(batch, started_ns, outcome)
            self._forget(batch)
            for _ in batch:
                self._queue.task_done()
            self.events.store_queue_depth(self._queue.qsize())

    def _trace(self, batch: list[PredictionRecord], started_ns: int, outcome: str) -> None:
        """One "store.write" span for the batch, linked to each traced request it stored."""
        with self._pending_lock:
            served = [
                active
                for record in batch
                if (active := self._traces.pop(record.request_id, None)) is not None
            ]
        tracing.record_linked_span(
            "store.write",
            served,
            started_ns,
            time.time_ns(),
            {"store.rows": len(batch), "store.outcome": outcome},
            error=outcome != "written",
        )

    def _insert(self, batch: list[PredictionRecord]) -> int:
        with self.sessions.begin() as session:
            return insert_predictions(session, batch)

    def _replay_spool(self) -> None:
        if not self.spool.has_rows() or not self.spool.begin_replay():
            return
        replayed = 0
        try:
            for rows in self.spool.replay_batches(self.batch_size):
                written = self._insert([PredictionRecord.from_json(row) for row in rows])
                replayed += len(rows)
                self.events.store_rows_written(written)
        except SQLAlchemyError as exc:
            self._database_failed(exc)
            return
        self._database_back()
        self.spool.finish_replay()
        self.events.store_spool_bytes(self.spool.size_bytes)
        logger.info("replayed %d spooled results into the database", replayed)

    def _database_failed(self, exc: Exception) -> None:
        self.events.store_write_failed()
        if self.database_up:
            logger.error(
                "the result store is unreachable; spooling results to disk: %s",
                str(exc).splitlines()[0],
            )
        self.database_up = False
        self._retry_at = time.monotonic() + self.retry_s

    def _database_back(self) -> None:
        if not self.database_up:
            logger.warning("the result store is reachable again")
        self.database_up = True

    def _spool(self, batch: list[PredictionRecord]) -> None:
        kept = self.spool.append([record.to_json() for record in batch])
        if kept:
            self.events.store_rows_spooled(kept)
        else:
            self.events.store_rows_dropped(len(batch))
            logger.error(
                "the result spool is full (%s, %d bytes): %d results were DROPPED; the service "
                "keeps answering. Bring the database back or raise DFD_SPOOL_MAX_BYTES",
                self.spool.path,
                self.spool.max_bytes,
                len(batch),
            )
        self.events.store_spool_bytes(self.spool.size_bytes)

    def _forget(self, batch: list[PredictionRecord]) -> None:
        with self._pending_lock:
            for record in batch:
                self._pending.pop(record.request_id, None)
                self._traces.pop(record.request_id, None)

    def _idle_work(self) -> None:
        assert self.on_idle is not None
        try:
            self.on_idle()
        except Exception:  # a failed purge must not end the writer
            logger.exception("store housekeeping failed")
