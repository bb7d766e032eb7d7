"""Jobs only one gateway may do at a time, among all those sharing one database.

Polling an IMAP mailbox and a scheduler pass are such jobs: two pollers of
one mailbox would fetch the same mails (harmless, thanks to the inbox's
dedup, but twice the work and moves that race), and two scheduler passes
would read the same due tickets. Whoever holds a job's `Leadership` does it.

On PostgreSQL it is a session advisory lock (`pg_try_advisory_lock`) held
on a connection of its own: the server drops it the moment that connection
ends, so when a gateway dies (even by SIGKILL, whose socket the kernel
closes) another takes the job over at its next try, seconds later. On
SQLite, whose gateways all run on one host, it is an `flock` on a file
beside the database, which the kernel drops with the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading

import structlog
from sqlalchemy import Connection, Engine, text

from mailgateway.db.dialect import is_postgresql, sqlite_file

__all__ = ["Leadership"]

_log = structlog.get_logger(__name__)


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                          signed=True)


class Leadership:
    """The right to do the job `name`; thread-safe."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.name = name
        self._engine = engine
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._fd: int | None = None
        self._key = _advisory_key(f"mailgateway:{name}")
        file = sqlite_file(engine.url)
        slug = re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)[:100]
        self._path = f"{file}-{slug}.lock" if file else None

    @property
    def held(self) -> bool:
        """True while this process holds the job (on PostgreSQL: its connection lives)."""
        with self._lock:
            if self._connection is not None:
                try:
                    self._connection.execute(text("SELECT 1"))
                    self._connection.commit()
                except Exception:
                    self._drop()
                    return False
                return True
            return self._fd is not None

    def acquire(self) -> bool:
        """Take the job unless another holds it; True when this process holds it."""
        if self.held:
            return True
        with self._lock:
            if is_postgresql(self._engine):
                return self._acquire_advisory()
            if self._path is None:
                self._fd = -1  # one in-memory database: one process
                return True
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            return True

    def _acquire_advisory(self) -> bool:
        connection = self._engine.connect()
        try:
            got = bool(connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}).scalar())
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        """Give the job up (also when the process ends, whatever the way)."""
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                    self._connection.commit()
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()  # never back to the pool: it may hold the lock
                self._connection.close()
            self._connection = None
        if self._fd is not None:
            if self._fd >= 0:
                os.close(self._fd)  # closing drops the flock
            self._fd = None
