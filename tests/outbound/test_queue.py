"""Queueing outbound mail inside the caller's transaction, and the auto-answer limiter."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import AutoAnswer, OutboxMail, OutboxStatus, ThreadRef, Ticket
from mailgateway.outbound.compose import compose_queued
from mailgateway.outbound.intent import MailIntent, MailKind, stored_intent
from mailgateway.outbound.queue import enqueue, purge_auto_answers
from mailgateway.store import SessionStore
from tests.outbound.conftest import TicketFactory, outbox_ids


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(OutboxMail)) or 0


def _rendered(settings: Settings, clock: FixedClock, session: Session, message_id: str
              ) -> EmailMessage:
    """The queued row as the dispatcher will send it."""
    row = session.scalars(select(OutboxMail).where(OutboxMail.message_id == message_id)).one()
    assert row is not None and row.raw is None and row.intent is not None
    raw = compose_queued(settings, clock, row.intent, row.message_id)
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
        in_reply_to="first@studiorossi.it",
        references=("first@studiorossi.it",),
        context={"body": "Errore 98,20", "refused_attachments": ["log.txt"]},
    )
    with sessions.begin() as session:
        row = enqueue(SessionStore(session), settings, clock, intent, ticket)
        assert row is not None
        message_id = row.message_id
    [outbox_id] = outbox_ids(sessions, [message_id])

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
        message = _rendered(settings, clock, session, message_id)
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
        context={"body": "Risposta"},
    )
    with sessions() as session:
        assert enqueue(SessionStore(session), settings, clock, intent, ticket) is not None
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
            queued += enqueue(SessionStore(session), settings, clock, intent) is not None
        clock.advance(seconds=5)
    assert queued == settings.outbound.auto_answer_limit == 10
    assert _count(sessions) == 10

    other = MailIntent(kind=MailKind.UNKNOWN_SENDER, to=("someone@altrove.it",), language="en")
    with sessions.begin() as session:
        assert enqueue(SessionStore(session), settings, clock, other) is not None

    clock.advance(minutes=settings.outbound.auto_answer_window_minutes)
    with sessions.begin() as session:
        assert enqueue(SessionStore(session), settings, clock, intent) is not None


@pytest.mark.usefixtures("every_log_level")
def test_limit_holds_within_one_transaction(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    """And says so once: a batch that meets the limit warns once per address."""
    intent = MailIntent(kind=MailKind.REJECTED, to=("loop@altrove.it",), language="it")
    with capture_logs() as logs, sessions.begin() as session:
        results = [enqueue(SessionStore(session), settings, clock, intent) for _ in range(13)]
    assert sum(r is not None for r in results) == 10
    limited = [e for e in logs if e["event"] == "auto_answer_rate_limited"]
    assert [e["log_level"] for e in limited] == ["warning", "info", "info"]
    assert limited[0]["recipients"] == ["loop@altrove.it"]


@pytest.mark.usefixtures("every_log_level")
def test_the_limit_is_reported_once_per_address_and_window(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    """Not once per transaction: a listener taking one mail a transaction, or a bulk
    import taking batches, warns of a looping address once in the limiter's window."""
    loop = MailIntent(kind=MailKind.REJECTED, to=("loop@altrove.it",), language="it")
    other = MailIntent(kind=MailKind.REJECTED, to=("robot@altrove.it",), language="it")
    with capture_logs() as logs:
        for _ in range(14):
            with sessions.begin() as session:
                enqueue(SessionStore(session), settings, clock, loop)
                enqueue(SessionStore(session), settings, clock, other)
            clock.advance(seconds=30)
        clock.advance(minutes=settings.outbound.auto_answer_window_minutes)
        for _ in range(12):
            with sessions.begin() as session:
                enqueue(SessionStore(session), settings, clock, loop)
    warnings = [e["recipients"] for e in logs
                if e["event"] == "auto_answer_rate_limited" and e["log_level"] == "warning"]
    assert warnings == [["loop@altrove.it"], ["robot@altrove.it"], ["loop@altrove.it"]]
    infos = [e for e in logs
             if e["event"] == "auto_answer_rate_limited" and e["log_level"] == "info"]
    assert len(infos) == 3 * 2 + 1


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
        context={"body": "Ecco"},
    )
    with sessions.begin() as session:
        store = SessionStore(session)
        assert all(enqueue(store, settings, clock, intent, ticket) for _ in range(15))
    assert _count(sessions) == 15


def test_reminders_of_many_tickets_to_one_customer_are_not_limited(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    """The limit brakes answers to mail received (a robot could answer back); what time
    sends, a reminder per ticket, answers nothing and goes whatever the count."""
    ticket = make_ticket()
    reminder = MailIntent(kind=MailKind.REMINDER, to=("owner@studiorossi.it",), language="it")
    with sessions.begin() as session:
        store = SessionStore(session)
        assert all(enqueue(store, settings, clock, reminder, ticket) for _ in range(15))


def test_a_limited_cc_is_dropped_and_the_mail_still_goes(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    ticket = make_ticket()
    busy = MailIntent(kind=MailKind.ACKNOWLEDGMENT, to=("watcher@studiorossi.it",),
                      language="it")
    with sessions.begin() as session:
        for _ in range(10):
            enqueue(SessionStore(session), settings, clock, busy, ticket)
        row = enqueue(
            SessionStore(session),
            settings,
            clock,
            MailIntent(
                kind=MailKind.ACKNOWLEDGMENT,
                to=("owner@studiorossi.it",),
                cc=("watcher@studiorossi.it",),
                language="it",
            ),
            ticket,
        )
        assert row is not None
        assert row.recipients == ("owner@studiorossi.it",)
    with sessions() as session:
        assert _rendered(settings, clock, session, row.message_id)["Cc"] is None


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
        assert enqueue(SessionStore(session), settings, clock, intent) is None
    assert _count(sessions) == 0

    # Nor a notice: it would come back to the desk and be dropped as a loop.
    ticket = make_ticket()
    notice = MailIntent(
        kind=MailKind.NEW_TICKET_NOTICE,
        to=("assistenza@example.com", "luca@example.com"),
        language="it",
        context={"body": "x"},
    )
    with sessions.begin() as session:
        row = enqueue(SessionStore(session), settings, clock, notice, ticket)
        assert row is not None and row.recipients == ("luca@example.com",)


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
        row = enqueue(SessionStore(session), settings, clock, intent)
        assert row is not None
        session.flush()
        assert session.scalar(select(OutboxMail.ticket_id)) is None
        assert session.scalar(select(func.count()).select_from(ThreadRef)) == 0
    with sessions() as session:
        message = _rendered(settings, clock, session, row.message_id)
    assert message["Subject"] == "Address not registered with Assistenza AM"
    assert message["In-Reply-To"] == "<their@altrove.it>"


def test_purge_forgets_answers_older_than_the_window(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    intent = MailIntent(kind=MailKind.UNKNOWN_SENDER, to=("robot@altrove.it",), language="it")
    for _ in range(3):
        with sessions.begin() as session:
            enqueue(SessionStore(session), settings, clock, intent)
    clock.advance(minutes=settings.outbound.auto_answer_window_minutes)
    with sessions.begin() as session:
        enqueue(SessionStore(session), settings, clock, intent)
    with sessions.begin() as session:
        assert purge_auto_answers(session, settings, clock.now()) == 3
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AutoAnswer)) == 1


def test_the_mail_tells_the_ticket_as_it_was_when_queued(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    make_ticket: TicketFactory,
) -> None:
    """The row keeps a snapshot: a ticket that moves on before the mail goes out does not
    change what the mail says, and its dates stay dates for the templates."""
    ticket = make_ticket()
    intent = MailIntent(kind=MailKind.NEW_TICKET_NOTICE, to=("gruppo@example.com",),
                        language="it",
                        context={"body": "Errore 98,20", "author": "niccolo@studiorossi.it"})
    with sessions.begin() as session:
        row = enqueue(SessionStore(session), settings, clock, intent, ticket)
        assert row is not None
    with sessions.begin() as session:
        stored = session.get(Ticket, ticket.id)
        assert stored is not None
        stored.subject, stored.impact = "Cambiato dopo", "difficolta"
    clock.advance(days=2)
    with sessions() as session:
        queued = session.get(OutboxMail, outbox_ids(sessions, [row.message_id])[0])
        assert queued is not None and queued.intent is not None
        assert stored_intent(queued.intent).intent.context["created_at"] == ticket.created_at
        message = _rendered(settings, clock, session, row.message_id)
    assert message["Message-ID"] == f"<{row.message_id}>"
    assert str(message["Subject"]).endswith(ticket.subject)
    text = message.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "Impatto: Sono bloccato" in content
    assert "Prima risposta entro il " in content  # due_at, formatted as a date
