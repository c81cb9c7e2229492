"""``python -m src.keys``: the key printed once, alone on stdout; never listed; audit lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.keys import KeyFile
from src.keys.__main__ import main
from src.serve.auth import KeyRing
from tests.helpers import REPO_ROOT


def test_create_prints_the_key_once_and_the_ring_accepts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    args = [
        "--file",
        str(path),
        "create",
        "--name",
        "team-a",
        "--scopes",
        "infer,history",
        "--rate",
        "5/minute",
        "--quota",
        "100/day",
        "--expires",
        "30d",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert captured.out == key + "\n"
    assert "team-a" in captured.err and key not in captured.err
    audit = [r for r in caplog.records if r.name == "src.audit"]
    assert [r.getMessage().split(":")[0] for r in audit] == ["key created"]
    assert key not in caplog.text

    ring = KeyRing({}, KeyFile(path))
    caller = ring.identify(key)
    assert caller is not None
    assert (caller.name, caller.scopes, caller.rate, caller.quota) == (
        "team-a",
        frozenset({"infer", "history"}),
        "5/minute",
        "100/day",
    )

    assert main(["--file", str(path), "list"]) == 0
    listing = capsys.readouterr().out
    assert "team-a" in listing and caller.key_id in listing and key not in listing
    assert main(["--file", str(path), "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["keys"]
    assert entry["status"] == "active" and "sha256" not in entry

    assert main(["--file", str(path), "revoke", "team-a"]) == 0
    assert "key revoked" in caplog.text
    assert KeyRing({}, KeyFile(path)).identify(key) is None


def test_errors_exit_non_zero_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "keys.json")
    assert main(["--file", path, "create", "--name", "x", "--scopes", "root"]) == 2
    assert "scopes" in capsys.readouterr().err
    assert main(["--file", path, "create", "--name", "x", "--expires", "later"]) == 2
    assert main(["--file", path, "revoke", "nobody"]) == 1
    assert "no unrevoked key" in capsys.readouterr().err


def test_the_module_runs_with_the_file_from_the_environment(tmp_path: Path) -> None:
    env = {"DFD_KEYS_FILE": str(tmp_path / "keys.json"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "src.keys", "create", "--name", "from-env"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert KeyFile(tmp_path / "keys.json").read()[0].name == "from-env"
    missing = subprocess.run(
        [sys.executable, "-m", "src.keys", "list"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
