"""The writer lingers once per batch: records that arrive during the linger share one commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from src.store import migrate, writer
from src.store.db import make_engine, session_factory
from src.store.models import PredictionRow
from src.store.repository import PredictionRecord
from src.store.spool import Spool
from tests.unit.store.helpers import record


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def new_writer(engine: Engine, tmp_path: Path) -> writer.ResultWriter:
    return writer.ResultWriter(session_factory(engine), Spool(tmp_path / "s.jsonl", 1 << 20))


def stored(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)) or 0)


def test_records_arriving_during_the_linger_are_one_batch(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LINGER_S", 1.0)
    result_writer = new_writer(sqlite_engine, tmp_path)
    batches: list[int] = []
    original = result_writer._insert

    def counting(batch: list[PredictionRecord]) -> int:
        batches.append(len(batch))
        return original(batch)

    monkeypatch.setattr(result_writer, "_insert", counting)
    result_writer.start()
    try:
        for index in range(5):
            result_writer.submit(record(f"r{index}"))
            time.sleep(0.02)
        assert result_writer.flush(5)
    finally:
        result_writer.stop()
    assert batches == [5]
    assert stored(sqlite_engine) == 5


def test_the_stop_ends_the_linger_and_writes_what_is_queued(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LINGER_S", 30.0)
    result_writer = new_writer(sqlite_engine, tmp_path)
    result_writer.start()
    result_writer.submit(record("only"))
    time.sleep(0.1)  # the thread is now lingering
    started = time.monotonic()
    result_writer.stop()
    assert time.monotonic() - started < 5
    assert stored(sqlite_engine) == 1
