"""Model lifecycle: load a version while others serve, unload it, split traffic, roll back,
score a shadow aside and compare it, and share the routing setting between replicas.

Every version of the served model (``DFD_MODEL_NAME``) loads on the one model thread of the
shared :class:`EngineCore`, warms up there between the serving versions' batches, and joins the
:class:`ModelRegistry` only once it is ready; traffic moves to it by an admin request. A version
leaves only when no traffic points at it, after the requests routed to it have finished.

The routing setting (weights, shadow, history) is kept where every replica reads it: the
result store's ``model_routing`` table when the store is on (PostgreSQL shared by replicas),
else ``<repository>/<model>/routing.json``. Each replica polls it every ``DFD_ROUTING_SYNC_S``
and applies a newer revision, loading the versions it needs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from src.core.errors import (
    ConflictError,
    DeepfakeError,
    ModelLoadError,
    NotFoundError,
    ServiceUnavailableError,
)
from src.core.labels import decide
from src.core.settings import Settings, version_order
from src.engine.registry import ModelRegistry, Routing
from src.engine.service import EngineCore, InferenceService
from src.models.backends import choose_backend, load_backend
from src.models.repository import ModelRepository, VersionEntry
from src.monitoring.drift import DriftMonitor
from src.serve.metrics import Metrics
from src.store.models import RoutingRow, ShadowRow

logger = logging.getLogger(__name__)
ROUTING_FILE = "routing.json"
SHADOW_MEMORY = 10_000  # comparisons kept in memory when there is no store
COMPARE_LIMIT = 10_000  # newest pairs a comparison reads

VersionState = Literal["available", "loading", "ready", "failed"]


# ------------------------------------------------------------------ routing stores
class RoutingStore(Protocol):
    def read(self, model: str) -> Routing | None: ...

    def write(self, model: str, routing: Routing) -> None:
        """Save ``routing``; :class:`ConflictError` when a newer revision is already there."""


class MemoryRoutingStore:
    """One process, nothing shared (a single checkpoint, no store)."""

    def __init__(self) -> None:
        self._routings: dict[str, Routing] = {}

    def read(self, model: str) -> Routing | None:
        return self._routings.get(model)

    def write(self, model: str, routing: Routing) -> None:
        current = self._routings.get(model)
        if current is not None and current.revision >= routing.revision:
            raise ConflictError("the routing changed meanwhile; retry")
        self._routings[model] = routing


class FileRoutingStore:
    """``<repository>/<model>/routing.json``, replaced atomically under a lock file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, model: str) -> Path:
        return self.root / model / ROUTING_FILE

    def read(self, model: str) -> Routing | None:
        path = self._path(model)
        try:
            return Routing.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("unreadable routing file %s: %s", path, exc)
            return None

    def write(self, model: str, routing: Routing) -> None:
        path = self._path(model)
        with _locked(path.with_suffix(".lock")):
            current = self.read(model)
            if current is not None and current.revision >= routing.revision:
                raise ConflictError("the routing changed meanwhile; retry")
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            temporary.write_text(json.dumps(routing.to_json(), indent=2, sort_keys=True))
            os.replace(temporary, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SqlRoutingStore:
    """The result store's ``model_routing`` table (one row per model)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def read(self, model: str) -> Routing | None:
        with Session(self.engine) as session:
            row = session.get(RoutingRow, model)
            return None if row is None else Routing.from_json(row.routing)

    def write(self, model: str, routing: Routing) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(RoutingRow, model, with_for_update=True)
            now = datetime.now(UTC).replace(tzinfo=None)
            if row is None:
                session.add(
                    RoutingRow(
                        model=model,
                        revision=routing.revision,
                        routing=routing.to_json(),
                        updated_at=now,
                    )
                )
                return
            if row.revision >= routing.revision:
                raise ConflictError("the routing changed meanwhile; retry")
            row.revision, row.routing, row.updated_at = routing.revision, routing.to_json(), now


# ------------------------------------------------------------------ shadow comparisons
@dataclass(frozen=True)
class ShadowPair:
    request_id: str
    model: str
    version: str
    fake_prob: float
    shadow_version: str
    shadow_fake_prob: float
    threshold: float


@dataclass(frozen=True)
class Comparison:
    shared_requests: int
    label_agreement: float | None
    mean_abs_diff: float | None
    p95_abs_diff: float | None


class ShadowLog:
    """Where shadow scores go: the store's ``shadow_scores`` table when the store is on (every
    replica's pairs in one place), else the newest pairs in memory."""

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine
        self._pairs: deque[ShadowPair] = deque(maxlen=SHADOW_MEMORY)

    def add(self, pair: ShadowPair) -> None:
        if self.engine is None:
            self._pairs.append(pair)
            return
        now = datetime.now(UTC).replace(tzinfo=None)
        with Session(self.engine) as session, session.begin():
            session.add(ShadowRow(created_at=now, **pair.__dict__))

    def compare(self, model: str, a: str, b: str) -> Comparison:
        pairs = self._read(model, a, b)
        if not pairs:
            return Comparison(0, None, None, None)
        diffs = np.abs(np.array([p.fake_prob - p.shadow_fake_prob for p in pairs]))
        agree = [
            decide(p.fake_prob, p.threshold) == decide(p.shadow_fake_prob, p.threshold)
            for p in pairs
        ]
        return Comparison(
            shared_requests=len(pairs),
            label_agreement=round(float(np.mean(agree)), 6),
            mean_abs_diff=round(float(diffs.mean()), 6),
            p95_abs_diff=round(float(np.percentile(diffs, 95)), 6),
        )

    def _read(self, model: str, a: str, b: str) -> list[ShadowPair]:
        if self.engine is None:
            return [
                p
                for p in self._pairs
                if p.model == model and {p.version, p.shadow_version} == {a, b}
            ][-COMPARE_LIMIT:]
        columns = ShadowRow.__table__.c
        query = (
            select(ShadowRow)
            .where(ShadowRow.model == model)
            .where(
                or_(
                    (columns.version == a) & (columns.shadow_version == b),
                    (columns.version == b) & (columns.shadow_version == a),
                )
            )
            .order_by(ShadowRow.created_at.desc())
            .limit(COMPARE_LIMIT)
        )
        with Session(self.engine) as session:
            rows = session.scalars(query).all()
        return [
            ShadowPair(
                r.request_id,
                r.model,
                r.version,
                r.fake_prob,
                r.shadow_version,
                r.shadow_fake_prob,
                r.threshold,
            )
            for r in rows
        ]


# ------------------------------------------------------------------ the manager
@dataclass
class VersionStatus:
    state: VersionState
    reason: str | None = None
    loaded_by_sync: bool = False


@dataclass
class ModelManager:
    """The served model's versions: loads, unloads, routing, shadow and replica sync."""

    name: str
    core: EngineCore
    build: Callable[[VersionEntry], Awaitable[InferenceService]]
    entries: Callable[[], dict[str, VersionEntry]]
    routing_store: RoutingStore
    shadow_log: ShadowLog
    metrics: Metrics
    drift: DriftMonitor | None = None
    max_loaded: int = 2
    sync_s: float = 2.0
    retire_timeout_s: float = 30.0
    sticky: bool = True
    registry: ModelRegistry = field(init=False)
    status: dict[str, VersionStatus] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _single: dict[str, VersionEntry] | None = None
    # Called after every routing change or unload (the lifespan points app.state.service at
    # the primary version, so that nothing holds an unloaded version's memory).
    on_change: Callable[[], None] = lambda: None
    _sync_task: asyncio.Task[None] | None = None
    _shadow_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.registry = ModelRegistry(self.name, sticky=self.sticky)

    # ----------------------------------------------------------- life
    async def start(self, default_version: str | None, single: VersionEntry | None = None) -> None:
        """Load what the shared routing names (or ``default_version`` with all the traffic),
        then open admission. ``single``: one checkpoint (``DFD_CHECKPOINT_PATH``), served as
        the version its metadata names."""
        self.core.open_threads()
        if single is not None:
            service = await _original_error(self._load(None, entry=single))
            self._single = {service.version: replace(single, version=service.version)}
            self.registry.routing = Routing({service.version: 100})
            self.core.admission.open()
            return
        if default_version is None:
            raise ValueError("default_version is needed with a repository")
        stored = await self._read_routing()
        routing = Routing({default_version: 100})
        if stored is not None and stored.traffic:
            missing = [v for v in _serving(stored) if v not in self.entries()]
            if missing:
                logger.warning(
                    "the stored routing of %s names versions not in the repository (%s): "
                    "serving %s alone",
                    self.name,
                    ", ".join(missing),
                    default_version,
                )
            else:
                routing = stored
        try:
            for version in sorted(_serving(routing), key=version_order):
                await _original_error(self._load(version))
        except DeepfakeError as exc:
            if routing.traffic == {default_version: 100}:
                raise  # the configured version itself cannot be served: stop
            # A stored setting naming a version that no longer loads must not keep the service
            # down: serve the configured version alone (the setting's revision kept, so the
            # replicas' sync does not retry it) until an admin changes the traffic.
            logger.error(
                "the stored routing of %s cannot be served (%s): serving %s alone",
                self.name,
                exc,
                default_version,
            )
            for version in list(self.registry.loaded):
                if version != default_version:
                    await self._unload(version)
            if default_version not in self.registry.loaded:
                await _original_error(self._load(default_version))
            routing = Routing({default_version: 100}, None, (), routing.revision)
        self.registry.routing = routing
        self.core.admission.open()
        if self.sync_s > 0:
            self._sync_task = asyncio.create_task(self._sync_loop(), name="routing-sync")

    async def stop(self, drain_timeout_s: float) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        await self.core.drain(drain_timeout_s)
        for task in list(self._shadow_tasks):
            task.cancel()
        for service in list(self.registry.loaded.values()):
            await service.batcher.stop()
        self.core.close()
        logger.info("inference service stopped")

    # ----------------------------------------------------------- requests
    def route(self, caller_key: str | None, pinned: str | None = None) -> InferenceService:
        return self.registry.route(caller_key, pinned)

    @property
    def services(self) -> list[InferenceService]:
        return list(self.registry.loaded.values())

    def primary(self) -> InferenceService:
        """The version with the largest share of the traffic (what describes "the model")."""
        traffic = self.registry.routing.traffic
        version = max(traffic, key=lambda v: (traffic[v], version_order(v)))
        return self.registry.loaded[version]

    def shadow(
        self, request_id: str, data: bytes, answered: InferenceService, fake_prob: float
    ) -> None:
        """Score ``data`` with the shadow version aside, when one is drawn for this request:
        after the answer, never delaying or changing it; skipped when the service is full."""
        service = self.registry.shadow_for(answered.version)
        if service is None:
            return
        pair = ShadowPair(
            request_id,
            self.name,
            answered.version,
            fake_prob,
            service.version,
            -1.0,
            answered.threshold,
        )
        task = asyncio.create_task(self._score_shadow(service, data, pair))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _score_shadow(self, service: InferenceService, data: bytes, pair: ShadowPair) -> None:
        try:
            with service.lease(), service.admit(1):
                prediction = await service.predict_bytes(data)
        except DeepfakeError as exc:
            self.metrics.shadow_scores.labels(outcome="skipped").inc()
            logger.debug("shadow score skipped: %s", exc)
            return
        done = ShadowPair(**{**pair.__dict__, "shadow_fake_prob": round(prediction.fake_prob, 6)})
        try:
            await asyncio.to_thread(self.shadow_log.add, done)
        except SQLAlchemyError as exc:
            self.metrics.shadow_scores.labels(outcome="lost").inc()
            logger.warning("shadow score not stored: %s", exc)
            return
        self.metrics.shadow_scores.labels(outcome="stored").inc()

    async def compare(self, a: str, b: str) -> Comparison:
        try:
            return await asyncio.to_thread(self.shadow_log.compare, self.name, a, b)
        except SQLAlchemyError as exc:
            raise ServiceUnavailableError(f"the shadow scores cannot be read: {exc}") from exc

    # ----------------------------------------------------------- admin
    def state_of(self, version: str) -> tuple[VersionState, str | None]:
        if version in self.registry.loaded:
            return "ready", None
        status = self.status.get(version)
        if status is None:
            return "available", None
        return status.state, status.reason

    async def load(self, version: str) -> InferenceService:
        """Load and warm ``version`` beside the serving ones (admin). 404 when the repository
        has no such version, 409 while it loads or when the resident limit is reached."""
        if version not in self.versions_on_disk():
            raise NotFoundError(f"model {self.name!r} has no version {version!r}")
        loaded = self.registry.loaded.get(version)
        if loaded is not None:
            return loaded
        return await self._load(version)

    def versions_on_disk(self) -> dict[str, VersionEntry]:
        return self._single if self._single is not None else self.entries()

    async def _load(
        self, version: str | None, *, by_sync: bool = False, entry: VersionEntry | None = None
    ) -> InferenceService:
        """Build, check and warm a version, then add it to the registry under ``version``
        (or, for a single checkpoint, the version its metadata names)."""
        status = self.status.get(version) if version is not None else None
        if status is not None and status.state == "loading":
            raise ConflictError(f"version {version!r} of {self.name!r} is already loading")
        resident = len(self.registry.loaded) + sum(
            s.state == "loading" for s in self.status.values()
        )
        if resident >= self.max_loaded:
            raise ConflictError(
                f"{resident} versions of {self.name!r} are resident, the most allowed "
                f"(DFD_MAX_LOADED_VERSIONS={self.max_loaded}): unload one first"
            )
        if entry is None:
            entry = self.entries().get(version or "")
        if entry is None:
            raise NotFoundError(f"model {self.name!r} has no version {version!r}")
        key = version or entry.version
        self.status[key] = VersionStatus("loading", loaded_by_sync=by_sync)
        logger.info("loading %s version %s", self.name, key)
        service: InferenceService | None = None
        try:
            service = await self.build(entry)
            self._check_compatible(service)
        except Exception as exc:  # any failure: reported, the serving versions untouched
            reason = (
                exc.message if isinstance(exc, DeepfakeError) else f"{type(exc).__name__}: {exc}"
            )
            self.status[key] = VersionStatus("failed", reason)
            self.metrics.model_loads.labels(outcome="failed").inc()
            logger.error("version %s of %s failed to load: %s", key, self.name, reason)
            if service is not None:
                await service.batcher.stop()
            raise ModelLoadError(
                f"version {key!r} of {self.name!r} failed to load: {reason}"
            ) from exc
        version = service.version if version is None else version
        self.status.pop(key, None)
        self.status[version] = VersionStatus("ready", loaded_by_sync=by_sync)
        self.registry.loaded = {**self.registry.loaded, version: service}
        self.metrics.model_loads.labels(outcome="ok").inc()
        self.metrics.version_loaded(service)
        logger.info("version %s of %s is ready", version, self.name)
        return service

    def _check_compatible(self, service: InferenceService) -> None:
        """A version must answer the same question as the others: the same labels."""
        for other in self.registry.loaded.values():
            if other.metadata.labels != service.metadata.labels:
                raise ModelLoadError(
                    f"metadata mismatch: labels {service.metadata.labels} differ from version "
                    f"{other.version}'s {other.metadata.labels}"
                )

    async def unload(self, version: str) -> None:
        """Take ``version`` out (admin): 409 while it has traffic or is the only one loaded.
        Requests routed to it finish first; then its memory is returned."""
        if version not in self.versions_on_disk() and version not in self.registry.loaded:
            raise NotFoundError(f"model {self.name!r} has no version {version!r}")
        async with self._lock:
            await self._sync_once()
            self.registry.check_unload(version)
            routing = self.registry.without(version)
            if routing != self.registry.routing:
                await self._save(routing)
            await self._unload(version)

    async def _unload(self, version: str) -> None:
        service = self.registry.loaded[version]
        self.registry.loaded = {v: s for v, s in self.registry.loaded.items() if v != version}
        self.status.pop(version, None)
        self.on_change()
        await service.retire(self.retire_timeout_s)
        self.metrics.version_unloaded(service)
        if self.drift is not None:
            self.drift.forget(version)
        del service
        gc.collect()
        await asyncio.to_thread(self.core.release_memory)
        logger.info("version %s of %s unloaded", version, self.name)

    async def set_traffic(self, weights: dict[str, int]) -> Routing:
        async with self._lock:
            await self._sync_once()
            routing = self.registry.with_traffic(weights)
            await self._save(routing)
            return routing

    async def rollback(self) -> Routing:
        async with self._lock:
            await self._sync_once()
            routing = self.registry.rolled_back()
            await self._save(routing)
            return routing

    async def set_shadow(self, version: str | None, sample: float) -> Routing:
        async with self._lock:
            await self._sync_once()
            routing = self.registry.with_shadow(version, sample)
            await self._save(routing)
            return routing

    async def _save(self, routing: Routing) -> None:
        """Write the new setting where the replicas read it, then apply it here at once."""
        try:
            await asyncio.to_thread(self.routing_store.write, self.name, routing)
        except SQLAlchemyError as exc:
            raise ServiceUnavailableError(f"the routing setting cannot be saved: {exc}") from exc
        except OSError as exc:
            raise ServiceUnavailableError(f"the routing file cannot be written: {exc}") from exc
        self.registry.routing = routing
        self.on_change()
        logger.info("routing of %s is now %s", self.name, routing.to_json())

    # ----------------------------------------------------------- replicas
    async def _read_routing(self) -> Routing | None:
        try:
            return await asyncio.to_thread(self.routing_store.read, self.name)
        except SQLAlchemyError as exc:
            logger.warning("the routing setting cannot be read: %s", exc)
            return None

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                async with self._lock:
                    await self._sync_once()
            except Exception:
                logger.exception("routing sync failed; retrying in %.1f s", self.sync_s)

    async def _sync_once(self) -> None:
        """Apply a newer shared routing: load what it needs first (the old setting serves
        meanwhile), then switch, then unload what this replica loaded only for an older one."""
        stored = await self._read_routing()
        if stored is None or stored.revision <= self.registry.routing.revision:
            return
        for version in sorted(_serving(stored), key=version_order):
            if version not in self.registry.loaded:
                await self._make_room(stored)
                await self._load(version, by_sync=True)
        self.registry.routing = stored
        self.on_change()
        logger.info("routing of %s synced to revision %d", self.name, stored.revision)
        await self._make_room(stored)

    async def _make_room(self, routing: Routing) -> None:
        needed = _kept(routing) | set(self.registry.routing.traffic)
        for version, status in list(self.status.items()):
            if status.loaded_by_sync and version in self.registry.loaded and version not in needed:
                await self._unload(version)


async def _original_error(load: Awaitable[InferenceService]) -> InferenceService:
    """At start, a version that fails to load stops the service with its own error (a missing
    export is a configuration error), not the admin API's ``ModelLoadError``."""
    try:
        return await load
    except ModelLoadError as exc:
        if isinstance(exc.__cause__, DeepfakeError):
            raise exc.__cause__ from None
        raise


def _serving(routing: Routing) -> set[str]:
    """The versions a routing sends requests to: its traffic and its shadow."""
    serving = set(routing.traffic)
    if routing.shadow is not None:
        serving.add(routing.shadow.version)
    return serving


def _kept(routing: Routing) -> set[str]:
    """What a replica keeps loaded for a routing: what it serves with, and the setting a
    rollback returns to."""
    return _serving(routing) | (set(routing.history[-1]) if routing.history else set())


def routing_store_for(settings: Settings, engine: Engine | None) -> RoutingStore:
    if engine is not None:
        return SqlRoutingStore(engine)
    if settings.model_repository is not None:
        return FileRoutingStore(settings.model_repository)
    return MemoryRoutingStore()


def repository_entries(settings: Settings) -> Callable[[], dict[str, VersionEntry]]:
    """The served model's versions on disk, read afresh on each call (a folder copied in is
    loadable without a restart)."""
    if settings.model_repository is None:
        return lambda: {}
    repository = ModelRepository(settings.model_repository)

    def entries() -> dict[str, VersionEntry]:
        return {entry.version: entry for entry in repository.versions(settings.model_name)}

    return entries


__all__ = [
    "Comparison",
    "FileRoutingStore",
    "MemoryRoutingStore",
    "ModelManager",
    "ShadowLog",
    "SqlRoutingStore",
    "choose_backend",
    "load_backend",
    "repository_entries",
    "routing_store_for",
]
