"""Read models for the command line: rows → plain dicts (what `--json` prints)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailgateway.db.models import Account, InboxMail, Message, OutboxMail, Ticket, TicketStatus
from mailgateway.errors import UserError
from mailgateway.tickets import find_by_number, format_tag


def emit(args: argparse.Namespace, data: Any, lines: Iterable[str]) -> None:
    """Print `data` as one JSON document with --json, else the human lines."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, ensure_ascii=False, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for line in lines:
            print(line)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def ticket_summary(ticket: Ticket, ticket_tag: str) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "tag": format_tag(ticket_tag, ticket.number),
        "status": ticket.status,
        "subject": ticket.subject,
        "account": ticket.account.main_email,
        "person": ticket.person.email if ticket.person else None,
        "assignee": ticket.assignee.email if ticket.assignee else None,
        "created_at": _time(ticket.created_at),
        "updated_at": _time(ticket.updated_at),
    }


def list_tickets(
    session: Session, ticket_tag: str, status: str | None = None, account: str | None = None,
    overdue_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The tickets, oldest first; `overdue_at`: only those whose first-response time
    had passed at that instant without a technician's answer."""
    query = (select(Ticket).options(selectinload(Ticket.account), selectinload(Ticket.person),
                                    selectinload(Ticket.assignee)).order_by(Ticket.id))
    if status:
        query = query.where(Ticket.status == status.upper())
    if account:
        query = query.join(Ticket.account).where(Account.main_email == account.lower())
    if overdue_at is not None:
        query = query.where(Ticket.answered_at.is_(None), Ticket.due_at < overdue_at,
                            Ticket.status != TicketStatus.CHIUSO.value)
    return [ticket_summary(t, ticket_tag) | {"due_at": _time(t.due_at)}
            for t in session.execute(query).scalars()]


def _message(message: Message) -> dict[str, Any]:
    return {
        "direction": message.direction,
        "author": message.author,
        "body": message.body,
        "internal": message.internal,
        "created_at": _time(message.created_at),
        "attachments": [{"filename": a.filename, "size": a.size, "sha256": a.sha256,
                         "content_type": a.content_type} for a in message.attachments],
        "refused_attachments": list(message.refused_attachments or []),
        "pec": message.pec,  # the PEC envelope it came in, if it came by PEC
    }


def _outbound(session: Session, ticket: Ticket) -> list[dict[str, Any]]:
    """The ticket's mails and what became of them: a certified receipt's delivery time
    is the desk's proof that the customer received the answer."""
    rows = session.scalars(select(OutboxMail).where(OutboxMail.ticket_id == ticket.id)
                           .order_by(OutboxMail.id))
    return [{"id": r.id, "kind": r.kind, "recipients": list(r.recipients),
             "status": r.status, "sent_at": _time(r.sent_at),
             "delivered_at": _time(r.delivered_at), "bounced_at": _time(r.bounced_at),
             "delivery": r.delivery_diagnostic} for r in rows]


def show_ticket(session: Session, ticket_tag: str, number: str) -> dict[str, Any]:
    ticket = find_by_number(session, number.strip())
    if ticket is None:
        raise UserError(f"There is no ticket {number}.")
    linked = session.get(Ticket, ticket.linked_ticket_id) if ticket.linked_ticket_id else None
    return {
        **ticket_summary(ticket, ticket_tag),
        "product": ticket.product,
        "request_type": ticket.request_type,
        "impact": ticket.impact,
        "group": ticket.group,
        "language": ticket.language,
        "verified_account": ticket.account.verified,
        "watchers": list(ticket.watchers or []),
        "linked_ticket": linked.number if linked else None,
        "due_at": _time(ticket.due_at),
        "closed_at": _time(ticket.closed_at),
        "rules": list(ticket.rules or []),
        "pec_address": ticket.pec_address,
        "messages": [_message(m) for m in ticket.messages],
        "outbox": _outbound(session, ticket),
        "events": [{"at": _time(e.at), "actor": e.actor, "kind": e.kind,
                    "from": e.from_status, "to": e.to_status, "reason": e.reason}
                   for e in ticket.events],
    }


def list_inbox(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    query = (select(InboxMail, Ticket.number).outerjoin(Ticket, InboxMail.ticket_id == Ticket.id)
             .order_by(InboxMail.id))
    if status:
        query = query.where(InboxMail.status == status.lower())
    return [{
        "id": r.id, "received_at": _time(r.received_at), "transport": r.transport,
        "message_id": r.message_id, "sender": r.sender, "subject": r.subject,
        "size": r.size, "status": r.status, "reason": r.reason, "ticket": number,
    } for r, number in session.execute(query).all()]


def pec_lines(pec: dict[str, Any] | None) -> list[str]:
    """What `tickets show` says of a message's PEC envelope."""
    if not pec:
        return []
    if pec.get("anomaly"):
        return ["[PEC] anomaly: the provider could not certify this mail"]
    said = [f"[PEC] certified sender {pec.get('certified_sender') or '-'}",
            f"at {pec.get('certified_at') or '-'}"]
    if pec.get("provider"):
        said.append(f"by {pec['provider']}")
    if pec.get("identifier"):
        said.append(f"id {pec['identifier']}")
    return [" ".join(said)]
