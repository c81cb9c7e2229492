"""Asynchronous jobs: accepted at once, run in the background, looked up by id, and never lost
to a restart.

A job is a row in the ``jobs`` table (``queued -> running -> done | failed``) plus its input
kept on disk under ``DFD_JOBS_DIR`` until the job ends. :class:`JobRunner` claims queued jobs
one at a time per worker, runs the coroutine function registered for the job's kind
(``async def run(input_path: Path, params: dict) -> dict``) and records the result or the
reason it failed. Claiming is a conditional update (``status='queued'`` still true), with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two replicas never run the same job.

At start, jobs this replica left ``running`` (a crash, a restart) go back to the queue when
their input is still on disk and they have attempts left, and are failed with a reason
otherwise. Each replica marks the jobs it holds with a heartbeat; when a replica is gone (its
heartbeat stale), another one requeues or adopts its jobs if it can see their inputs (a shared
``DFD_JOBS_DIR``) and fails them with the reason if not: never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from src.core.errors import DeepfakeError, ServiceUnavailableError
from src.store.models import JobRow
from src.store.repository import utcnow

logger = logging.getLogger(__name__)
JobFunction = Callable[[Path, dict[str, Any]], Awaitable[dict[str, Any]]]
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class JobView:
    id: str
    kind: str
    status: str
    key_id: str | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: JobRow) -> JobView:
        return cls(
            row.id,
            row.kind,
            row.status,
            row.key_id,
            row.result,
            row.error,
            row.attempts,
            row.created_at,
            row.updated_at,
        )


def default_owner(jobs_dir: Path) -> str:
    """Who this replica is, stable across its restarts: host name and jobs folder."""
    return f"{socket.gethostname()}:{jobs_dir.resolve()}"[:200]


class JobRunner:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        jobs_dir: Path,
        *,
        workers: int = 1,
        max_attempts: int = 3,
        poll_s: float = 1.0,
        heartbeat_s: float = 10.0,
        stale_s: float = 60.0,
        owner: str | None = None,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.jobs_dir = jobs_dir
        self.workers = workers
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.owner = owner or default_owner(jobs_dir)
        self._functions: dict[str, JobFunction] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._on_finished = on_finished

    def register(self, kind: str, function: JobFunction) -> None:
        """Run jobs of ``kind`` with ``function(input_path, params) -> result``."""
        self._functions[kind] = function

    # ------------------------------------------------------------------ submitting, reading
    async def submit(
        self, kind: str, data: bytes, params: dict[str, Any], key_id: str | None
    ) -> JobView:
        """Keep ``data`` on disk, queue the job, and wake a worker. Raises if the database is
        unreachable (nothing is queued then, and the input is removed)."""
        if kind not in self._functions:
            raise ValueError(f"no job function registered for {kind!r}")
        job_id = uuid.uuid4().hex
        path = self.jobs_dir / f"{job_id}.input"
        await asyncio.to_thread(_write_synced, path, data)
        try:
            view = await asyncio.to_thread(self._insert, job_id, kind, path, params, key_id)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._wake.set()
        return view

    def _insert(
        self, job_id: str, kind: str, path: Path, params: dict[str, Any], key_id: str | None
    ) -> JobView:
        now = utcnow()
        row = JobRow(
            id=job_id,
            kind=kind,
            status=QUEUED,
            key_id=key_id,
            input_path=str(path),
            params=params,
            attempts=0,
            owner=self.owner,
            created_at=now,
            updated_at=now,
            heartbeat_at=now,
        )
        with self.sessions.begin() as session:
            session.add(row)
        return JobView.of(row)

    async def get(self, job_id: str, key_id: str | None) -> JobView | None:
        """The job, or None if absent or (``key_id`` given) someone else's."""
        return await asyncio.to_thread(self._get, job_id, key_id)

    def _get(self, job_id: str, key_id: str | None) -> JobView | None:
        with self.sessions() as session:
            query = select(JobRow).where(JobRow.id == job_id)
            if key_id is not None:
                query = query.where(JobRow.key_id == key_id)
            row = session.scalars(query).first()
            return JobView.of(row) if row is not None else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.recover, own_only=True)
        except SQLAlchemyError as exc:  # they are recovered once their heartbeat is stale
            logger.error("could not recover this replica's jobs at start: %s", exc)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"job-worker-{n}") for n in range(self.workers)
        ]
        self._tasks.append(asyncio.create_task(self._keep_alive(), name="job-heartbeat"))

    async def stop(self) -> None:
        """Cancel the workers. A job cut off here stays ``running`` under this owner and is
        resumed at the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def recover(self, *, own_only: bool) -> int:
        """Put jobs nobody is running back in order; returns how many were touched.

        ``own_only`` (at start): this replica's running jobs go back to the queue, or fail with
        the reason. Otherwise (every few seconds): jobs of a replica whose heartbeat is stale
        (it is gone): running ones likewise; queued ones are adopted when their input is
        visible here, and failed when it went with that replica."""
        stale_before = utcnow() - timedelta(seconds=self.stale_s)
        query = select(JobRow).where(JobRow.status.in_([QUEUED, RUNNING]))
        if own_only:
            query = query.where(JobRow.owner == self.owner)
        else:
            query = query.where(
                or_(JobRow.owner.is_(None), JobRow.owner != self.owner),
                or_(JobRow.heartbeat_at.is_(None), JobRow.heartbeat_at < stale_before),
            )
        with self.sessions.begin() as session:
            rows = session.scalars(query.with_for_update(skip_locked=True)).all()
            for row in rows:
                if row.status == RUNNING:
                    self._requeue_or_fail(row)
                else:
                    self._adopt_or_fail(row)
            return len(rows)

    def _requeue_or_fail(self, row: JobRow) -> None:
        if not Path(row.input_path).is_file():
            self._fail(row, "the job's input was lost when the service restarted")
        elif row.attempts >= self.max_attempts:
            self._fail(row, f"the service restarted during each of {row.attempts} attempts")
        else:
            self._hold(row, QUEUED)
            logger.info("job %s requeued after a restart (attempt %d)", row.id, row.attempts)

    def _adopt_or_fail(self, row: JobRow) -> None:
        if Path(row.input_path).is_file():
            self._hold(row, QUEUED)
        else:
            self._fail(row, "the replica that kept the job's input is gone")

    def _hold(self, row: JobRow, status: str) -> None:
        row.status, row.owner = status, self.owner
        row.updated_at = row.heartbeat_at = utcnow()

    def _fail(self, row: JobRow, reason: str) -> None:
        row.status, row.error, row.owner = FAILED, reason, None
        row.updated_at = utcnow()
        logger.warning("job %s failed: %s", row.id, reason)
        Path(row.input_path).unlink(missing_ok=True)

    def _beat(self) -> None:
        """Mark this replica alive on the jobs it holds (queued here or running)."""
        with self.sessions.begin() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.owner == self.owner, JobRow.status.in_([QUEUED, RUNNING]))
                .values(heartbeat_at=utcnow())
            )

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self._beat)
                await asyncio.to_thread(self.recover, own_only=False)
            except Exception:
                logger.exception("job heartbeat or recovery failed; retrying")

    # ------------------------------------------------------------------ the workers
    async def _work(self) -> None:
        while True:
            try:
                claimed = await asyncio.to_thread(self._claim)
            except Exception:
                logger.exception("could not claim a job; retrying")
                claimed = None
            if claimed is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            try:
                await self._run(claimed)
            except Exception:  # e.g. the database went away while recording the outcome
                logger.exception(
                    "job %s: outcome not recorded; resumed at next recovery", claimed.id
                )

    def _claim(self) -> JobView | None:
        """Take the oldest queued job whose input this replica can see."""
        with self.sessions.begin() as session:
            candidates = session.scalars(
                select(JobRow)
                .where(JobRow.status == QUEUED, JobRow.kind.in_(list(self._functions)))
                .order_by(JobRow.created_at)
                .limit(16)
                .with_for_update(skip_locked=True)
            ).all()
            for row in candidates:
                if not Path(row.input_path).is_file():
                    continue
                now = utcnow()
                claimed = session.execute(
                    update(JobRow)
                    .where(JobRow.id == row.id, JobRow.status == QUEUED)
                    .values(
                        status=RUNNING,
                        owner=self.owner,
                        attempts=JobRow.attempts + 1,
                        updated_at=now,
                        heartbeat_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    session.refresh(row)
                    return JobView.of(row)
        return None

    async def _run(self, job: JobView) -> None:
        path, params = await asyncio.to_thread(self._input_of, job.id)
        try:
            result = await self._functions[job.kind](path, params)
        except asyncio.CancelledError:
            raise  # stopping: the job stays running under this owner, resumed at next start
        except ServiceUnavailableError as exc:  # full or draining: later, not a failure
            await asyncio.to_thread(self._set, job.id, status=QUEUED, attempts=job.attempts - 1)
            await asyncio.sleep(exc.retry_after_s or self.poll_s)
        except DeepfakeError as exc:
            await self._finish(job.id, FAILED, error=f"{exc.code}: {exc.message}")
        except Exception:
            logger.exception("job %s failed", job.id)
            await self._finish(job.id, FAILED, error="internal error while running the job")
        else:
            await self._finish(job.id, DONE, result=result)

    def _input_of(self, job_id: str) -> tuple[Path, dict[str, Any]]:
        with self.sessions() as session:
            row = session.get_one(JobRow, job_id)
            return Path(row.input_path), dict(row.params)

    async def _finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        path, _ = await asyncio.to_thread(self._input_of, job_id)
        await asyncio.to_thread(
            self._set, job_id, status=status, result=result, error=error, owner=None
        )
        path.unlink(missing_ok=True)
        logger.info("job %s %s", job_id, status)
        if self._on_finished is not None:
            self._on_finished(status)

    def _set(self, job_id: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        with self.sessions.begin() as session:
            session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
