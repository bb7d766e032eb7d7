"""Read models for the command line: rows → plain dicts (what `--json` prints)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailgateway.db.models import (
    Account,
    InboxMail,
    InboxRaw,
    Message,
    OutboxMail,
    Ticket,
    TicketStatus,
)
from mailgateway.errors import UserError
from mailgateway.tickets import find_by_number, format_tag, full_number


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
        address = account.strip().lower()
        if session.scalar(select(Account.id).where(Account.main_email == address)) is None:
            raise UserError(f"There is no account with main address {address}.")
        query = query.join(Ticket.account).where(Account.main_email == address)
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


def find_ticket(session: Session, number: str, year: int | None = None) -> Ticket:
    """The ticket `number` names (`12`: `year`'s `YYYY-000012`), else a user mistake."""
    ticket = find_by_number(
        session, full_number(number, year) if year is not None else number.strip())
    if ticket is None:
        raise UserError(f"There is no ticket {number.strip()}.")
    return ticket


def show_ticket(
    session: Session, ticket_tag: str, number: str, year: int | None = None
) -> dict[str, Any]:
    ticket = find_ticket(session, number, year)
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


def show_inbox(session: Session, inbox_id: int) -> tuple[dict[str, Any], bytes]:
    """One received mail's row and fate, and its bytes."""
    row = session.get(InboxMail, inbox_id)
    if row is None:
        raise UserError(f"There is no received mail with ID {inbox_id}.")
    raw = session.scalar(select(InboxRaw.raw).where(InboxRaw.inbox_id == inbox_id)) or b""
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
    return {
        "id": row.id, "received_at": _time(row.received_at), "transport": row.transport,
        "envelope_from": row.envelope_from, "envelope_to": list(row.envelope_to or []),
        "message_id": row.message_id, "sender": row.sender, "subject": row.subject,
        "size": row.size, "sha256": row.sha256, "status": row.status, "reason": row.reason,
        "ticket": ticket.number if ticket else None, "attempts": row.attempts,
        "processed_at": _time(row.processed_at),
    }, raw


def local_time(value: str | None, timezone: str) -> str:
    """An ISO instant as the desk reads it: `2026-03-02 10:30` in its time zone."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def ticket_lines(data: dict[str, Any], timezone: str) -> list[str]:
    """`tickets show` for people: every field, the messages and the events, in the
    desk's time zone."""
    def at(key: str, row: dict[str, Any] = data) -> str:
        return local_time(row.get(key), timezone)

    lines = [f"{data['tag']} {data['subject']}",
             f"status: {data['status']}  assignee: {data['assignee'] or '-'}  "
             f"group: {data['group'] or '-'}",
             f"account: {data['account']}  person: {data['person'] or '-'}",
             f"product: {data['product'] or '-'}  type: {data['request_type']}  "
             f"impact: {data['impact']}",
             f"created: {at('created_at')}  due: {at('due_at')}  updated: {at('updated_at')}"
             + (f"  closed: {at('closed_at')}" if data["closed_at"] else "")
             + f"  ({timezone})"]
    if data["linked_ticket"]:
        lines.append(f"follows: {data['linked_ticket']}")
    if data["watchers"]:
        lines.append(f"watchers: {', '.join(data['watchers'])}")
    for message in data["messages"]:
        lines += ["", f"--- {message['direction']} {message['author']} "
                  f"{at('created_at', message)}{' (internal)' if message['internal'] else ''}",
                  message["body"]]
        lines += [f"[file] {a['filename']} {a['size']} bytes" for a in message["attachments"]]
        lines += [f"[not kept] {name}" for name in message["refused_attachments"]]
        lines += pec_lines(message["pec"])
    lines += [f"[mail] {m['kind']} to {', '.join(m['recipients'])}: {m['status']}"
              + (f", delivered {at('delivered_at', m)}" if m["delivered_at"] else "")
              for m in data["outbox"]]
    if data["events"]:
        lines += ["", "events:"]
        lines += [f"  {at('at', e)}  {e['actor'] or '-'}  {e['kind']}"
                  + (f"  {e['from']} → {e['to']}" if e["from"] != e["to"] else "")
                  + (f"  ({e['reason']})" if e["reason"] else "") for e in data["events"]]
    return lines
