"""Queries on the store. Every value reaches the database as a bound parameter (SQLAlchemy
expressions only, no SQL built from strings), so SQL metacharacters in a filter are just text.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Select, Table, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from src.store.models import FeedbackRow, PredictionRow

MAX_PAGE = 100


def utcnow() -> datetime:
    """Now in UTC, naive: how every timestamp is stored, on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc_naive(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


@dataclass
class PredictionRecord:
    """A result on its way to the store (queue, spool, then a row)."""

    request_id: str
    sha256: str
    input_bytes: int
    model_name: str
    model_version: str
    fake_prob: float
    label: str
    threshold: float
    kind: str = "image"
    key_id: str | None = None
    media_type: str | None = None
    cached: bool = False
    recorded: bool = False
    timings: dict[str, Any] = field(default_factory=dict)
    frame_scores: list[dict[str, Any]] | None = None
    parent_request_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def to_row(self) -> dict[str, Any]:
        """The columns' values. Shallow (``asdict`` deep-copies ``timings`` and the frame
        scores, a quarter of the writer's CPU per row): the row only lives until its insert."""
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["created_at"] = self.created_at.isoformat()
        return row

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictionRecord:
        values = dict(data)
        values["created_at"] = datetime.fromisoformat(values["created_at"])
        return cls(**values)


_RECORD_FIELDS = tuple(item.name for item in fields(PredictionRecord))


def insert_predictions(session: Session, records: Sequence[PredictionRecord]) -> int:
    """Insert ``records``, skipping request ids already stored; returns the rows inserted.

    Idempotent, so a batch spooled after a failure whose commit did in fact land, or a replay
    done twice, never stores a result twice."""
    if not records:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    if dialect not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"no idempotent insert for {dialect}")
    # On the table (Core), not the mapped class: the ORM's bulk-insert path costs several times
    # the statement itself, on a thread that shares the CPU with the requests.
    table = cast(Table, PredictionRow.__table__)
    # One statement for every batch, compiled once (cached), its rows sent as executemany.
    statement = insert(table).on_conflict_do_nothing(index_elements=["request_id"])
    rows = [record.to_row() for record in records]
    if dialect == "sqlite":
        # sqlite3's executemany counts the rows each statement changed (0 for a conflict):
        # half the CPU of RETURNING, which SQLAlchemy turns into one multi-row VALUES.
        return int(session.connection().execute(statement, rows).rowcount)
    returning = statement.returning(table.c.id)
    return len(session.connection().execute(returning, rows).all())


# ------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's (created_at, id). Opaque to clients (base64 JSON)."""

    created_at: datetime
    id: int

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor in ``text``; ValueError when it is not one this service wrote."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            moment, row_id = json.loads(raw)
            if not isinstance(row_id, int) or isinstance(row_id, bool) or row_id < 0:
                raise ValueError("bad id")
            return cls(datetime.fromisoformat(moment), row_id)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("malformed cursor") from exc


@dataclass(frozen=True)
class PredictionFilter:
    label: str | None = None
    model_version: str | None = None
    sha256: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _with_feedback() -> Select[PredictionRow, FeedbackRow]:
    return select(PredictionRow, FeedbackRow).outerjoin(
        FeedbackRow, FeedbackRow.request_id == PredictionRow.request_id
    )


def get_prediction(
    session: Session, request_id: str, key_id: str | None
) -> tuple[PredictionRow, FeedbackRow | None] | None:
    """The stored result, or None if absent or (``key_id`` given) someone else's."""
    query = _with_feedback().where(PredictionRow.request_id == request_id)
    if key_id is not None:
        query = query.where(PredictionRow.key_id == key_id)
    row = session.execute(query).first()
    return (row[0], row[1]) if row is not None else None


def list_predictions(
    session: Session,
    filters: PredictionFilter,
    key_id: str | None,
    limit: int,
    cursor: Cursor | None = None,
) -> list[tuple[PredictionRow, FeedbackRow | None]]:
    """Newest first, keyset-paginated on (created_at, id): a page costs the same wherever it
    starts, and rows arriving meanwhile neither repeat nor shift later pages."""
    query = _with_feedback()
    conditions = []
    if key_id is not None:
        conditions.append(PredictionRow.key_id == key_id)
    if filters.label is not None:
        conditions.append(PredictionRow.label == filters.label)
    if filters.model_version is not None:
        conditions.append(PredictionRow.model_version == filters.model_version)
    if filters.sha256 is not None:
        conditions.append(PredictionRow.sha256 == filters.sha256)
    if filters.since is not None:
        conditions.append(PredictionRow.created_at >= as_utc_naive(filters.since))
    if filters.until is not None:
        conditions.append(PredictionRow.created_at < as_utc_naive(filters.until))
    if cursor is not None:
        moment = as_utc_naive(cursor.created_at)
        conditions.append(
            or_(
                PredictionRow.created_at < moment,
                and_(PredictionRow.created_at == moment, PredictionRow.id < cursor.id),
            )
        )
    query = query.where(*conditions).order_by(
        PredictionRow.created_at.desc(), PredictionRow.id.desc()
    )
    rows = session.execute(query.limit(min(limit, MAX_PAGE))).all()
    return [(row[0], row[1]) for row in rows]


# ------------------------------------------------------------------------ feedback
@dataclass(frozen=True)
class FeedbackOutcome:
    feedback: FeedbackRow
    replaced: bool


def upsert_feedback(
    session: Session, request_id: str, label: str, comment: str | None, key_id: str | None
) -> FeedbackOutcome:
    """Record the ground truth; a second post replaces the first and counts a revision."""
    now = utcnow()
    existing = session.execute(
        select(FeedbackRow).where(FeedbackRow.request_id == request_id).with_for_update()
    ).scalar_one_or_none()
    if existing is None:
        row = FeedbackRow(
            request_id=request_id,
            label=label,
            comment=comment,
            key_id=key_id,
            created_at=now,
            updated_at=now,
            revision=1,
        )
        try:
            with session.begin_nested():
                session.add(row)
            return FeedbackOutcome(row, replaced=False)
        except IntegrityError:  # another post won the race: replace it
            existing = session.execute(
                select(FeedbackRow).where(FeedbackRow.request_id == request_id)
            ).scalar_one()
    existing.previous_label = existing.label
    existing.label = label
    existing.comment = comment
    existing.key_id = key_id
    existing.updated_at = now
    existing.revision += 1
    return FeedbackOutcome(existing, replaced=True)


def feedback_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(FeedbackRow.label, func.count()).group_by(FeedbackRow.label))
    return {label: int(count) for label, count in rows}


def labelled_inputs(session: Session) -> Iterable[tuple[str, str, str | None]]:
    """(sha256, ground-truth label, media type) of every recorded input that has feedback; an
    input with several predictions takes its newest feedback."""
    query = (
        select(PredictionRow.sha256, FeedbackRow.label, PredictionRow.media_type)
        .join(FeedbackRow, FeedbackRow.request_id == PredictionRow.request_id)
        .where(PredictionRow.recorded.is_(True))
        .order_by(FeedbackRow.updated_at.asc())
    )
    latest: dict[str, tuple[str, str | None]] = {}
    for sha256, label, media_type in session.execute(query):
        latest[sha256] = (label, media_type)
    return [(sha256, label, media_type) for sha256, (label, media_type) in latest.items()]


# ------------------------------------------------------------------------ retention
def purge_before(session: Session, cutoff: datetime) -> tuple[int, set[str]]:
    """Delete results (and their feedback) older than ``cutoff``; returns how many, and the
    content hashes no remaining result refers to (their recordings can go)."""
    old = select(PredictionRow.request_id).where(PredictionRow.created_at < cutoff)
    hashes = set(
        session.scalars(
            select(PredictionRow.sha256).where(PredictionRow.created_at < cutoff).distinct()
        )
    )
    session.execute(delete(FeedbackRow).where(FeedbackRow.request_id.in_(old)))
    result = session.execute(delete(PredictionRow).where(PredictionRow.created_at < cutoff))
    still_used = (
        set(
            session.scalars(
                select(PredictionRow.sha256).where(PredictionRow.sha256.in_(hashes)).distinct()
            )
        )
        if hashes
        else set()
    )
    return int(getattr(result, "rowcount", 0) or 0), hashes - still_used
