"""Engine and sessions: the one place that knows SQLite from PostgreSQL.

SQLite runs in WAL mode with a busy timeout and takes the write lock at the
start of every transaction (BEGIN IMMEDIATE): concurrent writers then queue
instead of failing half-way with a stale snapshot. PostgreSQL uses row locks
(`FOR UPDATE SKIP LOCKED`) where work is claimed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, cast
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, Executable, Table, create_engine, event, func, insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction, make_transient_to_detached, sessionmaker

from mailgateway.config import DatabaseSettings


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_db_engine(settings: DatabaseSettings) -> Engine:
    """An engine for the configured URL, tuned for the gateway's access pattern."""
    url = settings.url
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(
            url, echo=settings.echo, connect_args={"timeout": 30, "check_same_thread": False}
        )
        _tune_sqlite(engine)
        return engine
    return create_engine(url, echo=settings.echo, pool_pre_ping=True, pool_size=10)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "08000", "08003", "08006"})


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help: a busy or locked database, a lost connection,
    a serialization failure. A schema or data error is not transient."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    if "database is locked" in text or "database is busy" in text:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in _TRANSIENT_SQLSTATES or (
        sqlstate is None and "connection" in text and exc.__class__.__name__ == "OperationalError")


class FairLock:
    """A first-come, first-served lock for SQLite's single writer within one process.

    SQLite makes a blocked writer poll with growing sleeps (up to 100 ms), so a
    listener thread could wait many turns behind the processor. Queueing the
    writers here in arrival order bounds each wait to the transactions ahead.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._condition:
            turn = self._next
            self._next += 1
            while turn != self._serving:
                self._condition.wait()

    def __exit__(self, *exc: object) -> None:
        with self._condition:
            self._serving += 1
            self._condition.notify_all()


_WRITE_LOCKS: WeakKeyDictionary[Engine, FairLock] = WeakKeyDictionary()


def write_lock(engine: Engine) -> AbstractContextManager[None]:
    """What every writer of `engine` holds around a transaction: on SQLite the one fair
    lock of that engine (listener, processor and dispatcher queue in arrival order),
    nothing elsewhere."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _WRITE_LOCKS.setdefault(engine, FairLock())


def insert_raw(session: Session, inbox_id: int, raw: bytes) -> None:
    """Store one mail's bytes (see `insert_raws`)."""
    insert_raws(session, [(inbox_id, raw)])


def insert_raws(
    session: Session, mails: Sequence[tuple[int, bytes]], chunk: int = 1 << 20
) -> None:
    """Store mails' bytes by inbox id, the small ones in one statement. On SQLite a
    large one is streamed into its row a chunk at a time (incremental blob I/O):
    binding a 30 MB value makes SQLite build the whole record in memory, twice the
    mail's size on top of the caller's copy."""
    from mailgateway.db.models import InboxRaw

    streamed = session.get_bind().dialect.name == "sqlite"
    small = [{"inbox_id": i, "raw": raw} for i, raw in mails if not streamed or len(raw) <= chunk]
    if small:
        session.execute(insert(InboxRaw), small)
    for inbox_id, raw in mails:
        if not streamed or len(raw) <= chunk:
            continue
        session.execute(insert(InboxRaw).values(inbox_id=inbox_id, raw=func.zeroblob(len(raw))))
        connection = session.connection().connection.driver_connection
        assert connection is not None
        view = memoryview(raw)
        with connection.blobopen("inbox_raw", "raw", inbox_id) as blob:
            for offset in range(0, len(raw), chunk):
                blob.write(view[offset:offset + chunk])


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = sessionmaker(engine, expire_on_commit=False)

    @event.listens_for(factory, "after_transaction_end")
    def _forget_lookups(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:
            for name in (_LOOKUPS, _AWAITED, _LATER, _FORGOTTEN_ON_ROLLBACK):
                session.info.pop(name, None)

    @event.listens_for(factory, "before_flush")
    def _write_queued_first(session: Session, *_: Any) -> None:
        # The ORM may update a row that is still queued (a ticket opened and answered
        # in the same batch): the row must be there first.
        write_later(session)

    @event.listens_for(factory, "before_commit")
    def _finish_waited(session: Session) -> None:
        write_later(session)
        for pending in session.info.pop(_AWAITED, ()):
            pending.result()  # raises, and so rolls back, when a write failed

    @event.listens_for(factory, "after_soft_rollback")
    def _detach_rolled_back(session: Session, rolled_back: SessionTransaction) -> None:
        lookups = session.info.get(_LOOKUPS, {})
        for name in session.info.get(_FORGOTTEN_ON_ROLLBACK, ()):
            lookups.pop(name, None)
        later = session.info.get(_LATER)
        if later:
            later[:] = [entry for entry in later if not _within(entry[0], rolled_back)]
        attached: dict[object, SessionTransaction] = transaction_cache(session, _ATTACHED)
        for row, written_in in list(attached.items()):
            if _within(written_in, rolled_back):
                del attached[row]
                if row in session:
                    session.expunge(row)

    return factory


def _within(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


_LOOKUPS = "mailgateway.lookups"
_ATTACHED = "attached rows"
_AWAITED = "mailgateway.awaited"
_LATER = "mailgateway.insert later"
_FORGOTTEN_ON_ROLLBACK = "mailgateway.forgotten on rollback"
_Model = TypeVar("_Model")


def transaction_cache(
    session: Session, name: str, *, forget_on_rollback: bool = False
) -> dict[Any, Any]:
    """A dictionary that lives until `session`'s transaction ends.

    A bulk import processes hundreds of mails in one transaction and meets the
    same senders and tickets again and again; what one mail looked up, the next
    finds here instead of in another query. Whoever writes a row that a cached
    lookup would now find differently drops that entry, or, when the cache
    records what the transaction itself wrote, asks for it to be forgotten
    whenever a savepoint rolls back (`forget_on_rollback`).
    """
    lookups: dict[str, dict[Any, Any]] = session.info.setdefault(_LOOKUPS, {})
    if forget_on_rollback:
        session.info.setdefault(_FORGOTTEN_ON_ROLLBACK, set()).add(name)
    return lookups.setdefault(name, {})


def execute_later(session: Session, statement: Executable, row: dict[str, Any]) -> None:
    """Have `statement` run with the values `row` at the next `write_later` or commit.

    Rows of one statement go in one executemany: a bulk import writes each
    kind of row of a whole batch at once instead of one statement a row. Only
    for rows no query looks for before they are written: events, messages,
    outbox rows and their bookkeeping, and new tickets, which are read back
    from the session's identity map (a lookup that must go to the database
    runs `write_later` first). A savepoint that rolls back drops the rows
    queued under it; rows queued before a savepoint begins must be written
    before it (`write_later`), or a rollback of it would take them along.
    """
    transaction = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_LATER, []).append((transaction, statement, row))


def write_later(session: Session) -> None:
    """Run what `execute_later` queued: a statement at a time, parents before the rows
    that point at them (tickets before their messages), and the rows of each
    statement in the order they were queued."""
    queued = session.info.pop(_LATER, None)
    if not queued:
        return
    grouped: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
    for _, statement, row in queued:
        grouped.setdefault(id(statement), (statement, []))[1].append(row)
    connection = session.connection()
    for statement, rows in sorted(grouped.values(), key=lambda group: _rank(group[0])):
        connection.execute(statement, rows)


def _rank(statement: Executable) -> int:
    """Where the statement's table comes in its metadata's order of dependencies."""
    table = getattr(statement, "table", None)
    return _table_rank(table) if isinstance(table, Table) else 0


@cache
def _table_rank(table: Table) -> int:
    return table.metadata.sorted_tables.index(table)


def wait_before_commit(session: Session, pending: Future[Any]) -> None:
    """Make `session`'s next commit wait for `pending` (a file its rows point at), and
    fail if it failed: rows never commit pointing at something not written."""
    session.info.setdefault(_AWAITED, []).append(pending)


def attach_inserted(session: Session, row: object) -> None:
    """Make `row`, whose INSERT is queued with `execute_later`, a persistent object of
    `session` as though it had been loaded: no query, no flush.

    The ORM knows nothing of that INSERT, so should the savepoint it was queued
    under roll back (and the INSERT be dropped with it), the object is detached
    again here: the session must not hold an object whose row was never written.
    """
    make_transient_to_detached(row)
    session.add(row)
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None
    transaction_cache(session, _ATTACHED)[row] = transaction


def get_held(session: Session, model: type[_Model], ident: int | None) -> _Model | None:
    """`session.get`, keeping the object until the transaction ends.

    The identity map holds objects weakly: a ticket or account that one mail of
    a batch looked up would be gone, and loaded again, by the time the next
    mail needs it.
    """
    if ident is None:
        return None
    held = transaction_cache(session, "held")
    found = held.get((model, ident))
    if found is not None and found in session:  # not detached by a rolled-back savepoint
        return cast(_Model, found)
    found = session.get(model, ident)
    if found is not None:
        held[(model, ident)] = found
    return found
