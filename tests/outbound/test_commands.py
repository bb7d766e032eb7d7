"""`dispatch --once`, `outbox list` and `outbox retry` as the command line runs them."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock, FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import OutboxMail, OutboxStatus
from mailgateway.errors import UserError
from mailgateway.outbound.commands import register
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.outbound.queue import enqueue
from mailgateway.store import SessionStore


@dataclass
class _App:
    settings: Settings
    clock: Clock
    sessions: sessionmaker[Session]

    @property
    def reads(self) -> sessionmaker[Session]:
        return self.sessions


def _run(app: _App, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mailgateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args, app) or 0)


@pytest.fixture
def app(settings: Settings, clock: FixedClock, sessions: sessionmaker[Session]) -> _App:
    with sessions.begin() as session:
        for n in range(3):
            enqueue(SessionStore(session), settings, clock, MailIntent(
                kind=MailKind.ANSWER, to=(f"cliente{n}@studiorossi.it",), language="it",
                context={"body": "Risposta"}))
    with sessions.begin() as session:
        session.execute(update(OutboxMail).where(OutboxMail.id == 2)
                        .values(status=OutboxStatus.FAILED, last_error="550 5.1.1 No such user"))
    return _App(settings, clock, sessions)


def test_outbox_list_json(app: _App, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(app, "outbox", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [3, 2, 1]
    assert rows[1]["status"] == "failed"
    assert rows[1]["last_error"] == "550 5.1.1 No such user"
    assert rows[0]["recipients"] == ["cliente2@studiorossi.it"]

    assert _run(app, "outbox", "list", "--status", "failed", "--json") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [2]


def test_outbox_list_text(app: _App, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(app, "outbox", "list", "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("2\tfailed\tanswer\t-\tcliente1@studiorossi.it")
    assert lines[1].endswith("550 5.1.1 No such user")


def test_outbox_retry_and_dispatch_once(app: _App, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(app, "outbox", "retry", "2") == 0
    assert "Outbox mail 2 is queued again." in capsys.readouterr().out
    assert _run(app, "dispatch", "--once") == 0
    assert "Outbox: sent 3, retried 0, failed 0, dead 0, deferred 0." in (
        capsys.readouterr().out.splitlines())


def test_outbox_retry_of_an_unknown_id_is_a_user_error(app: _App) -> None:
    with pytest.raises(UserError, match=r"^There is no outbox mail with ID 99\.$"):
        _run(app, "outbox", "retry", "99")
