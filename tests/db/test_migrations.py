"""`db upgrade` builds exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, insert, select, text, update

from mailgateway.config import DatabaseSettings
from mailgateway.db.migrate import alembic_config, upgrade
from mailgateway.db.models import Base, OutboxMail, described_by_models
from mailgateway.db.session import create_db_engine


def test_migrations_match_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(
            connection, opts={"include_object": described_by_models}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=database_url))
    upgrade(engine)
    upgrade(engine)
    engine.dispose()


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_going_back_before_queued_intents_never_drops_a_mail(database_url: str) -> None:
    """Schema 0001 has no place for a mail not rendered yet: going back is refused while
    one waits, and allowed once every row holds its bytes."""
    engine = create_db_engine(DatabaseSettings(url=database_url))
    now = datetime.now(UTC)
    row = {"created_at": now, "kind": "answer", "ticket_id": None, "automatic": False,
           "mail_from": "assistenza@example.com", "recipients": ["cliente@studiorossi.it"],
           "message_id": "mg.waiting@example.com", "intent": {"kind": "answer"}, "raw": None,
           "status": "pending", "attempts": 0, "next_attempt_at": now}
    try:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(insert(OutboxMail), row)
        with pytest.raises(RuntimeError, match="not sent yet"):
            _downgrade(engine, "0001")
        with engine.begin() as connection:
            assert connection.scalar(select(func.count()).select_from(OutboxMail)) == 1
            connection.execute(update(OutboxMail).values(raw=b"Subject: x\r\n\r\nx\r\n"))
        _downgrade(engine, "0001")
        with engine.connect() as connection:
            assert connection.execute(text("SELECT message_id FROM outbox")).scalars().all() == [
                "mg.waiting@example.com"]
    finally:
        upgrade(engine)
        engine.dispose()
