"""The ticket state machine, numbering and the event trail.

The allowed transitions are data (a table mirroring the desk's guide), so a
change of policy is a change of one line, and every change of state goes
through `change_status`, which is the only place that makes an event for it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgateway.db.models import Event, Ticket, TicketCounter, TicketStatus
from mailgateway.solved import index_solved


class TicketAction(StrEnum):
    CREATED = "created"
    TAKEN = "taken"                   # a technician takes it in hand
    STAFF_ANSWERED = "staff_answered"
    CUSTOMER_REPLIED = "customer_replied"
    CLOSED = "closed"                 # by a technician or the customer
    AUTOCLOSED = "autoclosed"         # RISPOSTO too long without a customer reply


A, G, R, C = (TicketStatus.APERTO, TicketStatus.IN_GESTIONE, TicketStatus.RISPOSTO,
              TicketStatus.CHIUSO)
OPEN_STATES = frozenset({A, G, R})

# (action, from) → to. A pair missing here is not a transition (the status stays).
TRANSITIONS: dict[tuple[TicketAction, TicketStatus], TicketStatus] = {
    (TicketAction.TAKEN, A): G,
    (TicketAction.STAFF_ANSWERED, A): R,
    (TicketAction.STAFF_ANSWERED, G): R,
    (TicketAction.STAFF_ANSWERED, R): R,
    (TicketAction.CUSTOMER_REPLIED, R): G,
    (TicketAction.CUSTOMER_REPLIED, G): G,
    (TicketAction.CLOSED, A): C,
    (TicketAction.CLOSED, G): C,
    (TicketAction.CLOSED, R): C,
    (TicketAction.AUTOCLOSED, R): C,
}


def next_status(current: str, action: TicketAction) -> TicketStatus | None:
    """Where `action` takes a ticket in `current`; None when it does not move it."""
    return TRANSITIONS.get((action, TicketStatus(current)))


def change_status(
    session: Session, ticket: Ticket, action: TicketAction, *, actor: str, at: datetime,
    reason: str = "",
) -> Event | None:
    """Apply `action` and add its event; None (no event) when nothing moves."""
    target = next_status(ticket.status, action)
    if target is None:
        return None
    event = Event(ticket=ticket, at=at, actor=actor, kind=action.value,
                  from_status=ticket.status, to_status=target.value, reason=reason)
    session.add(event)
    ticket.status = target.value
    if target == TicketStatus.CHIUSO:
        ticket.closed_at = at
        index_solved(session, ticket)  # suggested to the next customer from now on
    if action == TicketAction.STAFF_ANSWERED:
        ticket.answered_at = at
        ticket.reminded_at = None
    ticket.updated_at = at
    return event


def record_created(
    session: Session, ticket: Ticket, *, actor: str, at: datetime, reason: str = ""
) -> Event:
    """The first event of a ticket: from no state to its first."""
    event = Event(ticket=ticket, at=at, actor=actor, kind=TicketAction.CREATED.value,
                  from_status=None, to_status=ticket.status, reason=reason)
    session.add(event)
    return event


def record_event(
    session: Session, ticket: Ticket, kind: str, *, actor: str, at: datetime, reason: str = ""
) -> Event:
    """Add an event that changes no state (creation, assignment, field change, refusal)."""
    ticket.updated_at = at
    event = Event(ticket=ticket, at=at, actor=actor, kind=kind,
                  from_status=ticket.status, to_status=ticket.status, reason=reason)
    session.add(event)
    return event


def format_number(year: int, sequence: int) -> str:
    return f"{year:04d}-{sequence:06d}"


def format_tag(ticket_tag: str, number: str) -> str:
    return ticket_tag.format(number=number)


def allocate_number(session: Session, year: int) -> str:
    """The next human-friendly number for `year`, unique across processes, no gaps.

    The counter row is incremented in the caller's transaction: PostgreSQL
    holds the row lock until commit, SQLite holds the database write lock
    (BEGIN IMMEDIATE), so two writers can never read the same value, and a
    transaction or savepoint that rolls back gives its numbers back.
    """
    last = session.execute(_INCREMENT, {"wanted": year}).scalar_one_or_none()
    if last is None:
        try:
            with session.begin_nested():
                session.add(TicketCounter(year=year, last=1))
            last = 1
        except IntegrityError:  # another writer created the year's row first
            last = session.execute(_INCREMENT, {"wanted": year}).scalar_one()
    return format_number(year, last)


_COUNTERS = cast(Table, TicketCounter.__table__)
_INCREMENT = (update(_COUNTERS).where(_COUNTERS.c.year == bindparam("wanted"))
              .values(last=_COUNTERS.c.last + 1).returning(_COUNTERS.c.last))


def full_number(number: str, year: int) -> str:
    """`12` is this year's `YYYY-000012`, as people say it; a full number stays."""
    value = number.strip()
    if value.isdigit() and len(value) <= 6:
        return format_number(year, int(value))
    return value


def find_by_number(session: Session, number: str) -> Ticket | None:
    return session.execute(select(Ticket).where(Ticket.number == number)).scalar_one_or_none()
