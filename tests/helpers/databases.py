"""Throw-away PostgreSQL databases on the machine's server (127.0.0.1:5432, trust auth) and
Redis key prefixes, for tests. Nothing here skips: a missing server is a failure."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_ADMIN_DSN = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def postgres_url(database: str, port: int = POSTGRES_PORT) -> str:
    return f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{port}/{database}"


@contextlib.contextmanager
def postgres_database(prefix: str = "dfd_test") -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"dfd-test:{uuid.uuid4().hex[:12]}:"
