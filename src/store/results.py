"""``ResultStore``: the one object the service holds for history, feedback and recordings.

Routes call :meth:`ResultStore.record` after answering (it only queues), and the read methods
through ``asyncio.to_thread`` (they are plain SQLAlchemy sessions). Built from settings by
:func:`open_store`, closed by :meth:`ResultStore.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from src.core.errors import ConfigurationError
from src.core.settings import Settings
from src.store import migrate
from src.store.cache import ResultCache, build_cache
from src.store.db import make_engine, redact, session_factory
from src.store.jobs import JobRunner
from src.store.recording import Recorder
from src.store.repository import PredictionRecord, purge_before, utcnow
from src.store.spool import Spool
from src.store.writer import ResultWriter, StoreEvents

logger = logging.getLogger(__name__)
PURGE_EVERY_S = 3600.0


@dataclass(frozen=True)
class PurgeReport:
    results: int
    recordings: int


class ResultStore:
    def __init__(
        self,
        engine: Engine,
        writer: ResultWriter,
        recorder: Recorder,
        retention_days: float | None = None,
    ) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = writer.sessions
        self.writer = writer
        self.recorder = recorder
        self.retention_days = retention_days
        self._recordings = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording")
        self._next_purge = 0.0

    def record(self, record: PredictionRecord, data: bytes | None = None) -> None:
        """Store a result without waiting: it is queued for the writer thread. With ``data``
        and recording on (``DFD_RECORD_INPUTS``), the bytes are kept under their hash on a
        thread of their own. Call it after the answer is ready; it never touches the database
        on the caller's thread."""
        if data is not None and self.recorder.wants():
            record.recorded = True
            self._recordings.submit(self._keep, data, record.sha256)
        self.writer.submit(record)

    def _keep(self, data: bytes, sha256: str) -> None:
        try:
            self.recorder.keep(data, sha256)
        except OSError:
            logger.exception("could not record the input %s", sha256)

    def purge(self) -> PurgeReport:
        """Delete results older than ``DFD_RETENTION_DAYS`` and recordings no result refers to."""
        if self.retention_days is None:
            return PurgeReport(0, 0)
        cutoff = utcnow() - timedelta(days=self.retention_days)
        with self.sessions.begin() as session:
            results, hashes = purge_before(session, cutoff)
        recordings = sum(self.recorder.remove(sha256) for sha256 in hashes)
        if results or recordings:
            logger.info("retention: purged %d results and %d recordings", results, recordings)
        return PurgeReport(results, recordings)

    def housekeeping(self) -> None:
        """Run on the writer's thread when it is idle: the retention purge, hourly."""
        if self.retention_days is None or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY_S
        try:
            self.purge()
        except SQLAlchemyError as exc:
            logger.warning("retention purge skipped, the database is unreachable: %s", exc)

    def close(self, timeout_s: float = 10.0) -> None:
        self.writer.stop(timeout_s)
        self._recordings.shutdown(wait=True)
        self.engine.dispose()


def prepare_schema(engine: Engine, settings: Settings) -> None:
    """Migrate at start (development), or check that the schema is current (production)."""
    if settings.migrate_on_start:
        migrate.upgrade(engine)
        return
    if settings.store_migrate == "off" and settings.env == "development":
        return
    try:
        revision = migrate.current(engine)
    except SQLAlchemyError as exc:  # results are spooled until it is back
        logger.error("the result store is unreachable at start: %s", exc)
        return
    if revision != migrate.head():
        raise ConfigurationError(
            f"the store's schema is at {revision or 'nothing'}, not {migrate.head()}: run "
            "`python -m src.store migrate` first (DEPLOYMENT.md)"
        )


def open_store(settings: Settings, events: StoreEvents | None = None) -> ResultStore:
    """Engine, schema, spool, writer and recorder from the settings; the writer is started."""
    engine = make_engine(settings.database_url)
    try:
        prepare_schema(engine, settings)
    except BaseException:
        engine.dispose()
        raise
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    writer = ResultWriter(
        session_factory(engine),
        spool,
        events,
        queue_size=settings.store_queue_size,
        batch_size=settings.store_batch_size,
        retry_s=settings.store_retry_s,
    )
    store = ResultStore(
        engine,
        writer,
        Recorder(settings.record_inputs, settings.record_dir),
        settings.retention_days,
    )
    writer.on_idle = store.housekeeping
    writer.start()
    logger.info(
        "result store open",
        extra={"database": redact(settings.database_url), "spool": str(settings.spool_path)},
    )
    return store


@dataclass
class StoreParts:
    """What the service holds from this package: the store, the cache and the job runner (each
    None when off), and the fingerprint that keys the cache to the loaded model."""

    store: ResultStore | None
    cache: ResultCache | None
    jobs: JobRunner | None
    fingerprint: str

    async def stop_jobs(self) -> None:
        if self.jobs is not None:
            await self.jobs.stop()

    async def close(self) -> None:
        await self.stop_jobs()
        if self.cache is not None:
            await self.cache.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)


async def open_parts(
    settings: Settings,
    events: StoreEvents | None,
    fingerprint: str,
    on_job_finished: Callable[[str], None] | None = None,
) -> StoreParts:
    """Open the store (migrating or checking the schema), the cache and the job runner."""
    cache = build_cache(
        settings.effective_cache,
        settings.cache_max_bytes,
        settings.redis_url,
        settings.cache_ttl_s,
        settings.cache_key_prefix,
    )
    if settings.store == "off":
        return StoreParts(None, cache, None, fingerprint)
    store = await asyncio.to_thread(open_store, settings, events)
    jobs = JobRunner(
        store.sessions,
        settings.jobs_dir,
        workers=settings.job_workers,
        max_attempts=settings.job_max_attempts,
        on_finished=on_job_finished,
    )
    parts = StoreParts(store, cache, jobs, fingerprint)
    try:
        await jobs.start()
    except BaseException:
        await parts.close()
        raise
    return parts
