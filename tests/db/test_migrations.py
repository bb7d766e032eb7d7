"""`db upgrade` builds exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, insert, select, text, update
from sqlalchemy.orm import Session

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


def test_the_search_index_takes_in_tickets_closed_before_it(database_url: str) -> None:
    """Migration 0007 indexes the desk's solved tickets (those with an answer)."""
    from mailgateway.db.models import Account, Message, Ticket
    from mailgateway.solved import similar_solved

    engine = create_db_engine(DatabaseSettings(url=database_url))
    now = datetime.now(UTC)
    try:
        _downgrade(engine, "0006")
        with engine.begin() as connection:
            account = connection.execute(insert(Account).returning(Account.id), {
                "name": "Studio Rossi", "main_email": "rossi@studiorossi.it",
                "vat_number": "", "verified": True, "created_at": now}).scalar_one()
            for n, (subject, answer) in enumerate([
                    ("Stampa F24 bloccata", "Reimposti la stampante delle deleghe."),
                    ("Licenza scaduta", None)], start=1):
                connection.execute(insert(Ticket), {
                    "id": n, "number": f"2025-{n:06d}", "status": "CHIUSO",
                    "subject": subject, "request_type": "tecnica", "impact": "difficolta",
                    "account_id": account, "language": "it", "rules": [], "watchers": [],
                    "created_at": now, "updated_at": now, "closed_at": now})
                rows = [{"ticket_id": n, "direction": "in", "author": "rossi@studiorossi.it",
                         "body": f"{subject}: aiuto.", "internal": False,
                         "refused_attachments": [], "created_at": now}]
                if answer:
                    rows.append({**rows[0], "direction": "out", "body": answer,
                                 "author": "luca@example.com"})
                connection.execute(insert(Message), rows)
        upgrade(engine)
        with Session(engine) as session:
            [found] = similar_solved(session, account, "La stampa dell'F24 si blocca")
            assert (found.number, found.answer) == ("2025-000001",
                                                    "Reimposti la stampante delle deleghe.")
            assert similar_solved(session, account, "licenza scaduta") == ()
    finally:
        upgrade(engine)
        engine.dispose()
