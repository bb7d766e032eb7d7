"""Recording what became of a sent mail: bounced (event, one notice to the group, the
address counted and at the limit no longer mailed), delayed, delivered."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from mailgateway.cli import main
from mailgateway.clock import FixedClock
from mailgateway.db.models import BouncingAddress, Event, OutboxMail, OutboxStatus
from mailgateway.outbound.delivery import (
    clear_address,
    flagged_addresses,
    record_bounce,
    record_delay,
    record_delivered,
)
from mailgateway.service import Gateway
from mailgateway.store import SessionStore
from tests.mails import PERSON, build_mail, deliver, failure_report, register_desk


def _acknowledgment(gateway: Gateway, subject: str = "Errore 98,20 su MOCO") -> int:
    assert deliver(gateway, build_mail(subject=subject)) == "processed"
    with gateway.sessions.begin() as session:
        row = session.scalars(select(OutboxMail).where(OutboxMail.kind == "acknowledgment")
                              .order_by(OutboxMail.id.desc())).first()
        assert row is not None
        row.status, row.sent_at = OutboxStatus.SENT.value, gateway.clock.now()
        return row.id


def _kinds(gateway: Gateway) -> list[str]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail.kind).order_by(OutboxMail.id)))


def _report(message_id: str, words: str) -> bytes:
    return failure_report(message_id, PERSON.upper(), words)


def test_a_hard_bounce_marks_the_row_adds_an_event_and_tells_the_group_once(
        gateway: Gateway) -> None:
    register_desk(gateway)
    row_id = _acknowledgment(gateway)
    before = _kinds(gateway)
    with gateway.sessions() as session:
        message_id = session.get_one(OutboxMail, row_id).message_id
    # The same report twice, then a copy in other words: only the first counts.
    for words in ("User unknown", "User unknown", "550 no such user"):
        assert deliver(gateway, _report(message_id, words)) == "ignored"
    with gateway.sessions.begin() as session:
        recorded = record_bounce(SessionStore(session), gateway.settings, gateway.clock,
                                 session.get_one(OutboxMail, row_id), PERSON, "again")
    assert not recorded.new
    with gateway.sessions() as session:
        row = session.get_one(OutboxMail, row_id)
        assert row.status == OutboxStatus.BOUNCED
        assert row.bounced_at == gateway.clock.now()
        assert row.delivery_diagnostic == f"{PERSON}: 5.1.1 User unknown"
        events = session.scalars(select(Event).where(Event.kind == "bounced")).all()
        assert [e.reason for e in events] == [
            f"the acknowledgment to {PERSON} bounced: 5.1.1 User unknown"]
        notice = session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                 .where(OutboxMail.kind == "bounce_notice")).one()
        assert notice.recipients == ["tecnici@example.com"]
        assert notice.intent is not None
        assert notice.intent["context"]["address"] == PERSON
        assert session.get_one(BouncingAddress, PERSON).bounces == 1
    assert _kinds(gateway) == [*before, "bounce_notice"]


def test_an_address_bouncing_at_the_limit_is_flagged_no_longer_mailed_until_cleared(
        gateway: Gateway, clock: FixedClock) -> None:
    gateway.settings = replace(gateway.settings, outbound=replace(
        gateway.settings.outbound, bounce_limit=2))
    register_desk(gateway)
    for number in range(2):
        row_id = _acknowledgment(gateway, f"Richiesta {number}")
        with gateway.sessions.begin() as session:
            recorded = record_bounce(SessionStore(session), gateway.settings, clock,
                                     session.get_one(OutboxMail, row_id), PERSON,
                                     "550 5.2.1 mailbox disabled")
        assert recorded.address_flagged is (number == 1)
        clock.advance(hours=1)
    with gateway.sessions() as session:
        assert flagged_addresses(session, [PERSON, "other@example.org"]) == {PERSON}
    acknowledgments = _kinds(gateway).count("acknowledgment")
    assert deliver(gateway, build_mail(subject="Terza richiesta")) == "processed"
    assert _kinds(gateway).count("acknowledgment") == acknowledgments  # not mailed
    with gateway.sessions.begin() as session:
        assert clear_address(session, PERSON)
    assert deliver(gateway, build_mail(subject="Quarta richiesta")) == "processed"
    assert _kinds(gateway).count("acknowledgment") == acknowledgments + 1


def test_a_delay_is_recorded_without_alarm_and_a_delivery_ends_the_run_of_bounces(
        gateway: Gateway, clock: FixedClock) -> None:
    register_desk(gateway)
    first, second = _acknowledgment(gateway, "Uno"), _acknowledgment(gateway, "Due")
    with gateway.sessions.begin() as session:
        store = SessionStore(session)
        record_bounce(store, gateway.settings, clock, session.get_one(OutboxMail, first),
                      PERSON, "5.2.2 mailbox full")
        row = session.get_one(OutboxMail, second)
        assert record_delay(store, clock, row, PERSON, "4.4.7 retrying")
        assert not record_delay(store, clock, row, PERSON, "4.4.7 retrying")
        assert row.status == OutboxStatus.SENT
        delivered_at = clock.now() + timedelta(minutes=3)
        assert record_delivered(store, clock, row, PERSON, delivered_at, "receipt opec.123")
    with gateway.sessions() as session:
        row = session.get_one(OutboxMail, second)
        assert row.status == OutboxStatus.DELIVERED
        assert row.delivered_at == delivered_at
        assert row.delivery_diagnostic == (f"{PERSON}: delayed: 4.4.7 retrying\n"
                                           f"{PERSON}: delivered: receipt opec.123")
        assert session.get(BouncingAddress, PERSON) is None
        kinds = session.scalars(select(Event.kind).where(
            Event.kind.in_(["bounced", "delivery_delayed", "delivered"])).order_by(Event.id))
        assert list(kinds) == ["bounced", "delivery_delayed", "delivered"]
    assert "bounce_notice" not in _kinds(gateway)  # the pipeline's decision tells the group


def test_the_command_line_shows_bounced_mail_and_bouncing_addresses(
        gateway: Gateway, config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.settings = replace(gateway.settings, outbound=replace(
        gateway.settings.outbound, bounce_limit=1))
    register_desk(gateway)
    row_id = _acknowledgment(gateway)
    with gateway.sessions.begin() as session:
        record_bounce(SessionStore(session), gateway.settings, gateway.clock,
                      session.get_one(OutboxMail, row_id), PERSON, "5.1.1 User unknown")

    def run(*argv: str) -> Any:
        capsys.readouterr()
        assert main(["--config", str(config_file), *argv]) == 0
        out = capsys.readouterr().out
        return json.loads(out) if "--json" in argv else out

    [bounced] = run("outbox", "list", "--status", "bounced", "--json")
    assert (bounced["id"], bounced["delivery"]) == (row_id, f"{PERSON}: 5.1.1 User unknown")
    assert f"{PERSON}: 5.1.1 User unknown" in run("outbox", "list", "--status", "bounced")
    persons = {p["email"]: p["bouncing"] for p in run("persons", "list", "--json")}
    assert persons == {PERSON: True}
    assert "(bouncing: not mailed)" in run("persons", "list")
    assert [a["bouncing"] for a in run("accounts", "list", "--json")] == [False]
    [address] = run("addresses", "list", "--json")
    assert (address["address"], address["bounces"], address["flagged"]) == (PERSON, 1, True)
    assert "is mailed again" in run("addresses", "clear", PERSON)
    assert run("addresses", "list", "--json") == []
    assert main(["--config", str(config_file), "addresses", "clear", PERSON]) == 1


def test_a_bounced_notice_to_the_group_is_recorded_never_stopped(gateway: Gateway) -> None:
    gateway.settings = replace(gateway.settings, outbound=replace(
        gateway.settings.outbound, bounce_limit=1))
    register_desk(gateway)
    _acknowledgment(gateway)
    with gateway.sessions.begin() as session:
        notice = session.scalars(select(OutboxMail).where(
            OutboxMail.kind == "new_ticket_notice")).one()
        recorded = record_bounce(SessionStore(session), gateway.settings, gateway.clock,
                                 notice, "tecnici@example.com", "5.2.2 mailbox full")
    assert (recorded.new, recorded.address_flagged) == (True, False)
    with gateway.sessions() as session:
        assert session.get(BouncingAddress, "tecnici@example.com") is None
        assert session.scalars(select(Event.reason).where(Event.kind == "bounced")).one() == (
            "the new ticket notice to tecnici@example.com bounced: 5.2.2 mailbox full")
    assert "bounce_notice" not in _kinds(gateway)
