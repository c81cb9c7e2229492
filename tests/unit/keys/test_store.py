"""The key file: keys stored hashed only, written atomically, changed safely by concurrent runs."""

from __future__ import annotations

import json
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from src.keys import KeyFile, KeyRecordError, KeyStoreError, key_digest, parse_expiry
from src.keys.records import KEY_PREFIX


def test_a_created_key_is_stored_as_its_digest_only(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    key, record = store.create("ci-bot", ["infer", "history"], rate="10/minute")
    text = (tmp_path / "keys.json").read_text()
    assert key.startswith(KEY_PREFIX) and len(key) >= 40
    assert key not in text
    assert key_digest(key).hex() in text
    assert record.key_id == key_digest(key).hex()[:16]
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    [read] = store.read()
    assert read == record
    assert read.scopes == ("infer", "history") and read.rate == "10/minute"
    assert read.status() == "active"


def test_two_keys_are_never_the_same(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    first, _ = store.create("a", ["infer"])
    second, _ = store.create("b", ["infer"])
    assert first != second


def test_revoking_keeps_the_record_and_frees_the_name(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    store.create("ci", ["infer"])
    with pytest.raises(KeyStoreError, match="active key named 'ci'"):
        store.create("ci", ["infer"])
    [revoked] = store.revoke("ci")
    assert revoked.status() == "revoked"
    with pytest.raises(KeyStoreError, match="no unrevoked key"):
        store.revoke("ci")
    store.create("ci", ["infer"])
    assert [r.status() for r in store.read()] == ["revoked", "active"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name", "scopes": ["infer"]}, "key name"),
        ({"name": "other", "scopes": ["infer"]}, "reserved"),
        ({"name": "env-1", "scopes": ["infer"]}, "reserved"),
        ({"name": "ok", "scopes": ["infer", "root"]}, "scopes"),
        ({"name": "ok", "scopes": []}, "scopes"),
        ({"name": "ok", "scopes": ["infer"], "rate": "ten per minute"}, "no limit like"),
        ({"name": "ok", "scopes": ["infer"], "quota": "5/fortnight"}, "no limit like"),
    ],
)
def test_bad_fields_are_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    store = KeyFile(tmp_path / "keys.json")
    with pytest.raises(KeyRecordError, match=message):
        store.create(**kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "keys.json").exists()


def test_expiry_durations_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_expiry("90d", now) == now + timedelta(days=90)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    with pytest.raises(KeyRecordError, match="duration"):
        parse_expiry("soon", now)


def test_a_key_past_its_expiry_is_expired(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    _, record = store.create("short", ["infer"], expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert record.status() == "active"
    assert record.status(datetime.now(UTC) + timedelta(hours=2)) == "expired"
    with pytest.raises(KeyRecordError, match="past"):
        store.create("late", ["infer"], expires_at=datetime.now(UTC) - timedelta(seconds=1))


def test_concurrent_changes_are_not_lost_and_leave_no_temporary_files(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    errors: list[BaseException] = []

    def create(index: int) -> None:
        try:
            KeyFile(tmp_path / "keys.json").create(f"k{index}", ["infer"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(r.name for r in store.read()) == sorted(f"k{i}" for i in range(12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"keys": []}', "dfd-keys/1"),
        ('{"format": "dfd-keys/1", "keys": [{"name": "x"}]}', "key record 'x'"),
        (
            '{"format": "dfd-keys/1", "keys": [{"name": "x", "sha256": "0", "scopes": ["infer"]}]}',
            "64 hex",
        ),
    ],
)
def test_a_damaged_file_is_refused_with_a_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "keys.json").write_text(content)
    with pytest.raises(KeyStoreError, match=message):
        KeyFile(tmp_path / "keys.json").read()


def test_a_missing_file_holds_no_keys(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "absent.json")
    assert store.read() == []
    assert store.stamp() is None


def test_the_file_is_plain_json_with_a_format_marker(tmp_path: Path) -> None:
    store = KeyFile(tmp_path / "keys.json")
    store.create("doc", ["admin"], quota="1000/day")
    document = json.loads((tmp_path / "keys.json").read_text())
    assert document["format"] == "dfd-keys/1"
    assert set(document["keys"][0]) == {
        "name",
        "key_id",
        "sha256",
        "scopes",
        "rate",
        "quota",
        "created_at",
        "expires_at",
        "revoked_at",
    }
