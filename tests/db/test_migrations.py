"""`db upgrade` builds exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from mailgateway.config import DatabaseSettings
from mailgateway.db.migrate import upgrade
from mailgateway.db.models import Base
from mailgateway.db.session import create_db_engine


def test_migrations_match_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=database_url))
    upgrade(engine)
    upgrade(engine)
    engine.dispose()
