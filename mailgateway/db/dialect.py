"""What differs between SQLite and PostgreSQL, and nothing else.

SQLite has one writer at a time: every transaction takes the write lock at
its start (BEGIN IMMEDIATE), so concurrent writers queue instead of failing
half-way with a stale snapshot, and within one process they queue in arrival
order behind one fair lock per engine (`write_lock`). PostgreSQL has row
locks: work is claimed with `FOR UPDATE SKIP LOCKED`, so several processes
share a queue without waiting on each other (`claimed`).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import (
    URL,
    Engine,
    Insert,
    LargeBinary,
    Select,
    Table,
    event,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

_Row = TypeVar("_Row")


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite database, beside which the gateway keeps its lock files;
    None for an in-memory or URI-named one and for any other database."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") \
            or database.startswith("file:"):
        return None
    return Path(database)


def tune_sqlite(engine: Engine) -> None:
    """WAL (readers never wait for the writer), a 30 s busy timeout, foreign keys on,
    and the write lock taken when a transaction begins, unless it only reads."""

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
        # A reader (`reading`) begins without the write lock: in WAL mode it neither
        # waits for the writer nor makes it wait.
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


# A gateway host that dies (power lost, network cut) leaves its connections open on
# the server until TCP says otherwise: two hours by default. Meanwhile they keep their
# row locks (the ticket counter: no new ticket anywhere) and advisory locks (the IMAP
# poller's, the scheduler's). Probed after 10 s of silence, every 5 s, dropped after
# 3 unanswered probes or 25 s of unacknowledged data, a dead peer is let go of within
# about half a minute, on both sides.
_SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                      "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000")
_CLIENT_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                      "keepalives_count": 3, "tcp_user_timeout": 25000}


def tune_postgresql(engine: Engine) -> None:
    """TCP keepalives on each connection, the server's and ours (see above); values
    given in the database URL win over the client's."""

    @event.listens_for(engine, "do_connect")
    def _on_do_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        for name, value in _CLIENT_KEEPALIVES.items():
            params.setdefault(name, value)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:  # ignored by a server on a Unix socket
            cursor.execute(_SERVER_KEEPALIVES)
        dbapi_connection.commit()


_READ_ONLY = "mailgateway_read_only"


def reading(engine: Engine) -> Engine:
    """`engine` for transactions that only read: on SQLite they do not take the write
    lock, which every other transaction takes when it begins."""
    return engine.execution_options(**{_READ_ONLY: True})


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


class SharedWriteLock(FairLock):
    """The fair lock, then an exclusive `flock` on a file beside the database: the
    writers of the other processes on this host (`serve --workers`) queue on it too.

    The kernel hands a released `flock` to a waiter at once, where SQLite's own
    lock makes a blocked writer sleep-poll for up to 100 ms at a time: without
    it a listener's commit could sleep through several processors' transactions.

    `flock` is not first-come, first-served, though: a worker that commits one
    mail and begins the next could take the lock again and again before a
    waiting listener's thread is even scheduled. So a writer that answers a
    client (`urgent`) first announces itself with a shared lock on a second
    file, and the others, before queueing, give way while any such announcement
    stands (for `_YIELD_AT_MOST` seconds at most, so that they still move on).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._urgent_path = f"{path}.urgent"
        self._probe = os.open(self._urgent_path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        self._give_way()  # before queueing here, where the urgent writer queues too
        super().__enter__()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            super().__exit__()
            raise

    def _give_way(self) -> None:
        deadline = time.monotonic() + _YIELD_AT_MOST
        while time.monotonic() < deadline:
            try:
                fcntl.flock(self._probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # an urgent writer is waiting: let it pass
                time.sleep(0.0005)
                continue
            fcntl.flock(self._probe, fcntl.LOCK_UN)
            return

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            super().__exit__()

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """The lock, ahead of the writers that are not urgent."""
        announce = os.open(self._urgent_path, os.O_RDWR)
        try:
            fcntl.flock(announce, fcntl.LOCK_SH)
            FairLock.__enter__(self)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                fcntl.flock(announce, fcntl.LOCK_UN)  # holding it: no more need to announce
                try:
                    yield
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                FairLock.__exit__(self)
        finally:
            os.close(announce)

    def __del__(self) -> None:
        os.close(self._fd)
        os.close(self._probe)


_YIELD_AT_MOST = 0.05
_WRITE_LOCKS: WeakKeyDictionary[Engine, FairLock] = WeakKeyDictionary()


def _engine_lock(engine: Engine) -> FairLock:
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        file = sqlite_file(engine.url)
        lock = SharedWriteLock(f"{file}-writer.lock") if file else FairLock()
        lock = _WRITE_LOCKS.setdefault(engine, lock)
    return lock


def write_lock(engine: Engine) -> AbstractContextManager[None]:
    """What every writer of `engine` holds around a transaction: on SQLite the one fair
    lock of that engine (listener, processor and dispatcher queue in arrival order),
    shared through a lock file with the other processes that write the same file;
    nothing elsewhere."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _engine_lock(engine)


class UrgentWrite:
    """`write_lock` for a writer that a client waits for (the listener's commit): on
    SQLite it goes ahead of the other processes' writers (`SharedWriteLock.urgent`).
    One object serves every thread."""

    def __init__(self, engine: Engine) -> None:
        self._lock = _engine_lock(engine) if engine.dialect.name == "sqlite" else None
        self._held = threading.local()

    def __enter__(self) -> None:
        if isinstance(self._lock, SharedWriteLock):
            held = self._held.cm = self._lock.urgent()
            held.__enter__()
        elif self._lock is not None:
            self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        if isinstance(self._lock, SharedWriteLock):
            self._held.cm.__exit__(None, None, None)
        elif self._lock is not None:
            self._lock.__exit__()


def claimed(query: Select[_Row], session: Session) -> Select[_Row]:
    """`query` locking the rows it selects for this transaction, skipping rows another
    transaction holds (PostgreSQL); on SQLite the transaction's write lock already
    keeps every other writer out."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def returns_ids_of_many_rows(session: Session) -> bool:
    """True when one INSERT of many rows also says which id went to which row
    (PostgreSQL); SQLite cannot, so the ORM writes rows whose ids it does not know
    with one INSERT each."""
    return session.get_bind().dialect.name == "postgresql"


def insert_ignoring_duplicates(table: Table, session: Session) -> Insert:
    """An INSERT of `table` that leaves a row whose key exists as it is."""
    # Imported here: PostgreSQL's dialect (with asyncio) slows every SQLite command's start.
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table).on_conflict_do_nothing()


def insert_blobs(
    session: Session, table: Table, key: str, column: str, rows: Sequence[tuple[int, bytes]],
    chunk: int = 1 << 20,
) -> None:
    """Insert `(key, bytes)` rows, the small ones in one statement. On SQLite a large
    value is streamed into its row a chunk at a time (incremental blob I/O): binding
    a 30 MB value makes SQLite build the whole record in memory, twice its size on
    top of the caller's copy."""
    streamed = session.get_bind().dialect.name == "sqlite"
    small = [{key: k, column: value} for k, value in rows if not streamed or len(value) <= chunk]
    if small:
        session.execute(insert(table), small)
    for row_key, value in rows:
        if not streamed or len(value) <= chunk:
            continue
        session.execute(insert(table).values({key: row_key, column: func.zeroblob(len(value))}))
        connection = session.connection().connection.driver_connection
        assert connection is not None
        view = memoryview(value)
        with connection.blobopen(table.name, column, row_key) as blob:
            for offset in range(0, len(value), chunk):
                blob.write(view[offset:offset + chunk])


def insert_with_bytes(
    table: Table, values: dict[str, Any], blobs: Table, key: str, column: str, value: bytes,
) -> Insert:
    """One INSERT of a row of `table` and of its bytes into `blobs` beside it (a
    data-modifying WITH, PostgreSQL only), returning the row's id: run on its own
    (autocommit), one round trip where a transaction takes four."""
    row = insert(table).values(values).returning(table.c.id).cte("row")
    return (insert(blobs)
            .from_select([key, column], select(row.c.id, literal(value, LargeBinary)))
            .returning(blobs.c[key]))


_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "08000", "08003", "08006"})


def is_transient(exc: BaseException) -> bool:
    """True when retrying may help: a busy or locked database, a lost connection,
    a serialization failure. A schema or data error is not transient."""
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
