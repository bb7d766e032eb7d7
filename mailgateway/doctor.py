"""`mailgateway doctor`: is this installation ready to serve? One line per check.

Each check tries the real thing the way `serve` will (connect, EHLO,
STARTTLS, log in, select folders, load rules and templates) and, when it
fails, says what to fix. Nothing is written anywhere: the relay is left
before MAIL FROM, the mailboxes are only examined. On a desk already running,
it also asks the question behind "no ticket appears" and "no answer comes":
is stored mail waiting for a processor, or due mail for a dispatcher, that
no unit runs?
"""

from __future__ import annotations

import os
import secrets
import smtplib
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from mailgateway.clock import Clock, SystemClock
from mailgateway.config import ImapSettings, Settings
from mailgateway.errors import ConfigError
from mailgateway.signing_secret import check_serving_secret, configured, secret_path

__all__ = ["Check", "checks", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what to fix

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


_Found = TypeVar("_Found", bound="Check | None")
# A processor takes stored mail, and a dispatcher due mail, within seconds when one
# runs: mail waiting this long means none runs anywhere, or it is stuck.
_UNTAKEN_AFTER = timedelta(minutes=10)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _configuration(settings: Settings, config_path: str | None) -> Check:
    where = config_path or "built-in defaults"
    try:
        check_serving_secret(settings)
    except ConfigError as exc:
        return Check("configuration", False, f"{where}: {exc}")
    if not configured(settings):
        return Check("configuration", True, f"{where} is valid; helpdesk.secret is not set, "
                     f"so the one generated into {secret_path(settings)} signs (enough for "
                     "one machine)")
    return Check("configuration", True, f"{where} is valid")


def _database(engine: Engine) -> Iterator[Check]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from mailgateway.db.migrate import alembic_config

    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:
        yield Check("database", False, f"{url}: {_first_line(exc)}; check database.url and "
                    "that the server runs and accepts this user")
        return
    yield Check("database", True, f"{url} answers")
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current == head:
        yield Check("database schema", True, f"at migration {head}")
    else:
        yield Check("database schema", False, f"at migration {current or 'none'}, the code "
                    f"needs {head}: run `mailgateway db upgrade` (serve does it at start)")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min" if minutes else f"{int(seconds)} s"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // (24 * 60)} days"


def _untaken(engine: Engine, now: datetime) -> Iterator[Check]:
    """Work in the database that the component meant for it has not taken. Read
    without the write lock: serve's writers neither wait for doctor nor it for them."""
    from mailgateway.db.dialect import reading
    from mailgateway.db.models import OutboxMail, OutboxStatus
    from mailgateway.monitoring import age_seconds, processing_backlog

    try:
        with Session(reading(engine)) as session:
            waiting, oldest = processing_backlog(session)
            overdue, first_due = session.execute(
                select(func.count(), func.min(OutboxMail.next_attempt_at))
                .where(OutboxMail.status == OutboxStatus.PENDING.value,
                       OutboxMail.next_attempt_at <= now - _UNTAKEN_AFTER)).one()
    except Exception as exc:
        yield Check("processing and sending", False, f"not checked: {_first_line(exc)}")
        return
    waited = age_seconds(now, oldest)
    if waited >= _UNTAKEN_AFTER.total_seconds():
        yield Check("processing", False, f"{waiting} stored mail(s) not processed, the "
                    f"oldest for {_duration(waited)}: is a processor running? Run `serve` "
                    "(or a unit with `--only processor`) and read its log")
    else:
        yield Check("processing", True, f"{waiting} stored mail(s) waiting, the oldest for "
                    f"{_duration(waited)}" if waiting else "no stored mail waiting")
    if overdue:
        yield Check("sending", False, f"{overdue} mail(s) due to be sent and not sent, the "
                    f"first due {_duration(age_seconds(now, first_due))} ago: is a dispatcher "
                    "running, and keeping up? Run `serve` (or a unit with `--only "
                    "dispatcher`) and read its log")
    else:
        yield Check("sending", True, "no mail overdue to be sent")


def _database_file(file: Path) -> Check | None:
    """What stops `serve`, running as this user, from writing a SQLite file; None when
    nothing does. SQLite writes its journal beside the file, so its folder counts too.
    A file not made yet is named, and doctor makes nothing: `serve` does."""
    nearest = _nearest_existing(file)
    if nearest != file:
        if not _writable(nearest):
            return Check("database", False, f"{file} does not exist and {nearest} is not "
                         "writable by this user: make the folder writable or change "
                         "database.url")
        return Check("database", False, f"{file} does not exist yet: `mailgateway db "
                     "upgrade` makes it (serve does at start)")
    closed = [path for path in (file, file.parent) if not _writable(path)]
    if closed:
        return Check("database", False, f"{closed[0]} is not writable by this user, and serve "
                     "writes the file and its journal beside it: give both to the user serve "
                     "runs as")
    return None


def _nearest_existing(path: Path) -> Path:
    """`path` or its nearest folder that exists; PermissionError when one on the way is
    closed to this user."""
    return next(p for p in (path, *path.parents) if p.exists())


def _relay(settings: Settings) -> Check:
    out = settings.outbound
    if out.transport == "maildir":
        path = Path(out.maildir)
        parent = _nearest_existing(path)
        if not parent.is_dir() or not _writable(parent):
            return Check("relay", False, f"outbound.maildir {path} cannot be written: fix "
                         "its permissions or choose another directory")
        return Check("relay", True, f"mail goes into the Maildir {path} (nothing is sent)")
    where = f"{out.host}:{out.port}"
    try:
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if out.tls:
            client = smtplib.SMTP_SSL(out.host, out.port, timeout=out.timeout_seconds,
                                      context=context)
        else:
            client = smtplib.SMTP(out.host, out.port, timeout=out.timeout_seconds)
        with client:
            code, _ = client.ehlo()
            if code != 250:
                return Check("relay", False, f"{where} answered EHLO with {code}")
            steps = ["EHLO"]
            if out.starttls:
                client.starttls(context=context)
                client.ehlo()
                steps.append("STARTTLS")
            if out.username:
                client.login(out.username, out.resolved_password())
                steps.append(f"login as {out.username}")
    except smtplib.SMTPAuthenticationError as exc:
        return Check("relay", False, f"{where} refused the login of {out.username} "
                     f"({exc.smtp_code}): check outbound.username and the password")
    except (OSError, smtplib.SMTPException) as exc:
        return Check("relay", False, f"{where}: {_first_line(exc)}; check outbound.host, "
                     "outbound.port, TLS settings and that the relay accepts this host")
    return Check("relay", True, f"{where}: {', '.join(steps)} ok")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _mailbox(index: int, mailbox: ImapSettings) -> Check:
    from imapclient import IMAPClient

    from mailgateway.ingest.imap import mailbox_name

    name = f"imap[{index}] {mailbox_name(mailbox)}"
    password = mailbox.resolved_password()
    if mailbox.password_env and not password:
        return Check(name, False, f"imap.password_env names {mailbox.password_env}, which is "
                     "not set: set it in the service's environment")
    try:
        context = ssl.create_default_context() if (mailbox.tls or mailbox.starttls) else None
        client = IMAPClient(mailbox.host, port=mailbox.port, ssl=mailbox.tls,
                            ssl_context=context, timeout=mailbox.timeout_seconds)
    except Exception as exc:
        return Check(name, False, f"cannot connect: {_first_line(exc)}; check imap.host, "
                     "imap.port and imap.tls")
    try:
        if mailbox.starttls:
            client.starttls(context)
        try:
            client.login(mailbox.username, password)
        except Exception as exc:
            return Check(name, False, f"login refused: {_first_line(exc)}; check "
                         "imap.username and the password")
        folders = (mailbox.folder, mailbox.processed_folder, mailbox.failed_folder)
        missing = [f for f in dict.fromkeys(folders) if not client.folder_exists(f)]
        if missing:
            return Check(name, False, f"folder(s) {', '.join(missing)} missing: create them, "
                         "or let serve create them if this account may")
        return Check(name, True, f"login ok, folders {', '.join(dict.fromkeys(folders))} exist")
    except Exception as exc:
        return Check(name, False, f"{_first_line(exc)}")
    finally:
        try:
            client.logout()
        except Exception:  # already gone: nothing to tidy
            client.shutdown()


def _rules(settings: Settings) -> Check:
    from mailgateway.dry_run import rules_check
    from mailgateway.service import Gateway

    if not configured(settings):  # loading rules signs nothing: no generated secret's file
        settings = replace(settings, helpdesk=replace(settings.helpdesk,
                                                      secret=secrets.token_urlsafe(32)))
    gateway = Gateway(settings)
    try:
        errors, summary = rules_check(gateway)
    except Exception as exc:
        return Check("rules", False, f"{settings.rules.path}: {_first_line(exc)}")
    finally:
        gateway.close()
    if errors:
        return Check("rules", False, f"{len(errors)} error(s), none of the files in force "
                     f"until mended; first: {errors[0]} (`mailgateway rules check` lists all)")
    return Check("rules", True, summary)


def _templates(settings: Settings) -> Check:
    from jinja2 import TemplateNotFound

    from mailgateway.outbound.intent import MailKind
    from mailgateway.outbound.render import LANGUAGES, template_environment

    overrides = Path(settings.rules.path) / "templates"
    if _nearest_existing(overrides) == overrides:
        os.scandir(overrides).close()  # closed to this user: serve would ignore them unsaid
    env = template_environment(settings)
    problems, count = [], 0
    for language in LANGUAGES:
        for kind in MailKind:
            for part in ("txt", "html"):
                name = f"{language}/{kind.value}.{part}.j2"
                try:
                    env.get_template(name)
                    count += 1
                except TemplateNotFound:
                    problems.append(f"{name} missing")
                except Exception as exc:
                    problems.append(f"{name}: {_first_line(exc)}")
    if problems:
        return Check("templates", False, f"{'; '.join(problems[:3])}: mend the override in "
                     f"{Path(settings.rules.path) / 'templates'} or remove it")
    return Check("templates", True, f"{count} templates load")


def checks(
    settings: Settings, config_path: str | None, clock: Clock | None = None
) -> Iterator[Check]:
    """Every check, in the order a newcomer would fix them."""
    from mailgateway.db.dialect import sqlite_file
    from mailgateway.db.session import create_db_engine

    yield _configuration(settings, config_path)
    file = sqlite_file(settings.database.url)
    found = _looking("database", lambda: _database_file(file)) if file is not None else None
    untaken: list[Check] = []
    if found is not None:
        database = [found]
    else:
        engine = create_db_engine(settings.database)
        try:
            database = list(_database(engine))
            if all(check.ok for check in database):
                untaken = list(_untaken(engine, (clock or SystemClock()).now()))
        finally:
            engine.dispose()
    yield from database
    yield from untaken
    yield _looking("relay", lambda: _relay(settings))
    for index, mailbox in enumerate(settings.imap):
        yield _mailbox(index, mailbox)
    if all(check.ok for check in database):
        yield _looking("rules", lambda: _rules(settings))
    else:
        yield Check("rules", False, "not checked: the technicians they may name are read "
                    "from the database, so mend the database first")
    yield _looking("templates", lambda: _templates(settings))


def _looking(name: str, check: Callable[[], _Found]) -> _Found | Check:
    """`check()`, or what to do when it meets a folder closed to this user (doctor
    run as another user than serve, or a folder made by root)."""
    try:
        return check()
    except PermissionError as exc:
        return Check(name, False, f"{exc.filename or _first_line(exc)} is closed to this "
                     "user: run doctor as the user serve runs as, and give that user the "
                     "folder")


def run_checks(
    settings: Settings, config_path: str | None, write: Callable[[str], object],
    clock: Clock | None = None,
) -> int:
    """Print one line per check; 0 when every one passed, 1 otherwise."""
    failed = 0
    for check in checks(settings, config_path, clock):
        write(check.line())
        failed += not check.ok
    write("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0
