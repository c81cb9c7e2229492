"""Recording inputs, retention, and ``python -m src.store migrate|export|purge``: the loop from
production back to training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from src.store import migrate
from src.store.__main__ import main
from src.store.db import make_engine
from src.store.recording import Recorder, extension_for, parse_mode
from src.store.repository import insert_predictions, upsert_feedback
from src.train.dataset import scan_class_folders
from tests.helpers.images import image_bytes
from tests.unit.store.helpers import minutes_ago, record


@pytest.mark.parametrize(
    ("text", "fraction"), [("off", 0.0), ("all", 1.0), ("sample:0.05", 0.05), ("SAMPLE:.5", 0.5)]
)
def test_record_modes(text: str, fraction: float) -> None:
    assert parse_mode(text) == fraction


@pytest.mark.parametrize("text", ["some", "sample:", "sample:1.5", "sample:-0.1", "sample:abc"])
def test_bad_record_modes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected off, all or sample"):
        parse_mode(text)


def test_sampling_keeps_about_the_fraction(tmp_path: Path) -> None:
    draws = iter([0.01, 0.5, 0.04, 0.9, 0.2])
    recorder = Recorder("sample:0.05", tmp_path, chance=lambda: next(draws))
    assert [recorder.wants() for _ in range(5)] == [True, False, True, False, False]
    assert not Recorder("off", tmp_path).wants()


def test_inputs_are_kept_once_under_their_hash(tmp_path: Path) -> None:
    recorder = Recorder("all", tmp_path)
    data = image_bytes()
    sha = hashlib.sha256(data).hexdigest()
    path = recorder.keep(data, sha)
    assert path == tmp_path / sha[:2] / f"{sha}.jpg"
    assert path.read_bytes() == data
    assert recorder.keep(data, sha) == path
    assert recorder.find(sha) == path
    assert recorder.find("../../etc/passwd") is None
    assert recorder.remove(sha) and recorder.find(sha) is None
    assert extension_for(b"\x00\x00\x00\x18ftypisom") == ".mp4"


def test_export_with_feedback_writes_a_folder_the_trainer_reads(
    sessions: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    recorder = Recorder("all", tmp_path / "rec")
    images = {name: image_bytes(seed=i) for i, name in enumerate(["a", "b", "c"])}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in images.items()}
    for name in ("a", "b"):
        recorder.keep(images[name], hashes[name])
    with sessions.begin() as session:
        insert_predictions(
            session,
            [
                record("ra", content=images["a"], recorded=True),
                record("rb", content=images["b"], recorded=True),
                record("rc", content=images["c"], recorded=False),  # not recorded: not exported
            ],
        )
    for request_id, label in (("ra", "fake"), ("rb", "real"), ("rc", "real")):
        with sessions.begin() as session:
            upsert_feedback(session, request_id, label, None, None)
    out = tmp_path / "out"
    argv = ["--database-url", database_url, "export", "--with-feedback", "--out", str(out)]
    assert main([*argv, "--record-dir", str(tmp_path / "rec")]) == 0
    assert (out / "fake" / f"{hashes['a']}.jpg").read_bytes() == images["a"]
    assert (out / "real" / f"{hashes['b']}.jpg").read_bytes() == images["b"]
    samples = scan_class_folders(out)  # what `python -m src.train --data-dir out` reads
    assert sorted((s.path.parent.name, s.label) for s in samples) == [("fake", 1), ("real", 0)]


def test_purge_removes_old_results_and_their_recordings(
    sessions: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    recorder = Recorder("all", tmp_path / "rec")
    old = record("old", content=b"\xff\xd8\xffold", created_at=minutes_ago(10 * 24 * 60))
    new = record("new", content=b"\xff\xd8\xffnew")
    recorder.keep(b"\xff\xd8\xffold", old.sha256)
    recorder.keep(b"\xff\xd8\xffnew", new.sha256)
    with sessions.begin() as session:
        insert_predictions(session, [old, new])
    argv = ["--database-url", database_url, "purge", "--days", "7"]
    assert main([*argv, "--record-dir", str(tmp_path / "rec")]) == 0
    assert recorder.find(old.sha256) is None
    assert recorder.find(new.sha256) is not None


def test_migrate_command_builds_an_empty_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    assert main(["--database-url", url, "migrate"]) == 0
    assert migrate.head() in capsys.readouterr().out
    engine = make_engine(url)
    assert migrate.current(engine) == migrate.head()
    engine.dispose()


def test_an_unreachable_database_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    assert main(["--database-url", url, "migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: OperationalError") and "Traceback" not in err
