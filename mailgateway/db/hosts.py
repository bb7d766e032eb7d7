"""One host per SQLite database: a gateway on another host is refused at start.

SQLite's locks work between processes of one host; over a network file
system they are unreliable, and two hosts writing one file corrupt it. A
gateway therefore writes its host's name into a file beside the database
(`<database>-host`) and renews it while it runs; another host's gateway that
finds the file renewed within `STALE_AFTER` stops with a message that names
the other host and says what to do instead. PostgreSQL needs none of this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from sqlalchemy import Engine

from mailgateway.db.dialect import sqlite_file
from mailgateway.errors import ConfigError

STALE_AFTER = 60.0  # seconds without renewal after which the other host counts as gone


class HostClaim:
    """This host's claim on a SQLite database file."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host

    @classmethod
    def take(cls, engine: Engine, host: str | None = None) -> HostClaim | None:
        """Claim the database for this host, or raise ConfigError when a gateway on
        another host uses it; None for PostgreSQL and in-memory databases."""
        file = sqlite_file(engine.url)
        if file is None:
            return None
        claim = cls(Path(f"{file}-host"), host or socket.gethostname())
        with contextlib.suppress(FileNotFoundError):
            other = claim.path.read_text(encoding="utf-8").strip()
            age = time.time() - claim.path.stat().st_mtime
            if other and other != claim.host and age < STALE_AFTER:
                raise ConfigError(
                    f"The SQLite database {file} is in use by a gateway on host {other} "
                    f"(seen {age:.0f} s ago). SQLite cannot be shared between hosts: run "
                    "every gateway on one host, or move to PostgreSQL (README, "
                    "\"Deployment\").")
        claim.renew()
        return claim

    def renew(self) -> None:
        """Write (again) this host's name: the file's age says the claim is alive."""
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        temporary.write_text(f"{self.host}\n", encoding="utf-8")
        temporary.replace(self.path)
