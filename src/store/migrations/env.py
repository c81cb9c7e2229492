"""Alembic's environment, run programmatically by ``src.store.migrate`` (no alembic.ini).

The caller hands over an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from src.store.models import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
