"""The background writer: batches, idempotence, the spool while the database fails, replay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from src.store.models import PredictionRow
from src.store.spool import Spool
from src.store.writer import ResultWriter
from tests.unit.store.helpers import record


class Events:
    def __init__(self) -> None:
        self.written = self.failures = self.spooled = self.dropped = 0
        self.depths: list[int] = []
        self.spool_bytes = 0

    def store_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def store_rows_written(self, rows: int) -> None:
        self.written += rows

    def store_write_failed(self) -> None:
        self.failures += 1

    def store_rows_spooled(self, rows: int) -> None:
        self.spooled += rows

    def store_rows_dropped(self, rows: int) -> None:
        self.dropped += rows

    def store_spool_bytes(self, size: int) -> None:
        self.spool_bytes = size


def stored_ids(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(PredictionRow.request_id)))


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def writer(
    sessions: sessionmaker[Session], tmp_path: Path, events: Events
) -> Iterator[ResultWriter]:
    spool = Spool(tmp_path / "spool" / "results.jsonl", max_bytes=1 << 20)
    writer = ResultWriter(sessions, spool, events, queue_size=50, batch_size=8, retry_s=0.2)
    writer.start()
    yield writer
    writer.stop()


def take_table_away(engine: Engine) -> None:
    """A database failure the writer cannot tell from an outage: the table is not there."""
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE predictions RENAME TO predictions_away"))


def give_table_back(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE predictions_away RENAME TO predictions"))


def test_results_reach_the_database_in_batches(
    writer: ResultWriter, sessions: sessionmaker[Session], events: Events
) -> None:
    records = [record(f"r{i}") for i in range(30)]
    for item in records:
        writer.submit(item)
    assert writer.flush()
    assert sorted(stored_ids(sessions)) == sorted(r.request_id for r in records)
    assert events.written == 30
    assert events.failures == events.spooled == 0
    assert writer.pending("r0") is None


def test_a_submitted_result_is_visible_as_pending_until_written(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    writer = ResultWriter(sessions, Spool(tmp_path / "s.jsonl", 1 << 20))  # not started
    writer.submit(record("waiting"))
    pending = writer.pending("waiting")
    assert pending is not None and pending.request_id == "waiting"
    writer.start()
    assert writer.flush()
    assert writer.pending("waiting") is None
    writer.stop()
    assert stored_ids(sessions) == ["waiting"]


def test_failed_writes_go_to_the_spool_and_are_replayed_exactly_once(
    writer: ResultWriter, engine: Engine, sessions: sessionmaker[Session], events: Events
) -> None:
    writer.submit(record("before"))
    assert writer.flush()
    take_table_away(engine)
    during = [record(f"during-{i}") for i in range(20)]
    for item in during:
        writer.submit(item)
    assert writer.flush()
    assert events.failures >= 1
    assert events.spooled == 20
    assert not writer.database_up
    assert writer.spool.has_rows()
    give_table_back(engine)
    wait_for(lambda: not writer.spool.has_rows() and events.spool_bytes == 0)
    ids = stored_ids(sessions)
    assert sorted(ids) == sorted(["before", *(r.request_id for r in during)])
    assert writer.database_up


def test_a_full_spool_drops_loudly_and_keeps_going(
    sessions: sessionmaker[Session],
    engine: Engine,
    tmp_path: Path,
    events: Events,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = Spool(tmp_path / "tiny.jsonl", max_bytes=2048)
    writer = ResultWriter(sessions, spool, events, batch_size=4, retry_s=60)
    writer.start()
    take_table_away(engine)
    try:
        for i in range(40):
            writer.submit(record(f"x{i}"))
        assert writer.flush()
    finally:
        writer.stop()
    assert events.spooled > 0
    assert events.dropped > 0
    assert events.spooled + events.dropped == 40
    assert spool.size_bytes <= 2048
    assert "spool is full" in caplog.text


def test_what_is_queued_at_stop_is_spooled_not_lost(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "s.jsonl", 1 << 20)
    writer = ResultWriter(sessions, spool)  # never started: everything is still queued
    for i in range(3):
        writer.submit(record(f"q{i}"))
    writer.stop()
    lines = spool.path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["q0", "q1", "q2"]
    # The next process replays it.
    again = ResultWriter(sessions, spool, retry_s=0.1)
    again.start()
    try:
        wait_for(lambda: sorted(stored_ids(sessions)) == ["q0", "q1", "q2"])
    finally:
        again.stop()


def test_a_torn_last_spool_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", 1 << 20)
    spool.append([record("whole").to_json()])
    with spool.path.open("a") as handle:
        handle.write('{"request_id": "torn", "sha')
    assert spool.begin_replay()
    rows = [row for batch in spool.replay_batches(10) for row in batch]
    assert [row["request_id"] for row in rows] == ["whole"]
    spool.finish_replay()
    assert not spool.has_rows()
