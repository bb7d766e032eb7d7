"""The store seam: a plain session, made by nobody but SQLAlchemy, commits every row
a mail causes; the batch store makes what the plain one makes, in a bulk import and
in a processor's backlog (on PostgreSQL a processor takes waiting mails together)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import (
    Attachment,
    AutoAnswer,
    Event,
    InboxMail,
    Message,
    OutboxMail,
    ThreadRef,
    Ticket,
)
from mailgateway.ingest.batch import receive_batch
from mailgateway.pipeline.parse import parse_mail
from mailgateway.pipeline.prepare import finding_settings, prepare_mail
from mailgateway.pipeline.process import process_inbox_mail
from mailgateway.service import BATCH_AT_MOST, Gateway
from mailgateway.store import SessionStore
from tests.mails import CUSTOMER, build_mail, failing_mailer, inbox_fates, register_desk

_COUNTED = (Ticket, Message, Attachment, Event, OutboxMail, ThreadRef, AutoAnswer)


def _counts(gateway: Gateway) -> dict[str, int]:
    with gateway.sessions() as session:
        return {model.__name__: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for model in _COUNTED}


def _process_in_plain_session(gateway: Gateway, raw: bytes) -> str:
    received = gateway.receive(raw, transport="pipe")
    with Session(gateway.engine) as session, session.begin():
        row = session.get(InboxMail, received.inbox_id)
        assert row is not None
        process_inbox_mail(SessionStore(session), gateway.pipeline, row, parse_mail(raw))
        return row.status


def _conversation() -> list[bytes]:
    """A request, then a reply to it with a file, then a reply by its tag."""
    return [
        build_mail(message_id="request@client.test"),
        build_mail(sender=CUSTOMER, subject="Re: Errore 98,20 su MOCO", body="Ecco il log.",
                   in_reply_to="request@client.test", references=["request@client.test"],
                   attachments=[("log.txt", b"errore 98,20\n", "text/plain")]),
        build_mail(subject="R: [Ticket#2026-000001] Errore", body="Ancora nulla?"),
    ]


# What the conversation causes, however it is processed.
_EXPECTED = {
    "Ticket": 1, "Message": 3, "Attachment": 1,
    "Event": 3,  # created, two customer replies
    "OutboxMail": 4,  # acknowledgment and notice, then a notice per reply
    "ThreadRef": 7,  # the three mails' ids and the four outbox rows' ids
    "AutoAnswer": 1,  # the acknowledgment
}


def _check_conversation(gateway: Gateway) -> None:
    assert _counts(gateway) == _EXPECTED
    with gateway.sessions() as session:
        [ticket] = session.scalars(select(Ticket))
        assert [m.body for m in ticket.messages][1:] == ["Ecco il log.", "Ancora nulla?"]
        assert [a.filename for a in ticket.messages[1].attachments] == ["log.txt"]
        assert {r.ticket_id for r in session.scalars(select(ThreadRef))} == {ticket.id}
        assert [e.kind for e in ticket.events] == ["created", "customer_replied",
                                                   "customer_replied"]


def test_a_plain_session_commits_every_row_a_mail_causes(gateway: Gateway) -> None:
    register_desk(gateway)
    assert [_process_in_plain_session(gateway, raw) for raw in _conversation()] == [
        "processed"] * 3
    _check_conversation(gateway)


def test_the_batch_store_writes_what_the_plain_store_writes(gateway: Gateway) -> None:
    register_desk(gateway)
    settings = finding_settings(gateway.settings)
    outcomes = receive_batch(
        gateway, [prepare_mail(raw, settings) for raw in _conversation()], "import")
    assert [o.status for o in outcomes] == ["processed"] * 3
    _check_conversation(gateway)


def _store_all(gateway: Gateway, mails: list[bytes]) -> None:
    for raw in mails:
        gateway.receive(raw, transport="smtp")


def _process_backlog(gateway: Gateway) -> tuple[int, int]:
    """(mails processed, batches done again mail by mail)."""
    with capture_logs() as logs:
        handled = gateway.process_pending()
    return handled, sum(e["event"].startswith("a mail of the batch failed") for e in logs)


@pytest.mark.usefixtures("every_log_level")
def test_a_backlog_makes_what_one_mail_at_a_time_makes(gateway: Gateway) -> None:
    """The reply finds the ticket its request opened a moment before, in the same
    transaction, and the tag finds it too."""
    register_desk(gateway)
    _store_all(gateway, _conversation())
    assert _process_backlog(gateway) == (3, 0)
    _check_conversation(gateway)


@pytest.mark.usefixtures("every_log_level")
def test_a_request_sent_twice_at_once_is_seen_as_repeated(
    settings: Settings, clock: FixedClock
) -> None:
    """A double click on "send": the second copy (another Message-ID) reads the first's
    ticket, opened earlier in the same batch, as a recent open ticket of the account."""
    gateway = Gateway(replace(settings, duplicates=replace(settings.duplicates,
                                                           action="thread")), clock)
    try:
        register_desk(gateway)
        _store_all(gateway, [build_mail(), build_mail()])
        assert _process_backlog(gateway) == (2, 0)
        assert inbox_fates(gateway) == [("processed", "2026-000001"),
                                        ("processed", "2026-000001")]
    finally:
        gateway.close()


@pytest.mark.usefixtures("every_log_level")
def test_a_mail_failing_in_a_backlog_is_quarantined_alone(
    settings: Settings, clock: FixedClock
) -> None:
    gateway = Gateway(settings, clock, mailer=failing_mailer(settings, clock))
    try:
        register_desk(gateway)
        subjects = [f"Richiesta {n}" for n in range(BATCH_AT_MOST + 5)]
        _store_all(gateway, [build_mail(subject=subject, body="BOOM" if n == 3 else
                                        f"Il modulo {n} non si apre.")
                             for n, subject in enumerate(subjects)])
        # On PostgreSQL the first batch fails and is done again mail by mail.
        redone = 1 if gateway.engine.dialect.name == "postgresql" else 0
        assert _process_backlog(gateway) == (len(subjects), redone)
        fates = inbox_fates(gateway)
        assert fates[3] == ("quarantined", None)
        others = fates[:3] + fates[4:]
        assert others == [("processed", f"2026-{n:06d}") for n in range(1, len(subjects))]
        with gateway.sessions() as session:
            reason = session.execute(
                select(InboxMail.reason).where(InboxMail.status == "quarantined")).scalar_one()
            assert session.scalar(select(func.count()).select_from(Ticket)) == len(others)
        assert reason == "RuntimeError: the template engine exploded"
    finally:
        gateway.close()

