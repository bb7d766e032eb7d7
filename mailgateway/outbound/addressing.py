"""Who a ticket's mail goes to, and how it threads: shared by the pipeline and the
scheduler, so a reminder reaches and threads exactly as an answer does.

Customers: the PERSONA who opened the ticket, else the account's main address,
with the ticket's watchers in copy. Technicians: the group's address, else its
active members; never the helpdesk's own address, which would only bring the
mail back as a loop.

Threading: a mail client hangs a mail under the one its In-Reply-To names and
files it with the thread References lists. References therefore names the
conversation's first mail and its latest ones, and ends with the mail answered.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import literal, select, union_all
from sqlalchemy.orm import Session

from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, Message, OutboxMail, Staff, Ticket
from mailgateway.outbound.intent import MailKind

REFERENCES_LATEST = 10

# Mails of ours the customer receives, and so can answer.
CUSTOMER_KINDS = (MailKind.ACKNOWLEDGMENT, MailKind.ANSWER, MailKind.REMINDER,
                  MailKind.AUTOCLOSE, MailKind.CLOSED_TICKET, MailKind.DUPLICATE_JOINED,
                  MailKind.ENCRYPTED_MAIL)


def customer_recipients(ticket: Ticket) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(To, Cc) of a mail to the ticket's customer."""
    primary = customer_address(
        ticket.person.email if ticket.person is not None else None,
        ticket.account.main_email, ticket.account.answer_email, ticket.pec_address)
    return (primary,), tuple(w for w in ticket.watchers or () if w != primary)


def customer_address(
    person: str | None, main_email: str, answer_email: str | None, pec_address: str | None,
) -> str:
    """The PERSONA who opened the ticket, else the account's main address; the
    account's ordinary address instead of the PEC one it wrote from when it asked so
    (`Account.answer_email`)."""
    primary = person if person is not None else main_email
    if pec_address == primary and answer_email:
        return answer_email
    return primary


def group_recipients(session: Session, settings: Settings, group: str | None) -> tuple[str, ...]:
    """Where a notice to a ticket's group goes: its address, else its active members."""
    if group and group in settings.groups:
        return (settings.groups[group].address,)
    if not group:
        return ()
    members = session.scalars(select(Staff.email).where(Staff.group == group, Staff.active)
                              .order_by(Staff.email))
    return tuple(m for m in members if m.lower() != settings.helpdesk.address.lower())


def conversations(session: Session, tickets: Sequence[Ticket]) -> dict[int, list[str]]:
    """The Message-IDs of the mails each customer and the desk exchanged on each of
    `tickets`, oldest first: the customer's, and ours to the customer. One query."""
    ids = [t.id for t in tickets]
    theirs = (select(Message.ticket_id.label("ticket"), InboxMail.message_id.label("id"),
                     InboxMail.received_at.label("at"), literal(0).label("ours"))
              .join(Message, Message.inbox_id == InboxMail.id)
              .where(Message.ticket_id.in_(ids), Message.direction == "in",
                     InboxMail.message_id.is_not(None)))
    ours = (select(OutboxMail.ticket_id, OutboxMail.message_id, OutboxMail.created_at,
                   literal(1))
            .where(OutboxMail.ticket_id.in_(ids),
                   OutboxMail.kind.in_([k.value for k in CUSTOMER_KINDS])))
    # At the same instant (a test's clock), the customer's mail came first.
    both = union_all(theirs, ours).subquery()
    found: dict[int, dict[str, None]] = {i: {} for i in ids}
    for ticket, message_id in session.execute(
            select(both.c.ticket, both.c.id).order_by(both.c.at, both.c.ours)):
        if message_id:
            found[ticket][message_id] = None
    return {ticket: list(messages) for ticket, messages in found.items()}


def latest_customer_mail(session: Session, ticket_id: int) -> str | None:
    """The Message-ID of the customer's latest mail on a ticket: what an answer answers."""
    return session.scalars(
        select(InboxMail.message_id).join(Message, Message.inbox_id == InboxMail.id)
        .where(Message.ticket_id == ticket_id, Message.direction == "in",
               InboxMail.message_id.is_not(None))
        .order_by(InboxMail.received_at.desc(), InboxMail.id.desc()).limit(1)).first()


def thread_headers(
    ids: Sequence[str], answered: str | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References for a mail answering `answered` (by default the
    conversation's latest mail): the first mail, the latest ones, the answered last."""
    answered = answered or (ids[-1] if ids else None)
    if answered is None:
        return None, ()
    # The mails before the answered one: its own References, as its sender's client knew them.
    earlier = list(ids[:ids.index(answered)]) if answered in ids else list(ids)
    kept = earlier[:1] + earlier[1:][-(REFERENCES_LATEST - 1):]
    return answered, (*kept, answered)
