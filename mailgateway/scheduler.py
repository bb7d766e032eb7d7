"""What time alone makes due: the reminder, the auto-close, the overdue signal.

The desk's guide promises that a ticket the customer leaves unanswered for
seven days "verrà chiuso d'ufficio", and an answer to every request within 24
hours. A pass asks, at a given instant, which tickets time has made due (a few
indexed queries, then `what_is_due`, pure, on each), and handles each due
ticket with the same ticket, event and outbox code the pipeline uses, a few
tickets per transaction: a crash leaves each ticket fully handled or
untouched, and the next pass at the same instant finds nothing more to do.

Each ticket is locked before it is handled and `what_is_due` asked again
under the lock, so several gateways on one PostgreSQL (`FOR UPDATE SKIP
LOCKED`) or several passes on one SQLite (its write lock) act on a ticket
once. The clock of the reminder and the auto-close runs from the ticket's
latest technician answer (`answered_at`): a customer reply and a new answer
start another seven days.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload

from mailgateway.clock import Clock
from mailgateway.config import SchedulerSettings, Settings
from mailgateway.db.dialect import claimed, reading, write_lock
from mailgateway.db.models import Ticket, TicketStatus
from mailgateway.db.session import session_factory
from mailgateway.leadership import Leadership
from mailgateway.outbound.addressing import (
    conversations,
    customer_recipients,
    group_recipients,
    thread_headers,
)
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.outbound.queue import enqueue
from mailgateway.passes import Passes
from mailgateway.store import SessionStore
from mailgateway.telemetry import TALLY
from mailgateway.tickets import OPEN_STATES, TicketAction, change_status, record_event

log = structlog.get_logger(__name__)

ACTOR = "scheduler"
_TICKETS_PER_TRANSACTION = 50


class Due(StrEnum):
    REMINDER = "reminder"    # RISPOSTO for reminder_days: the customer is reminded
    AUTOCLOSE = "autoclose"  # RISPOSTO for autoclose_days: CHIUSO, the customer told
    OVERDUE = "overdue"      # no technician answer by due_at: the group told


def what_is_due(ticket: Ticket, now: datetime, settings: SchedulerSettings) -> Due | None:
    """What time has made due on `ticket` at `now`, if anything."""
    if ticket.status == TicketStatus.RISPOSTO and ticket.answered_at is not None:
        if now >= ticket.answered_at + timedelta(days=settings.autoclose_days):
            return Due.AUTOCLOSE
        reminder = ticket.answered_at + timedelta(days=settings.reminder_days)
        if now >= reminder and ticket.reminded_at is None:
            return Due.REMINDER
        return None
    if (ticket.status in OPEN_STATES and ticket.answered_at is None
            and ticket.overdue_signalled_at is None
            and ticket.due_at is not None and now >= ticket.due_at):
        return Due.OVERDUE
    return None


def due_candidates(session: Session, now: datetime, settings: SchedulerSettings) -> list[int]:
    """The ids of the tickets that may be due, from the scheduler's two partial
    indexes (`db.models`); `what_is_due` decides."""
    reminded = now - timedelta(days=settings.reminder_days)
    closing = now - timedelta(days=settings.autoclose_days)
    risposto = select(Ticket.id).where(
        Ticket.status == TicketStatus.RISPOSTO.value, Ticket.answered_at <= reminded,
        (Ticket.reminded_at.is_(None)) | (Ticket.answered_at <= closing))
    unanswered = select(Ticket.id).where(
        Ticket.answered_at.is_(None), Ticket.overdue_signalled_at.is_(None),
        Ticket.status != TicketStatus.CHIUSO.value, Ticket.due_at <= now)
    ids = set(session.scalars(risposto)) | set(session.scalars(unanswered))
    return sorted(ids)


@dataclass(frozen=True)
class Handled:
    number: str
    due: Due


def run_pass(
    engine: Engine, settings: Settings, clock: Clock,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Handled]:
    """One pass at `clock.now()`: every due ticket handled; stops between
    transactions when `should_stop()` turns true."""
    now = clock.now()
    sessions, writing = session_factory(engine), write_lock(engine)
    with session_factory(reading(engine))() as session:
        candidates = due_candidates(session, now, settings.scheduler)
    handled: list[Handled] = []
    for start in range(0, len(candidates), _TICKETS_PER_TRANSACTION):
        if should_stop():
            break
        batch = candidates[start:start + _TICKETS_PER_TRANSACTION]
        with writing, sessions.begin() as session:
            handled += _handle(session, settings, clock, now, batch)
    if handled:
        log.info("scheduler_pass", handled=len(handled),
                 **{d.value: sum(h.due is d for h in handled) for d in Due})
    return handled


def _handle(
    session: Session, settings: Settings, clock: Clock, now: datetime, ids: Sequence[int]
) -> list[Handled]:
    """Lock the tickets (skipping those another pass holds) and handle each that is
    still due."""
    store = SessionStore(session)
    people = (selectinload(Ticket.account), selectinload(Ticket.person),
              selectinload(Ticket.assignee))  # not joined: a row lock takes no outer join
    tickets = session.scalars(claimed(
        select(Ticket).options(*people).where(Ticket.id.in_(ids)).order_by(Ticket.id), session)
    ).all()
    due = {t.id: d for t in tickets if (d := what_is_due(t, now, settings.scheduler))}
    # Read before anything is written, and written at the commit: a query between two
    # tickets would otherwise write what the first one added first.
    threads = conversations(session, [t for t in tickets if t.id in due])
    groups = {g: group_recipients(session, settings, g)
              for g in {t.group for t in tickets if due.get(t.id) is Due.OVERDUE}}
    handled = []
    with session.no_autoflush:
        for ticket in tickets:
            if ticket.id not in due:
                continue
            structlog.contextvars.bind_contextvars(ticket=ticket.number)
            try:
                work = _Work(store, settings, clock, now, threads[ticket.id], groups)
                _ACTIONS[due[ticket.id]](work, ticket)
            finally:
                structlog.contextvars.unbind_contextvars("ticket")
            handled.append(Handled(ticket.number, due[ticket.id]))
    return handled


@dataclass(frozen=True)
class _Work:
    """What handling one due ticket needs, read for the whole transaction beforehand."""

    store: SessionStore
    settings: Settings
    clock: Clock
    now: datetime
    thread: list[str]  # the ticket's conversation, oldest first
    groups: dict[str | None, tuple[str, ...]]  # whom each group's notices go to


def _to_customer(work: _Work, ticket: Ticket, kind: MailKind, **context: object) -> None:
    to, cc = customer_recipients(ticket)
    in_reply_to, references = thread_headers(work.thread)
    enqueue(work.store, work.settings, work.clock, MailIntent(
        kind=kind, to=to, cc=cc, language=ticket.language, in_reply_to=in_reply_to,
        references=references, context=context), ticket)


def _remind(work: _Work, ticket: Ticket) -> None:
    assert ticket.answered_at is not None
    closes_at = ticket.answered_at + timedelta(days=work.settings.scheduler.autoclose_days)
    ticket.reminded_at = work.now
    record_event(work.store.session, ticket, Due.REMINDER.value, actor=ACTOR, at=work.now,
                 reason=f"closes at {closes_at.isoformat()} without a reply")
    _to_customer(work, ticket, MailKind.REMINDER, closes_at=closes_at)


def _autoclose(work: _Work, ticket: Ticket) -> None:
    change_status(work.store.session, ticket, TicketAction.AUTOCLOSED, actor=ACTOR,
                  at=work.now, reason="autoclosed")
    _to_customer(work, ticket, MailKind.AUTOCLOSE)


def _signal_overdue(work: _Work, ticket: Ticket) -> None:
    assert ticket.due_at is not None
    ticket.overdue_signalled_at = work.now
    record_event(work.store.session, ticket, Due.OVERDUE.value, actor=ACTOR, at=work.now,
                 reason=f"no technician answer by {ticket.due_at.isoformat()}")
    to = work.groups[ticket.group]
    if not to:
        log.warning("overdue_not_sent", reason="the ticket's group has no address and "
                    "no members", group=ticket.group)
        return
    in_reply_to, references = thread_headers(work.thread)
    for address in to:  # one mail each: its signed reply address names its recipient
        enqueue(work.store, work.settings, work.clock, MailIntent(
            kind=MailKind.OVERDUE, to=(address,), language=work.settings.helpdesk.language,
            in_reply_to=in_reply_to, references=references), ticket)


_ACTIONS = {Due.REMINDER: _remind, Due.AUTOCLOSE: _autoclose, Due.OVERDUE: _signal_overdue}


class Scheduler:
    """`serve`'s scheduler: a pass every `scheduler.interval_seconds`, by one gateway at
    a time among those sharing the database (`Leadership`): a gateway whose turn is
    taken skips that pass."""

    def __init__(self, engine: Engine, settings: Settings, clock: Clock) -> None:
        self._engine, self._settings, self._clock = engine, settings, clock
        self._leadership = Leadership(engine, "scheduler")
        self._passes = Passes("scheduler", self._pass,
                              interval=settings.scheduler.interval_seconds)

    def _pass(self) -> None:
        if not self._leadership.acquire():
            log.debug("scheduler_pass_skipped", reason="another gateway's pass is running")
            return
        started = time.perf_counter()
        try:
            run_pass(self._engine, self._settings, self._clock, self._passes.stopping)
        finally:
            self._leadership.release()
            TALLY.scheduler_pass(time.perf_counter() - started)

    async def run(self, stopping: asyncio.Event) -> None:
        await self._passes.run(stopping)
