"""Records to store in the tests."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Any

from src.store.repository import PredictionRecord, utcnow


def record(
    request_id: str | None = None,
    *,
    key_id: str | None = "key-a",
    label: str = "fake",
    model_version: str = "1.0.0",
    created_at: datetime | None = None,
    content: bytes = b"bytes",
    **extra: Any,
) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id or uuid.uuid4().hex,
        sha256=hashlib.sha256(content).hexdigest(),
        input_bytes=len(content),
        model_name="efficientnet_lite0",
        model_version=model_version,
        fake_prob=0.9 if label == "fake" else 0.1,
        label=label,
        threshold=0.5,
        key_id=key_id,
        timings={"total_ms": 1.0},
        created_at=created_at or utcnow(),
        **extra,
    )


def minutes_ago(minutes: float) -> datetime:
    return utcnow() - timedelta(minutes=minutes)
