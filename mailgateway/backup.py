"""`mailgateway db backup DIR`: a copy of the desk to restore from, taken while it runs.

Three things make a desk: the database, the attachment files it names, and the
secret that signed every reply address already in customers' mailboxes (lose
it, and each of their replies is refused as unsigned). They are copied in that
order, and the order is what makes a copy taken while mail comes in whole: a
file is written before the row naming it is committed (`attachments`), so
every file the copied database names exists by the time the files are copied.
Files written since are extra, and harmless.

SQLite is copied with its online backup API, one consistent snapshot that
neither waits for the writers nor holds them up. PostgreSQL is dumped by the
server's own `pg_dump` (one snapshot too), in its custom format for
`pg_restore`; the password goes to it in its environment, never on its
command line, where any user of the host could read it.

Attachment files are named by their content and never change, so a daily
backup can share them with the day before's: with `link_dest`, a file that
backup already holds is hard-linked, not copied again (as `rsync --link-dest`
does), and each backup is still whole on its own.

A timer runs it `--dated`: each backup is named by its time in one folder,
shares its files with the newest one there, and the oldest beyond `--keep` go
once the new one is whole, so a failed night never leaves fewer backups.

The copy holds every customer's mail: it is readable by this user only, and it
is made in a hidden folder beside the target and renamed into place at the
end, so a backup that failed half-way never looks like a whole one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from mailgateway.config import Settings
from mailgateway.db.dialect import sqlite_file
from mailgateway.errors import UserError
from mailgateway.signing_secret import configured, secret_path

DATABASE_FILE = "mailgateway.db"
DUMP_FILE = "mailgateway.dump"
ATTACHMENTS = "attachments"
DATED = "%Y-%m-%dT%H%M%SZ"  # sorts as it happened


def back_up(settings: Settings, target: Path, link_dest: Path | None = None) -> list[str]:
    """Copy the desk into `target` (new, or an empty folder), sharing the unchanged
    attachment files of the backup `link_dest`; one line per part."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not an empty folder: a backup never overwrites another.")
    if link_dest is not None and not (link_dest / ATTACHMENTS).is_dir():
        raise UserError(f"{link_dest} holds no {ATTACHMENTS} folder: it is not a backup to "
                        "share files with.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by a backup that was killed
    partial.mkdir(mode=0o700)
    os.chmod(partial, 0o700)  # the mode even under a loose umask
    try:
        lines = [_database(settings, partial), _attachments(settings, partial, link_dest),
                 _secret(settings, partial)]
        partial.rename(target)  # onto an empty folder too
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"the backup into {target} failed, nothing was kept: {exc}.") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [line.replace(str(partial), str(target)) for line in lines]


def back_up_dated(settings: Settings, root: Path, now: datetime, keep: int | None = None,
                  link_dest: Path | None = None) -> list[str]:
    """A backup in `root` named by `now` (UTC) that shares files with the newest one
    there (or `link_dest`); then, with `keep`, the oldest beyond that many are removed,
    and the hidden folders of runs killed half-way (the timer starts one at a time)."""
    earlier = _dated_backups(root)
    target = root / now.strftime(DATED)
    lines = back_up(settings, target, link_dest or (earlier[-1] if earlier else None))
    if keep is None:
        return lines
    for old in [*earlier, target][:-keep]:
        try:
            shutil.rmtree(old)
        except OSError as exc:  # the timer's unit fails, and says why
            raise UserError(f"{target} is whole, but the old backup {old} could not be "
                            f"removed: {exc}.") from None
        lines.append(f"removed {old}: older than the {keep} backup(s) kept")
    for left in root.glob(".*.partial"):
        if _is_dated(left.name[1:-len(".partial")]):
            shutil.rmtree(left, ignore_errors=True)
    return lines


def _dated_backups(root: Path) -> list[Path]:
    """The whole backups `back_up_dated` made in `root`, oldest first: a folder of
    another name there is the admin's, and never touched."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and _is_dated(p.name) and (p / ATTACHMENTS).is_dir())


def _is_dated(name: str) -> bool:
    try:
        datetime.strptime(name, DATED)
    except ValueError:
        return False
    return True


def _database(settings: Settings, target: Path) -> str:
    file = sqlite_file(settings.database.url)
    if file is None:
        return _dump(settings.database.url, target / DUMP_FILE)
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


def _dump(url: str, dump: Path) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise UserError(f"{url} names no SQLite file to copy: give database.url a file.")
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise UserError("pg_dump is not installed: install PostgreSQL's client tools "
                        "(Debian: postgresql-client) of the server's major version or newer.")
    environment = dict(os.environ)
    if parsed.password is not None:
        environment["PGPASSWORD"] = str(parsed.password)
    libpq = parsed.set(drivername="postgresql", password=None)
    done = subprocess.run(
        [pg_dump, "--format=custom", f"--file={dump}",
         libpq.render_as_string(hide_password=False)],
        env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise UserError("pg_dump failed, no backup was made: "
                        f"{said[-1] if said else f'exit {done.returncode}'}")
    return (f"database: {libpq.render_as_string(hide_password=True)} dumped to {dump} "
            f"({dump.stat().st_size:,} bytes; restore it with pg_restore)")


def _attachments(settings: Settings, target: Path, link_dest: Path | None) -> str:
    source = settings.data_dir / ATTACHMENTS
    (target / ATTACHMENTS).mkdir()  # even with none: a later backup links against it
    count = size = linked = 0
    for file in sorted(source.rglob("*")) if source.is_dir() else []:
        if not file.is_file() or file.name.startswith(".tmp-"):  # a write not yet done
            continue
        name = file.relative_to(source)
        copy = target / ATTACHMENTS / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        previous = None if link_dest is None else link_dest / ATTACHMENTS / name
        if previous is not None and _same_file(previous, file) and _linked(previous, copy):
            linked += 1
        else:
            shutil.copy2(file, copy)
        count += 1
        size += copy.stat().st_size
    shared = "" if link_dest is None else \
        f"; {linked} of them unchanged since {link_dest}, hard-linked to its copies"
    return (f"attachments: {count} file(s), {size:,} bytes, copied to {target / ATTACHMENTS}"
            f"{shared}")


def _same_file(previous: Path, current: Path) -> bool:
    """The same name is the same content (its SHA-256); the size catches a copy that
    was cut short."""
    try:
        return previous.stat().st_size == current.stat().st_size
    except FileNotFoundError:
        return False


def _linked(previous: Path, copy: Path) -> bool:
    """False where no link can be made (the backups on two file systems): copied then."""
    try:
        os.link(previous, copy)
    except OSError:
        return False
    return True


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
