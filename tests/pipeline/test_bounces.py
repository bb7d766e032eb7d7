"""Reading delivery reports and tying them to our mail: the pure reading and matching,
and the outbox rows read for them (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import OutboxMail, OutboxStatus
from mailgateway.db.session import create_db_engine, session_factory
from mailgateway.pipeline.bounces import (
    UNREAD,
    Action,
    BounceMatch,
    BounceReport,
    RecipientOutcome,
    SentMail,
    correlate,
    read_report,
)
from mailgateway.pipeline.facts import read_sent_mails
from mailgateway.pipeline.parse import parse_mail
from mailgateway.reply_token import bounce_address
from mailgateway.service import Gateway
from tests.mails import PERSON, build_mail, deliver, register_desk

HELPDESK = "assistenza@example.com"
OURS = "mg.0123456789abcdef0123456789abcdef@example.com"


def read(raw: bytes, envelope_to: tuple[str, ...] = ()) -> BounceReport:
    return read_report(parse_mail(raw), helpdesk_address=HELPDESK, secret="test-secret",
                       domains=("example.com",), envelope_to=envelope_to)


def dsn(status_block: str, returned: str = f"Message-ID: <{OURS}>\nSubject: x\n",
        to: str = HELPDESK) -> bytes:
    return (f"From: MAILER-DAEMON@mx.example.net\nTo: {to}\nSubject: Undelivered\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nSorry.\n"
            "--b\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.example.net\n\n{status_block}\n"
            f"--b\nContent-Type: text/rfc822-headers\n\n{returned}\n--b--\n").encode()


def test_each_recipient_of_a_delivery_status_part() -> None:
    report = read(dsn(
        "Final-Recipient: rfc822; <Anna@StudioRossi.it>\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n  in table\n\n"
        "Final-Recipient: rfc822;luca@studiorossi.it\nAction: delayed\nStatus: 4.4.7\n"))
    assert report.read_by == "delivery-status"
    assert report.recipients == (
        RecipientOutcome("anna@studiorossi.it", Action.FAILED, "5.1.1",
                         "550 5.1.1 user unknown in table"),
        RecipientOutcome("luca@studiorossi.it", Action.DELAYED, "4.4.7", ""))
    assert report.message_ids[0] == OURS
    assert report.outbox_id is None


def test_the_return_path_names_the_row_and_a_forged_one_nothing() -> None:
    ours = bounce_address(HELPDESK, "test-secret", 42)
    block = "Final-Recipient: rfc822; anna@studiorossi.it\nStatus: 5.2.2\n"
    assert read(dsn(block, to=ours)).outbox_id == 42
    assert read(dsn(block), envelope_to=(ours,)).outbox_id == 42
    assert read(dsn(block, to=ours.replace("+b42.", "+b43."))).outbox_id is None
    # No Action: the status says it.
    assert read(dsn(block)).recipients[0].action == Action.FAILED


def test_x_failed_recipients_and_prose_read_by_flufl_bounce() -> None:
    exim = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
            b"To: assistenza@example.com\nSubject: Mail delivery failed\n"
            b"X-Failed-Recipients: anna@studiorossi.it, luca@studiorossi.it\n\n"
            b"A message that you sent could not be delivered.\n")
    assert [(r.address, r.action) for r in read(exim).recipients] == [
        ("anna@studiorossi.it", Action.FAILED), ("luca@studiorossi.it", Action.FAILED)]
    qmail = (b"From: MAILER-DAEMON@mx.example.net\nTo: assistenza@example.com\n"
             b"Subject: failure notice\n\n"
             b"Hi. This is the qmail-send program at mx.example.net.\n"
             b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
             b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
             b"<anna@studiorossi.it>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
             b"--- Below this line is a copy of the message.\n\n"
             b"Message-ID: <" + OURS.encode() + b">\nSubject: x\n\nbody\n")
    report = read(qmail)
    assert report.read_by == "flufl.bounce"
    assert [(r.address, r.action) for r in report.recipients] == [
        ("anna@studiorossi.it", Action.FAILED)]
    assert report.message_ids == (OURS,)


SENT = (SentMail(7, OURS, ("anna@studiorossi.it", "collega@studiorossi.it")),
        SentMail(3, "mg.older@example.com", ("anna@studiorossi.it",)))


def test_the_failed_recipient_of_the_returned_mail() -> None:
    failed = RecipientOutcome("anna@studiorossi.it", Action.FAILED, "5.1.1")
    assert correlate(BounceReport(None, (OURS,), (failed,), "x"), SENT) == (
        BounceMatch(7, failed),)
    # Nothing but the recipient: the latest mail to it.
    assert correlate(BounceReport(None, (), (failed,), "x"), SENT) == (BounceMatch(7, failed),)
    # A delay names no mail: not tied by its recipient alone.
    delayed = RecipientOutcome("anna@studiorossi.it", Action.DELAYED)
    assert correlate(BounceReport(None, (), (delayed,), "x"), SENT) == ()


def test_a_report_for_another_address_or_none_is_the_customer_s() -> None:
    alias = RecipientOutcome("anna.bianchi@mx.studiorossi.it", Action.FAILED, "5.1.1", "gone")
    [match] = correlate(BounceReport(7, (), (alias,), "x"), SENT)
    assert (match.outbox_id, match.outcome.address) == (7, "anna@studiorossi.it")
    assert "anna.bianchi@mx.studiorossi.it" in match.outcome.diagnostic
    [unread] = correlate(BounceReport(3, (), (), ""), SENT)
    assert unread.outcome == RecipientOutcome("anna@studiorossi.it", Action.FAILED, "", UNREAD)
    relayed = RecipientOutcome("anna@studiorossi.it", "relayed")
    assert correlate(BounceReport(7, (), (relayed,), "x"), SENT) == ()


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    engine = create_db_engine(settings.database)
    try:
        with session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _row(session: Session, clock: FixedClock, message_id: str, recipients: list[str],
         status: str = OutboxStatus.SENT.value) -> int:
    row = OutboxMail(created_at=clock.now(), kind="answer", automatic=False,
                     mail_from=HELPDESK, recipients=recipients, message_id=message_id,
                     status=status, attempts=1, next_attempt_at=clock.now())
    session.add(row)
    session.flush()
    return row.id


def test_the_rows_a_report_may_be_about(session: Session, clock: FixedClock) -> None:
    old = _row(session, clock, "mg.old@example.com", ["anna_b%@studiorossi.it"])
    clock.advance(days=20)
    first = _row(session, clock, "mg.first@example.com", ["anna_b%@studiorossi.it", "x@y.it"])
    latest = _row(session, clock, "mg.latest@example.com", ["anna_b%@studiorossi.it"])
    _row(session, clock, "mg.waiting@example.com", ["anna_b%@studiorossi.it"],
         OutboxStatus.PENDING.value)
    _row(session, clock, "mg.like@example.com", ["annaxbx@studiorossi.it"])
    session.commit()
    failed = (RecipientOutcome("anna_b%@studiorossi.it", Action.FAILED),)
    now = clock.now()
    ids = [s.id for s in read_sent_mails(session, BounceReport(first, (), failed, ""), now)]
    assert ids == [first]
    ids = [s.id for s in read_sent_mails(
        session, BounceReport(None, ("mg.old@example.com", "other@x"), failed, ""), now)]
    assert ids == [old]
    # Neither named: the latest mail sent to the recipient, within two weeks.
    ids = [s.id for s in read_sent_mails(session, BounceReport(None, (), failed, ""), now)]
    assert ids == [latest]
    clock.advance(days=15)
    assert read_sent_mails(session, BounceReport(None, (), failed, ""), clock.now()) == ()


def test_a_customer_writing_through_a_list_opens_a_ticket_unanswered(gateway: Gateway) -> None:
    register_desk(gateway)
    assert deliver(gateway, build_mail(sender=PERSON, headers={
        "List-Id": "<clienti.studiorossi.it>"})) == "processed"
    stranger = build_mail(sender="chi@altrove.it", headers={"List-Id": "<x.altrove.it>"})
    assert deliver(gateway, stranger) == "ignored"
    with gateway.sessions() as session:
        kinds = {m.kind for m in session.query(OutboxMail)}
    assert kinds == {"new_ticket_notice"}


def test_an_amazon_ses_notification_bare_or_inside_sns() -> None:
    inner = json.dumps({
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bouncedRecipients": [
            {"emailAddress": "Anna@StudioRossi.it", "action": "failed", "status": "5.1.1",
             "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"headers": [{"name": "Message-ID", "value": f"<{OURS}>"}]}})
    for body in (inner, json.dumps({"Type": "Notification", "Message": inner})):
        raw = ("From: no-reply@sns.amazonaws.com\nTo: assistenza@example.com\n"
               f"Subject: AWS Notification Message\n\n{body}\n").encode()
        report = read(raw)
        assert report.read_by == "Amazon SES notification"
        assert report.recipients == (RecipientOutcome(
            "anna@studiorossi.it", Action.FAILED, "5.1.1", "550 5.1.1 user unknown"),)
        assert report.message_ids == (OURS,)
