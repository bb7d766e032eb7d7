"""Engine and sessions: how the gateway connects, nothing more.

What differs between SQLite and PostgreSQL is `db.dialect`'s business.
Sessions keep their objects' values after a commit (`expire_on_commit=False`):
a command prints what it just wrote without reading it back.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.config import DatabaseSettings
from mailgateway.db.dialect import sqlite_file, tune_postgresql, tune_sqlite
from mailgateway.errors import UserError


def _ensure_sqlite_dir(url: str) -> None:
    file = sqlite_file(url)
    if file:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"The database directory {file.parent} cannot be "
                            f"created (database.url): {exc.strerror}.") from None


def create_db_engine(settings: DatabaseSettings, held: int = 0) -> Engine:
    """An engine for the configured URL, tuned for the gateway's access pattern.

    `held` connections are kept for as long as the process runs (a `Leadership`'s,
    one per job it may lead): the pool has that many more, so that a desk with many
    mailboxes leaves the work as many connections as one with a few."""
    url = settings.url
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(
            url, echo=settings.echo, connect_args={"timeout": 30, "check_same_thread": False}
        )
        tune_sqlite(engine)
        return engine
    # No ping before each transaction (a round trip each, two per mail received): a
    # connection the server dropped fails the statement that meets it, the pool then
    # drops every connection as old, and the caller tries again (`is_transient`).
    engine = create_engine(url, echo=settings.echo, pool_size=10 + held)
    tune_postgresql(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
