"""The store's tables. Alembic's migrations (``migrations/versions``) create exactly these; a
test compares the migrated schema with this metadata on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Constraint names fixed by convention, so migrations name the same things on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
REQUEST_ID_LENGTH = 64
KEY_ID_LENGTH = 64
# SQLite has no BIGINT autoincrement; an INTEGER primary key is its rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PredictionRow(Base):
    """One answer the service gave: what was asked, by whom, which model said what."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # UTC, naive on every database
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(16))  # image | video | batch-item
    sha256: Mapped[str] = mapped_column(String(64))
    input_bytes: Mapped[int] = mapped_column(BigInteger())
    media_type: Mapped[str | None] = mapped_column(String(100))
    model_name: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[str] = mapped_column(String(100))
    fake_prob: Mapped[float] = mapped_column(Float())
    label: Mapped[str] = mapped_column(String(8))
    threshold: Mapped[float] = mapped_column(Float())
    cached: Mapped[bool] = mapped_column(Boolean(), default=False)
    recorded: Mapped[bool] = mapped_column(Boolean(), default=False)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON())
    frame_scores: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    parent_request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH))

    __table_args__ = (
        Index("ix_predictions_created_at_id", "created_at", "id"),
        Index("ix_predictions_key_id_created_at", "key_id", "created_at"),
        Index("ix_predictions_sha256", "sha256"),
        Index("ix_predictions_model_version", "model_version"),
    )


class FeedbackRow(Base):
    """The ground truth for one prediction. Posting again replaces it and counts a revision."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        String(REQUEST_ID_LENGTH),
        ForeignKey("predictions.request_id", ondelete="CASCADE"),
        unique=True,
    )
    label: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str | None] = mapped_column(Text())
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())
    revision: Mapped[int] = mapped_column(Integer(), default=1)
    previous_label: Mapped[str | None] = mapped_column(String(8))


class JobRow(Base):
    """An asynchronous job: its input waits on disk until the job ends."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_LENGTH))
    input_path: Mapped[str] = mapped_column(Text())
    params: Mapped[dict[str, Any]] = mapped_column(JSON())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text())
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    owner: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime())

    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)


class RoutingRow(Base):
    """A model's traffic weights, shadow and rollback history (``src/engine/registry.Routing``),
    shared by every replica: each polls ``revision`` and applies a newer setting."""

    __tablename__ = "model_routing"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer())
    routing: Mapped[dict[str, Any]] = mapped_column(JSON())
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class ShadowRow(Base):
    """One request scored by the answering version and, aside, by the shadow version."""

    __tablename__ = "shadow_scores"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH))
    model: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(100))
    fake_prob: Mapped[float] = mapped_column(Float())
    shadow_version: Mapped[str] = mapped_column(String(100))
    shadow_fake_prob: Mapped[float] = mapped_column(Float())
    threshold: Mapped[float] = mapped_column(Float())
    created_at: Mapped[datetime] = mapped_column(DateTime())

    __table_args__ = (
        Index("ix_shadow_scores_pair", "model", "version", "shadow_version", "created_at"),
    )
