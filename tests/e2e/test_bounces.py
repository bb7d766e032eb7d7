"""A customer's address bounces, end to end over SMTP: the acknowledgment goes to the
relay, the relay's delivery report comes back to the listener from the null sender,
and the outbox row, the ticket and the group learn it, once. The same without the
return path; and a customer who pastes a bounce into a request is heard."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import replace
from email.utils import make_msgid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from mailgateway.clock import FixedClock
from mailgateway.config import settings_from_mapping
from mailgateway.db.models import Event, InboxMail, OutboxMail, OutboxStatus, Ticket
from mailgateway.outbound.dispatch import dispatch_once
from mailgateway.outbound.transports import build_transport
from mailgateway.server import Processor
from mailgateway.service import Gateway
from tests.ingest.test_smtp import RunningListener, all_processed, wait_until
from tests.mails import PERSON, build_mail, register_desk
from tests.smtp_sink import SmtpSink
from tests.smtp_sink import smtp_sink as smtp_sink  # re-exported as a fixture

SUPPORT = "assistenza@example.com"
GROUP = "tecnici@example.com"


@pytest.fixture
def desk(config_data: dict[str, Any], smtp_sink: SmtpSink, clock: FixedClock
         ) -> Iterator[Gateway]:
    """The gateway with the sink as its relay and the desk registered."""
    config_data["outbound"] = {"transport": "smtp", "host": smtp_sink.host,
                               "port": smtp_sink.port, "timeout_seconds": 5}
    gateway = Gateway(settings_from_mapping(config_data), clock)
    register_desk(gateway)
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def listener(desk: Gateway) -> Iterator[RunningListener]:
    processor = Processor(desk, idle_seconds=0.5)
    server = RunningListener(replace(desk.settings.smtp, host="127.0.0.1", port=0), desk,
                             processor.wake, beside=[processor]).start()
    yield server
    server.stop()


def _send(listener: RunningListener, raw: bytes, sender: str, to: str) -> None:
    with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as client:
        assert client.sendmail(sender, [to], raw) == {}


def _settle(desk: Gateway) -> None:
    wait_until(lambda: all_processed(desk), timeout=30, what="the processor")


def _acknowledged(desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink,
                  subject: str) -> tuple[int, bytes, str]:
    """A customer's request over SMTP, its acknowledgment sent to the relay: the row's
    id, the bytes the relay took, and the return path they left with."""
    _send(listener, build_mail(sender=PERSON, subject=subject), PERSON, SUPPORT)
    _settle(desk)
    smtp_sink.clear()
    dispatch_once(desk.sessions, desk.settings, desk.clock, build_transport(desk.settings))
    [ack] = [d for d in smtp_sink.deliveries if d.rcpt_tos == [PERSON]]
    with desk.sessions() as session:
        row = session.scalars(select(OutboxMail).where(
            OutboxMail.kind == "acknowledgment").order_by(OutboxMail.id.desc())).first()
        assert row is not None and row.status == OutboxStatus.SENT
        return row.id, ack.raw, ack.mail_from


def _report(returned: bytes, to: str) -> bytes:
    """A Postfix delivery status notification about `returned`, sent to `to`."""
    headers = returned.split(b"\r\n\r\n", 1)[0].decode("ascii")
    boundary = "8F2C31C0B5.1772443200/mx.example.net"
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.net')}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.net.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"<{PERSON}>: host mx.studiorossi.it said: 550 5.1.1 <{PERSON}>: Recipient\r\n"
        "    address rejected: User unknown in virtual mailbox table\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "Arrival-Date: Mon,  2 Mar 2026 10:30:01 +0100 (CET)\r\n\r\n"
        f"Final-Recipient: rfc822; {PERSON}\r\n"
        f"Original-Recipient: rfc822;{PERSON}\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
        "Remote-MTA: dns; mx.studiorossi.it\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{PERSON}>: Recipient address rejected:\r\n"
        "    User unknown in virtual mailbox table\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{headers}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode("ascii")


def _outcome(desk: Gateway, row_id: int) -> tuple[OutboxMail, list[Event], list[OutboxMail]]:
    with desk.sessions() as session:
        row = session.get_one(OutboxMail, row_id)
        session.expunge(row)
        events = list(session.scalars(select(Event).where(
            Event.ticket_id == row.ticket_id, Event.kind == "bounced")))
        notices = list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                       .where(OutboxMail.kind == "bounce_notice",
                                              OutboxMail.ticket_id == row.ticket_id)))
        return row, events, notices


@pytest.mark.parametrize("return_path", [True, False], ids=["return-path", "no-return-path"])
def test_a_bounced_acknowledgment_marks_the_row_and_tells_the_group_once(
        desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink, return_path: bool
) -> None:
    row_id, returned, envelope_sender = _acknowledged(desk, listener, smtp_sink,
                                                      "Errore 98,20 su MOCO")
    assert envelope_sender.startswith("assistenza+b")
    to = envelope_sender if return_path else SUPPORT
    _send(listener, _report(returned, to), "", to)
    _settle(desk)
    row, events, notices = _outcome(desk, row_id)
    assert row.status == OutboxStatus.BOUNCED
    assert row.delivery_diagnostic is not None and "5.1.1" in row.delivery_diagnostic
    assert [e.reason.split(":")[0] for e in events] == [
        f"the acknowledgment to {PERSON} bounced"]
    assert [n.recipients for n in notices] == [[GROUP]]
    assert notices[0].intent is not None and notices[0].intent["context"]["address"] == PERSON

    # The server sends its report again: nothing new.
    _send(listener, _report(returned, to), "", to)
    _settle(desk)
    assert [len(x) for x in _outcome(desk, row_id)[1:]] == [1, 1]
    with desk.sessions() as session:
        reasons = list(session.scalars(select(InboxMail.reason).where(
            InboxMail.envelope_from == "").order_by(InboxMail.id)))
    assert all(f"about outbox {row_id}" in (r or "") for r in reasons), reasons

    # The group's notice goes out; nobody answers the server.
    smtp_sink.clear()
    dispatch_once(desk.sessions, desk.settings, desk.clock, build_transport(desk.settings))
    assert [d.rcpt_tos for d in smtp_sink.deliveries] == [[GROUP]]
    notice = smtp_sink.deliveries[0].message
    assert str(notice["Subject"]).startswith("[Ticket#2026-000001] Mail non recapitata a "
                                             f"{PERSON}")
    body = notice.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "non ha ricevuto la conferma di apertura del ticket 2026-000001" in text
    assert "5.1.1" in text and "Recipient address rejected" in text


def test_a_report_from_a_postmaster_to_the_return_path_is_taken(
        desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink) -> None:
    """Strangers are refused at RCPT time, but a report on our mail may come from a
    server's postmaster rather than the null sender."""
    assert desk.settings.helpdesk.unknown_sender == "reject"
    row_id, returned, envelope_sender = _acknowledged(desk, listener, smtp_sink, "Stampa")
    _send(listener, _report(returned, envelope_sender), "postmaster@mx.example.net",
          envelope_sender)
    _settle(desk)
    assert _outcome(desk, row_id)[0].status == OutboxStatus.BOUNCED
    with pytest.raises(smtplib.SMTPDataError, match="not registered"):
        _send(listener, build_mail(sender="chi@altrove.it"), "chi@altrove.it", SUPPORT)


PASTED = """Buongiorno,
le mail al commercialista tornano indietro da stamattina, vi incollo il messaggio:

This is the mail system at host mx.studiorossi.it.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<studio@commercialista.it>: host mx.commercialista.it said: 550 5.1.1
    <studio@commercialista.it>: Recipient address rejected: User unknown

Come posso risolvere?
Anna
"""


def test_a_known_customer_pasting_a_bounce_opens_a_ticket_and_is_acknowledged(
        desk: Gateway, listener: RunningListener) -> None:
    raw = build_mail(sender=PERSON, subject="Le mail al commercialista tornano indietro",
                     body=PASTED)
    _send(listener, raw, PERSON, SUPPORT)
    _settle(desk)
    with desk.sessions() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        kinds = list(session.scalars(select(OutboxMail.kind).where(
            OutboxMail.ticket_id == ticket.id)))
    assert ticket.subject == "Le mail al commercialista tornano indietro"
    assert "acknowledgment" in kinds


def test_the_same_text_from_a_mailer_daemon_is_a_bounce(
        desk: Gateway, listener: RunningListener) -> None:
    raw = build_mail(sender="MAILER-DAEMON@mx.studiorossi.it",
                     subject="Undelivered Mail Returned to Sender", body=PASTED)
    _send(listener, raw, "", SUPPORT)
    _settle(desk)
    with desk.sessions() as session:
        [row] = session.scalars(select(InboxMail)).all()
        assert session.scalars(select(Ticket)).all() == []
    assert row.status == "ignored" and (row.reason or "").startswith("bounce")
