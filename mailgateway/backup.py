"""`mailgateway db backup DIR`: a copy of the desk to restore from, taken while it runs.

Three things make a desk: the database, the attachment files it names, and the
secret that signed every reply address already in customers' mailboxes (lose
it, and each of their replies is refused as unsigned). They are copied in that
order, and the order is what makes a copy taken while mail comes in whole: a
file is written before the row naming it is committed (`attachments`), so
every file the copied database names exists by the time the files are copied.
Files written since are extra, and harmless.

SQLite is copied with its online backup API, one consistent snapshot that
neither waits for the writers nor holds them up. A PostgreSQL database is the
server's to copy (`pg_dump`, taken before this command for the same reason).

The copy holds every customer's mail: it is readable by this user only, and it
is made in a hidden folder beside the target and renamed into place at the
end, so a backup that failed half-way never looks like a whole one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from mailgateway.config import Settings
from mailgateway.db.dialect import sqlite_file
from mailgateway.errors import UserError
from mailgateway.signing_secret import configured, secret_path

DATABASE_FILE = "mailgateway.db"
ATTACHMENTS = "attachments"


def back_up(settings: Settings, target: Path) -> list[str]:
    """Copy the desk into `target` (new, or an empty folder); one line per part."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not an empty folder: a backup never overwrites another.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a backup that was killed
    partial.mkdir(mode=0o700)
    os.chmod(partial, 0o700)  # the mode even under a loose umask
    try:
        lines = [_database(settings, partial), _attachments(settings, partial),
                 _secret(settings, partial)]
        partial.rename(target)  # onto an empty folder too
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"the backup into {target} failed, nothing was kept: {exc}.") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [line.replace(str(partial), str(target)) for line in lines]


def _database(settings: Settings, target: Path) -> str:
    file = sqlite_file(settings.database.url)
    if file is None:
        return ("database: not copied; PostgreSQL's is taken with `pg_dump` (before this "
                "command, so that these files cover it)")
    if not file.is_file():
        raise UserError(f"{file} does not exist: there is no database to back up.")
    copy = target / DATABASE_FILE
    source = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        destination = sqlite3.connect(copy)
        try:
            source.backup(destination)  # in one step: one snapshot
            verdict = destination.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            destination.close()
    finally:
        source.close()
    if verdict != "ok":
        raise UserError(f"the copy {copy} does not pass SQLite's check: {verdict}.")
    return f"database: {file} copied to {copy} ({copy.stat().st_size:,} bytes)"


def _attachments(settings: Settings, target: Path) -> str:
    source = settings.data_dir / ATTACHMENTS
    count = 0
    size = 0
    for file in sorted(source.rglob("*")) if source.is_dir() else []:
        if not file.is_file() or file.name.startswith(".tmp-"):  # a write not yet done
            continue
        copy = target / ATTACHMENTS / file.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, copy)
        count += 1
        size += copy.stat().st_size
    return f"attachments: {count} file(s), {size:,} bytes, copied to {target / ATTACHMENTS}"


def _secret(settings: Settings, target: Path) -> str:
    if configured(settings):
        return ("secret: set in the configuration or MAILGATEWAY_SECRET, not copied: keep "
                "it with this backup, or the replies to mail already sent are refused")
    source = secret_path(settings)
    if not source.is_file():
        return ("secret: none configured here and none generated: if serve takes "
                "MAILGATEWAY_SECRET from its unit's environment, keep it with this backup")
    copy = target / source.name
    copy.touch(mode=0o600)
    os.chmod(copy, 0o600)  # the mode even under a loose umask
    copy.write_bytes(source.read_bytes())
    return f"secret: {source} copied to {copy} (readable by this user only)"
