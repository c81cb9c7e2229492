"""``bench.writer`` measures the real writer: every row lands, and its thread's CPU is read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench import writer as writer_bench
from src.store import writer


def test_one_run_stores_every_row_and_reads_the_writer_threads_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "LINGER_S", writer.LINGER_S)  # one_run sets it; put it back
    per_row_ms = writer_bench.one_run(tmp_path, linger_s=0.01, rows=40, rate=2000)
    assert per_row_ms > 0
    with sqlite3.connect(tmp_path / "store.db") as connection:
        assert connection.execute("SELECT count(*) FROM predictions").fetchone()[0] == 40
