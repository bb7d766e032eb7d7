"""Queueing outbound mail inside the caller's transaction, and the auto-answer limiter."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import AutoAnswer, OutboxMail, OutboxStatus, ThreadRef
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.outbound.queue import enqueue, purge_auto_answers
from tests.outbound.conftest import TicketFactory


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(OutboxMail)) or 0


def _parse(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)


def test_enqueue_writes_the_row_and_its_thread_ref(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    ticket = make_ticket()
    assert ticket.person is not None
    intent = MailIntent(
        kind=MailKind.ACKNOWLEDGMENT,
        to=(ticket.person.email,),
        cc=("segreteria@studiorossi.it", ticket.person.email.upper()),
        language="it",
        ticket_id=ticket.id,
        in_reply_to="first@studiorossi.it",
        references=("first@studiorossi.it",),
        context={"body": "Errore 98,20", "refused_attachments": ["log.txt"]},
    )
    with sessions.begin() as session:
        row = enqueue(session, settings, clock, intent)
        assert row is not None
        outbox_id, message_id = row.id, row.message_id

    with sessions() as session:
        stored = session.get(OutboxMail, outbox_id)
        assert stored is not None
        assert stored.status == OutboxStatus.PENDING
        assert stored.next_attempt_at == clock.now()
        assert stored.created_at == clock.now()
        assert stored.attempts == 0 and stored.claimed_until is None
        assert stored.recipients == [ticket.person.email, "segreteria@studiorossi.it"]
        assert stored.mail_from == "assistenza@example.com"
        assert stored.kind == "acknowledgment" and stored.automatic
        assert stored.ticket_id == ticket.id
        ref = session.get(ThreadRef, message_id)
        assert ref is not None and ref.ticket_id == ticket.id
        message = _parse(stored.raw)
    assert message["Message-ID"] == f"<{message_id}>"
    assert message["Cc"] == "segreteria@studiorossi.it"
    assert message["Subject"] == f"[Ticket#{ticket.number}] {ticket.subject}"
    text = message.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "Gentile Niccolò Bianchi" in content
    assert "Multi / Lynfa Studio (Cod. 2)" in content
    assert "Sono bloccato" in content
    assert "log.txt" in content
    assert "> Errore 98,20" in content


def test_enqueue_does_not_commit(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    ticket = make_ticket()
    intent = MailIntent(
        kind=MailKind.ANSWER,
        to=("x@studiorossi.it",),
        language="it",
        ticket_id=ticket.id,
        context={"body": "Risposta"},
    )
    with sessions() as session:
        assert enqueue(session, settings, clock, intent) is not None
        session.rollback()
    assert _count(sessions) == 0


def test_fifty_automatic_mails_to_one_address_queue_ten(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(
        kind=MailKind.UNKNOWN_SENDER,
        to=("Robot@Altrove.it",),
        language="it",
        context={"subject": "Out of office"},
    )
    queued = 0
    for _ in range(50):
        with sessions.begin() as session:
            queued += enqueue(session, settings, clock, intent) is not None
        clock.advance(seconds=5)
    assert queued == settings.outbound.auto_answer_limit == 10
    assert _count(sessions) == 10

    other = MailIntent(kind=MailKind.UNKNOWN_SENDER, to=("someone@altrove.it",), language="en")
    with sessions.begin() as session:
        assert enqueue(session, settings, clock, other) is not None

    clock.advance(minutes=settings.outbound.auto_answer_window_minutes)
    with sessions.begin() as session:
        assert enqueue(session, settings, clock, intent) is not None


def test_limit_holds_within_one_transaction(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(kind=MailKind.REJECTED, to=("loop@altrove.it",), language="it")
    with sessions.begin() as session:
        results = [enqueue(session, settings, clock, intent) for _ in range(12)]
    assert sum(r is not None for r in results) == 10


def test_mails_written_by_technicians_are_not_limited(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    ticket = make_ticket()
    intent = MailIntent(
        kind=MailKind.ANSWER,
        to=("cliente@studiorossi.it",),
        language="it",
        ticket_id=ticket.id,
        context={"body": "Ecco"},
    )
    with sessions.begin() as session:
        assert all(enqueue(session, settings, clock, intent) for _ in range(15))
    assert _count(sessions) == 15


def test_a_limited_cc_is_dropped_and_the_mail_still_goes(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    ticket = make_ticket()
    busy = MailIntent(
        kind=MailKind.REMINDER, to=("watcher@studiorossi.it",), language="it", ticket_id=ticket.id
    )
    with sessions.begin() as session:
        for _ in range(10):
            enqueue(session, settings, clock, busy)
        row = enqueue(
            session,
            settings,
            clock,
            MailIntent(
                kind=MailKind.REMINDER,
                to=("owner@studiorossi.it",),
                cc=("watcher@studiorossi.it",),
                language="it",
                ticket_id=ticket.id,
            ),
        )
        assert row is not None
        assert row.recipients == ("owner@studiorossi.it",)
        assert _parse(row.raw)["Cc"] is None


def test_no_automatic_answer_to_our_own_address(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    intent = MailIntent(
        kind=MailKind.UNKNOWN_SENDER,
        to=("Assistenza+c2026-1.abc@example.com", "assistenza@example.com"),
        language="it",
    )
    with sessions.begin() as session:
        assert enqueue(session, settings, clock, intent) is None
    assert _count(sessions) == 0

    # A notice to the desk's own address (no group address configured) is deliberate.
    ticket = make_ticket()
    notice = MailIntent(
        kind=MailKind.NEW_TICKET_NOTICE,
        to=(settings.group_address(None),),
        language="it",
        ticket_id=ticket.id,
        context={"body": "x"},
    )
    with sessions.begin() as session:
        row = enqueue(session, settings, clock, notice)
        assert row is not None and row.recipients == ("assistenza@example.com",)


def test_a_ticketless_mail_has_no_thread_ref(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(
        kind=MailKind.UNKNOWN_SENDER,
        to=("ignoto@altrove.it",),
        language="en",
        in_reply_to="their@altrove.it",
        context={"subject": "Help"},
    )
    with sessions.begin() as session:
        row = enqueue(session, settings, clock, intent)
        assert row is not None and row.ticket_id is None
        assert session.scalar(select(func.count()).select_from(ThreadRef)) == 0
    message = _parse(row.raw)
    assert message["Subject"] == "Address not registered: Help"
    assert message["In-Reply-To"] == "<their@altrove.it>"


def test_an_unknown_ticket_is_a_programming_error(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(kind=MailKind.ANSWER, to=("a@b.it",), language="it", ticket_id=999_999)
    with sessions() as session, pytest.raises(ValueError, match="999999"):
        enqueue(session, settings, clock, intent)


def test_purge_forgets_answers_older_than_the_window(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(kind=MailKind.UNKNOWN_SENDER, to=("robot@altrove.it",), language="it")
    for _ in range(3):
        with sessions.begin() as session:
            enqueue(session, settings, clock, intent)
    clock.advance(minutes=settings.outbound.auto_answer_window_minutes)
    with sessions.begin() as session:
        enqueue(session, settings, clock, intent)
    with sessions.begin() as session:
        assert purge_auto_answers(session, settings, clock.now()) == 3
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AutoAnswer)) == 1
