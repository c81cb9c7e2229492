"""Migrations from an empty database give exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from src.core.errors import ConfigurationError
from src.core.settings import Settings
from src.store import migrate
from src.store.db import make_engine
from src.store.models import Base
from src.store.results import prepare_schema
from tests.helpers import REPO_ROOT


def test_migrations_build_the_models_schema_from_empty(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert migrate.current(engine) is None
        migrate.upgrade(engine)
        assert migrate.current(engine) == migrate.head()
        assert {"predictions", "feedback", "jobs"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_downgrade_empties(engine: Engine) -> None:
    migrate.upgrade(engine)  # a second start migrates nothing
    assert migrate.current(engine) == migrate.head()
    migrate.downgrade(engine, "base")
    assert not {"predictions", "feedback", "jobs"} & set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()


def test_production_refuses_an_older_schema_and_development_migrates(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    engine = make_engine(url)
    try:
        production = settings_factory(env="production", database_url=url)
        with pytest.raises(ConfigurationError, match=r"python -m src\.store migrate"):
            prepare_schema(engine, production)
        prepare_schema(engine, settings_factory(env="development", database_url=url))
        assert migrate.current(engine) == migrate.head()
        prepare_schema(engine, production)  # now current: starts
    finally:
        engine.dispose()


MIGRATE_ON_SIGNAL = """
import sys, time
from pathlib import Path
from src.store import migrate
from src.store.db import make_engine
engine = make_engine(sys.argv[1])
while not Path(sys.argv[2]).exists():  # every process is loaded: start together
    time.sleep(0.005)
migrate.upgrade(engine)
"""


def test_processes_sharing_an_sqlite_file_migrate_one_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    go = tmp_path / "go"
    command = [sys.executable, "-c", MIGRATE_ON_SIGNAL, url, str(go)]
    starts = [
        subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    time.sleep(2.0)
    go.touch()
    failures = [p.stderr.read() for p in starts if p.wait(timeout=60) != 0]  # type: ignore[union-attr]
    assert failures == []
    engine = make_engine(url)
    assert migrate.current(engine) == migrate.head()
    engine.dispose()
