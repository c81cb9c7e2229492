"""Queries: idempotent inserts, filters, keyset pages, feedback, retention, bound parameters."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from src.store.models import FeedbackRow, PredictionRow
from src.store.repository import (
    MAX_PAGE,
    Cursor,
    PredictionFilter,
    get_prediction,
    insert_predictions,
    labelled_inputs,
    list_predictions,
    purge_before,
    upsert_feedback,
    utcnow,
)
from tests.unit.store.helpers import minutes_ago, record


def count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)) or 0)


def test_insert_is_idempotent_on_the_request_id(sessions: sessionmaker[Session]) -> None:
    first = [record("a"), record("b")]
    with sessions.begin() as session:
        assert insert_predictions(session, first) == 2
    with sessions.begin() as session:  # a replay of a batch that had landed, plus one new row
        assert insert_predictions(session, [record("a"), record("c")]) == 1
    assert count(sessions) == 3


def test_frame_scores_and_timings_round_trip(sessions: sessionmaker[Session]) -> None:
    frames = [{"index": 0, "time_s": 0.0, "fake_prob": 0.25}, {"index": 9, "fake_prob": None}]
    with sessions.begin() as session:
        insert_predictions(session, [record("v", kind="video", frame_scores=frames)])
    with sessions() as session:
        found = get_prediction(session, "v", None)
    assert found is not None
    row, feedback = found
    assert (row.kind, row.frame_scores, row.timings, feedback) == (
        "video",
        frames,
        {"total_ms": 1.0},
        None,
    )


def test_a_key_sees_only_its_own_results(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        insert_predictions(session, [record("mine", key_id="a"), record("theirs", key_id="b")])
    with sessions() as session:
        assert get_prediction(session, "theirs", "a") is None
        assert get_prediction(session, "theirs", None) is not None  # an admin sees all
        assert [
            r.request_id for r, _ in list_predictions(session, PredictionFilter(), "a", 10)
        ] == ["mine"]


def test_filters(sessions: sessionmaker[Session]) -> None:
    rows = [
        record("old-fake", label="fake", created_at=minutes_ago(60), content=b"one"),
        record("new-real", label="real", created_at=minutes_ago(1), content=b"two"),
        record("v2", label="fake", model_version="2.0.0", created_at=minutes_ago(2)),
    ]
    with sessions.begin() as session:
        insert_predictions(session, rows)

    def ids(**filters: object) -> list[str]:
        with sessions() as session:
            found = list_predictions(session, PredictionFilter(**filters), None, 10)  # type: ignore[arg-type]
        return [row.request_id for row, _ in found]

    assert ids() == ["new-real", "v2", "old-fake"]
    assert ids(label="fake") == ["v2", "old-fake"]
    assert ids(model_version="2.0.0") == ["v2"]
    assert ids(sha256=rows[0].sha256) == ["old-fake"]
    assert ids(since=minutes_ago(30)) == ["new-real", "v2"]
    assert ids(until=minutes_ago(30)) == ["old-fake"]


def test_keyset_pages_cover_everything_once_even_with_equal_times(
    sessions: sessionmaker[Session],
) -> None:
    moment = utcnow()
    rows = [
        record(f"r{i:02d}", created_at=moment if i % 2 else moment - timedelta(seconds=i))
        for i in range(25)
    ]
    with sessions.begin() as session:
        insert_predictions(session, rows)
    seen: list[str] = []
    cursor = None
    while True:
        with sessions() as session:
            page = list_predictions(session, PredictionFilter(), None, 7, cursor)
        seen += [row.request_id for row, _ in page]
        if len(page) < 7:
            break
        last = page[-1][0]
        cursor = Cursor.decode(Cursor(last.created_at, last.id).encode())
    assert sorted(seen) == sorted(r.request_id for r in rows)
    assert len(seen) == len(set(seen))


def test_a_huge_limit_is_capped(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        insert_predictions(session, [record() for _ in range(MAX_PAGE + 5)])
    with sessions() as session:
        assert len(list_predictions(session, PredictionFilter(), None, 10**9)) == MAX_PAGE


@pytest.mark.parametrize(
    "text", ["", "zz", "bm90IGpzb24", "WzEsMl0", "WyJ4IiwgMV0", "WyIyMDI2LTAxLTAxIiwgLTFd"]
)
def test_malformed_cursors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="malformed cursor"):
        Cursor.decode(text)


def test_sql_metacharacters_are_just_text(sessions: sessionmaker[Session]) -> None:
    evil = "x' OR '1'='1'; DROP TABLE predictions; --"
    with sessions.begin() as session:
        insert_predictions(session, [record("plain"), record(evil[:64], model_version=evil[:100])])
    with sessions() as session:
        assert get_prediction(session, "' OR '1'='1", None) is None
        found = list_predictions(session, PredictionFilter(model_version=evil[:100]), None, 10)
        assert [row.request_id for row, _ in found] == [evil[:64]]
        assert list_predictions(session, PredictionFilter(label="' OR 1=1 --"), None, 10) == []
    assert count(sessions) == 2


def test_feedback_twice_replaces_and_counts_the_revision(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        insert_predictions(session, [record("p", label="fake")])
    with sessions.begin() as session:
        first = upsert_feedback(session, "p", "real", "looked again", "key-a")
        assert (first.replaced, first.feedback.revision) == (False, 1)
    with sessions.begin() as session:
        second = upsert_feedback(session, "p", "fake", None, "key-a")
        assert second.replaced
        assert (second.feedback.revision, second.feedback.previous_label) == (2, "real")
    with sessions() as session:
        found = get_prediction(session, "p", "key-a")
        assert found is not None and found[1] is not None
        assert (found[1].label, found[1].comment) == ("fake", None)
        assert session.scalar(select(func.count()).select_from(FeedbackRow)) == 1


def test_labelled_inputs_are_recorded_ones_with_their_newest_feedback(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        insert_predictions(
            session,
            [
                record("a1", content=b"A", recorded=True),
                record("a2", content=b"A", recorded=True),
                record("b", content=b"B", recorded=False),
            ],
        )
    for request_id, label in (("a1", "real"), ("a2", "fake"), ("b", "real")):
        with sessions.begin() as session:
            upsert_feedback(session, request_id, label, None, None)
    with sessions() as session:
        assert [(label, sha[:8]) for sha, label, _ in labelled_inputs(session)] == [
            ("fake", record(content=b"A").sha256[:8])
        ]


def test_purge_deletes_old_results_with_their_feedback(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        insert_predictions(
            session,
            [
                record("old", created_at=minutes_ago(3 * 24 * 60), content=b"gone"),
                record("old-shared", created_at=minutes_ago(3 * 24 * 60), content=b"kept"),
                record("new", content=b"kept"),
            ],
        )
        session.flush()
        upsert_feedback(session, "old", "real", None, None)
    with sessions.begin() as session:
        deleted, unused = purge_before(session, utcnow() - timedelta(days=1))
    assert deleted == 2
    assert unused == {record(content=b"gone").sha256}  # "kept" is still used by "new"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackRow)) == 0
    assert count(sessions) == 1
