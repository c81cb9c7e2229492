"""``/predictions``: stored results, looked up by request id or listed with filters, and the
ground truth posted back as feedback.

A key sees only its own results; a key with the ``admin`` scope sees all. Someone else's result
is a 404, exactly like one that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from src.core.errors import InvalidParameterError, NotFoundError, StoreUnavailableError
from src.serve.deps import Caller, HistoryCallerDep
from src.serve.routes.openapi import error_responses
from src.serve.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    FeedbackView,
    PredictionPage,
    StoredPrediction,
)
from src.store.cache import ResultCache, cache_key, content_sha256
from src.store.models import FeedbackRow, PredictionRow
from src.store.recording import media_type_for
from src.store.repository import (
    MAX_PAGE,
    Cursor,
    PredictionFilter,
    PredictionRecord,
    get_prediction,
    list_predictions,
    upsert_feedback,
)
from src.store.results import ResultStore

logger = logging.getLogger(__name__)
router = APIRouter(tags=["history"])
T = TypeVar("T")
ADMIN_SCOPE = "admin"
# Request ids the service writes are 32 hex characters; a client's X-Request-ID up to 64.
RequestIdPath = Annotated[str, Path(min_length=1, max_length=64)]
PENDING_WAIT_S = 5.0


async def get_store(request: Request) -> ResultStore:
    store: ResultStore | None = getattr(request.app.state, "store", None)
    if store is None:
        raise StoreUnavailableError("the result store is off (DFD_STORE=off)")
    return store


StoreDep = Annotated[ResultStore, Depends(get_store)]


def visible_key(caller: Caller) -> str | None:
    """The key id a caller's queries are limited to; None (all results) for an admin."""
    return None if ADMIN_SCOPE in caller.scopes else caller.key_id


async def run_query(request: Request, store: ResultStore, query: Callable[[Session], T]) -> T:
    """Run ``query`` in a session on a worker thread; an unreachable database is a 503."""

    def work() -> T:
        with store.sessions.begin() as session:
            return query(session)

    try:
        return await asyncio.to_thread(work)
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(
            "the result store is unreachable; results are kept and will be visible when it is back",
            retry_after_s=request.app.state.settings.retry_after_s,
        ) from exc


@router.get(
    "/predictions/{request_id}",
    response_model=StoredPrediction,
    responses=error_responses(401, 404, 422, 503),
)
async def read_prediction(
    request: Request, caller: HistoryCallerDep, store: StoreDep, request_id: RequestIdPath
) -> StoredPrediction:
    """One stored result, with its feedback, by the request id of its answer."""
    key_id = visible_key(caller)
    pending = store.writer.pending(request_id)
    if pending is not None and key_id in (None, pending.key_id):
        return from_record(pending)
    found = await run_query(request, store, lambda s: get_prediction(s, request_id, key_id))
    if found is None:
        raise NotFoundError(f"no stored result with request id {request_id!r}")
    return from_row(*found)


@router.get("/predictions", response_model=PredictionPage, responses=error_responses(401, 422, 503))
async def list_stored(
    request: Request,
    caller: HistoryCallerDep,
    store: StoreDep,
    label: Literal["real", "fake"] | None = None,
    model_version: Annotated[str | None, Query(max_length=100)] = None,
    sha256: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F]{64}$")] = None,
    since: Annotated[datetime | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[datetime | None, Query(description="Before this time.")] = None,
    limit: Annotated[int, Query(ge=1, description=f"At most {MAX_PAGE}; more is capped.")] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PredictionPage:
    """Stored results, newest first, a page at a time: pass `next_cursor` back as `cursor`."""
    position = None
    if cursor is not None:
        try:
            position = Cursor.decode(cursor)
        except ValueError:
            raise InvalidParameterError("cursor: not a cursor this service gave") from None
    filters = PredictionFilter(label, model_version, sha256 and sha256.lower(), since, until)
    page = min(limit, MAX_PAGE)
    key_id = visible_key(caller)
    rows = await run_query(
        request, store, lambda s: list_predictions(s, filters, key_id, page, position)
    )
    next_cursor = None
    if len(rows) == page:
        last = rows[-1][0]
        next_cursor = Cursor(last.created_at, last.id).encode()
    return PredictionPage(items=[from_row(*row) for row in rows], next_cursor=next_cursor)


@router.post(
    "/predictions/{request_id}/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(401, 404, 422, 503),
)
async def post_feedback(
    request: Request,
    caller: HistoryCallerDep,
    store: StoreDep,
    request_id: RequestIdPath,
    body: FeedbackRequest,
) -> FeedbackResponse:
    """Record the ground truth for a stored result. Posting again replaces the earlier
    feedback (`replaced: true`, the revision counts up)."""
    key_id = visible_key(caller)
    if store.writer.pending(request_id) is not None:  # answered a moment ago: let it land
        await asyncio.to_thread(store.writer.flush, PENDING_WAIT_S)

    def record(session: Session) -> tuple[FeedbackRow, bool] | None:
        if get_prediction(session, request_id, key_id) is None:
            return None
        outcome = upsert_feedback(session, request_id, body.label, body.comment, caller.key_id)
        return outcome.feedback, outcome.replaced

    done = await run_query(request, store, record)
    if done is None:
        raise NotFoundError(f"no stored result with request id {request_id!r}")
    feedback, replaced = done
    request.app.state.metrics.feedback.labels(
        label=body.label, replaced=str(replaced).lower()
    ).inc()
    return FeedbackResponse(
        request_id=request_id, replaced=replaced, feedback=feedback_view(feedback)
    )


def utc(moment: datetime) -> datetime:
    """Stored times are naive UTC; answers say so."""
    return moment.replace(tzinfo=UTC)


def feedback_view(row: FeedbackRow) -> FeedbackView:
    return FeedbackView(
        label=row.label,  # type: ignore[arg-type]
        comment=row.comment,
        revision=row.revision,
        previous_label=row.previous_label,  # type: ignore[arg-type]
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def from_row(row: PredictionRow, feedback: FeedbackRow | None) -> StoredPrediction:
    return StoredPrediction(
        request_id=row.request_id,
        created_at=utc(row.created_at),
        key_id=row.key_id,
        kind=row.kind,  # type: ignore[arg-type]
        sha256=row.sha256,
        input_bytes=row.input_bytes,
        media_type=row.media_type,
        model_name=row.model_name,
        model_version=row.model_version,
        fake_prob=row.fake_prob,
        label=row.label,  # type: ignore[arg-type]
        threshold=row.threshold,
        cached=row.cached,
        timings=row.timings,
        frame_scores=row.frame_scores,
        parent_request_id=row.parent_request_id,
        feedback=None if feedback is None else feedback_view(feedback),
    )


def from_record(record: PredictionRecord) -> StoredPrediction:
    """A result still on its way to the database, shown as it will be stored."""
    values = record.to_row()
    values.pop("recorded")
    values["created_at"] = utc(record.created_at)
    return StoredPrediction(**values, feedback=None)


# ---------------------------------------------------------------------------------------------
# For the inference routes: the result cache in front of the model, the store behind it.
@dataclass(frozen=True)
class CacheLookup:
    """The upload's hash, its cache key, and the cached value when it was a hit."""

    sha256: str
    key: str
    value: dict[str, Any] | None

    @property
    def header(self) -> str:
        """The ``X-Cache`` header's value."""
        return "hit" if self.value is not None else "miss"


async def look_up(request: Request, data: bytes, variant: str = "") -> CacheLookup:
    """Hash ``data`` and look it up under the answering version's fingerprint (plus ``variant``:
    anything else that changes the answer, e.g. a video's frame count)."""
    state = request.app.state
    sha256 = await content_sha256(data)
    key = cache_key(sha256, request.state.cache_fingerprint + variant)
    cache: ResultCache | None = state.result_cache
    if cache is None:
        return CacheLookup(sha256, key, None)
    value = await cache.get(key)
    result = "hit" if value is not None else "miss"
    state.metrics.cache_lookups.labels(cache=cache.name, result=result).inc()
    return CacheLookup(sha256, key, value)


def remember(request: Request, lookup: CacheLookup, value: dict[str, Any]) -> None:
    """Cache a fresh answer without making the client wait for the cache."""
    cache: ResultCache | None = request.app.state.result_cache
    if cache is not None and lookup.value is None:
        cache.put_soon(lookup.key, value)


def store_result(
    request: Request,
    lookup: CacheLookup,
    data: bytes | None,
    *,
    kind: str,
    fake_prob: float,
    label: str,
    threshold: float,
    model_name: str,
    model_version: str,
    timings: dict[str, Any],
    frame_scores: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
    parent_request_id: str | None = None,
) -> None:
    """Queue the answer for the store (never waits on the database); no-op when it is off.
    ``data`` is the upload, kept when recording is on."""
    store: ResultStore | None = request.app.state.store
    if store is None:
        return
    caller: Caller | None = getattr(request.state, "caller", None)
    record = PredictionRecord(
        request_id=request_id or request.state.request_id,
        sha256=lookup.sha256,
        input_bytes=len(data) if data is not None else 0,
        media_type=None if data is None else media_type_for(data),
        model_name=model_name,
        model_version=model_version,
        fake_prob=fake_prob,
        label=label,
        threshold=threshold,
        kind=kind,
        key_id=caller.key_id if caller is not None else None,
        cached=lookup.value is not None,
        timings=timings,
        frame_scores=frame_scores,
        parent_request_id=parent_request_id,
    )
    try:
        store.record(record, data)
    except Exception:  # the answer stands even if keeping it failed
        logger.exception("could not hand the result %s to the store", record.request_id)
