"""The ticket state machine, numbering and the event trail.

The allowed transitions are data (a table mirroring the desk's guide), so a
change of policy is a change of one line, and every change of state goes
through `change_status`, which is the only place that makes an event for it.
Events are rows to insert (`add_event`), not ORM objects: nothing reads them
back in the transaction that writes them, and a bulk import writes those of
a whole batch with one statement.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TypedDict, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailgateway.db.models import Event, Ticket, TicketCounter, TicketStatus
from mailgateway.db.session import execute_later, transaction_cache, write_later
from mailgateway.pipeline.thread import format_number


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


class EventRow(TypedDict):
    """The columns of one row of `events`."""

    ticket_id: int
    at: datetime
    actor: str
    kind: str
    from_status: str | None
    to_status: str | None
    reason: str


def change_status(
    ticket: Ticket, action: TicketAction, *, actor: str, at: datetime, reason: str = ""
) -> EventRow | None:
    """Apply `action`; return its event. Returns None (no event) if nothing moves."""
    target = next_status(ticket.status, action)
    if target is None:
        return None
    event = EventRow(ticket_id=ticket.id, at=at, actor=actor, kind=action.value,
                     from_status=ticket.status, to_status=target.value, reason=reason)
    if target != ticket.status:
        ticket.status = target.value
    if target == TicketStatus.CHIUSO:
        ticket.closed_at = at
    if action == TicketAction.STAFF_ANSWERED:
        ticket.answered_at = at
        ticket.reminded_at = None
    ticket.updated_at = at
    return event


def record_event(
    ticket: Ticket, kind: str, *, actor: str, at: datetime, reason: str = ""
) -> EventRow:
    """An event that changes no state (assignment, field change, refused mail)."""
    ticket.updated_at = at
    return EventRow(ticket_id=ticket.id, at=at, actor=actor, kind=kind,
                    from_status=ticket.status, to_status=ticket.status, reason=reason)


_INSERT_EVENT = insert(cast(Table, Event.__table__))


def add_event(session: Session, event: EventRow) -> None:
    """Write `event` with the session's next commit (or `db.session.write_later`)."""
    execute_later(session, _INSERT_EVENT, dict(event))


def allocate_number(session: Session, year: int) -> str:
    """The next human-friendly number for `year`, unique across processes, no gaps.

    The counter row is incremented in the caller's transaction: PostgreSQL
    holds the row lock until commit, SQLite holds the database write lock
    (BEGIN IMMEDIATE), so two writers can never read the same value. Holding
    it, the transaction counts on by itself after its first number and writes
    the counter with its other rows (`db.session.execute_later`); a savepoint
    that rolls back drops that write and the count, so the next number is read
    again from the row.
    """
    counted = transaction_cache(session, _COUNTED, forget_on_rollback=True)
    if year in counted:
        counted[year] += 1
        execute_later(session, _SET, {"wanted": year, "value": counted[year]})
        return format_number(year, counted[year])
    write_later(session)  # a count forgotten on rollback: the row must hold the rest first
    result = session.connection().execute(_INCREMENT, {"wanted": year}).scalar_one_or_none()
    if result is None:
        try:
            with session.begin_nested():
                session.add(TicketCounter(year=year, last=1))
            result = 1
        except IntegrityError:  # another writer created the year's row first
            result = session.connection().execute(_INCREMENT, {"wanted": year}).scalar_one()
    counted[year] = result
    return format_number(year, result)


_COUNTED = "ticket numbers"
_COUNTERS = cast(Table, TicketCounter.__table__)
# Built once, run on the connection: one statement for every ticket opened.
_INCREMENT = (
    update(_COUNTERS)
    .where(_COUNTERS.c.year == bindparam("wanted"))
    .values(last=_COUNTERS.c.last + 1)
    .returning(_COUNTERS.c.last)
)
_SET = update(_COUNTERS).where(_COUNTERS.c.year == bindparam("wanted")).values(
    last=bindparam("value"))


_TICKETS = cast(Table, Ticket.__table__)
_FREE_IDS = "free ticket ids"
_MOST_IDS_AT_ONCE = 32
_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('tickets', 'id')) FROM generate_series(1, :n)")


def new_ticket_id(session: Session) -> int:
    """The id of a ticket the transaction is about to write with its other rows.

    Knowing it before the row is written lets a batch of mails write all its
    tickets with one statement (`db.session.execute_later`), instead of one
    INSERT per ticket for its id. PostgreSQL takes ids from the column's
    sequence, one at first and twice as many each time the transaction needs
    more, so a transaction that opens one ticket wastes none. SQLite, whose
    write lock the transaction holds, counts on from the largest id. The count
    only goes up: the id of a ticket rolled back with a savepoint is never
    given again in the same transaction, where caches may still name it.
    """
    free = transaction_cache(session, _FREE_IDS)
    ids: list[int] = free.setdefault("ids", [])
    if not ids:
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            wanted = free["wanted"] = min(free.get("wanted", 0) * 2 or 1, _MOST_IDS_AT_ONCE)
            ids.extend(reversed(connection.execute(_NEXT_IDS, {"n": wanted}).scalars().all()))
        else:
            last = free.get("last")
            if last is None:
                last = connection.execute(select(func.max(_TICKETS.c.id))).scalar() or 0
            free["last"] = last + 1
            ids.append(last + 1)
    return ids.pop()


def find_by_number(session: Session, number: str) -> Ticket | None:
    return session.execute(select(Ticket).where(Ticket.number == number)).scalar_one_or_none()
