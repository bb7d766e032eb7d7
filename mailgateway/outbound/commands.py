"""The outbound queue on the command line: `dispatch`, `outbox list`, `outbox retry`,
and the addresses that bounce: `addresses list`, `addresses clear`.

Registered by `mailgateway.cli` beside its own commands; handlers get the
parsed arguments and the CLI's `App` (settings, clock, sessions) and print.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.models import BouncingAddress, OutboxMail, OutboxStatus, Ticket
from mailgateway.errors import UserError
from mailgateway.views import emit

if TYPE_CHECKING:
    from mailgateway.outbound.dispatch import Dispatcher

STATUSES = tuple(s.value for s in OutboxStatus)


class AppLike(Protocol):
    """What the handlers need from the CLI's application object."""

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def reads(self) -> sessionmaker[Session]: ...


def list_outbox(session: Session, status: str | None, limit: int | None) -> list[dict[str, Any]]:
    """The queue, newest first, as plain values (one JSON document with --json)."""
    query = (
        select(OutboxMail, Ticket.number)
        .outerjoin(Ticket, Ticket.id == OutboxMail.ticket_id)
        .order_by(OutboxMail.id.desc())
    )
    if status:
        query = query.where(OutboxMail.status == status)
    if limit:
        query = query.limit(limit)
    return [
        {
            "id": mail.id,
            "status": mail.status,
            "kind": mail.kind,
            "ticket": number,
            "recipients": list(mail.recipients),
            "message_id": mail.message_id,
            "automatic": mail.automatic,
            "attempts": mail.attempts,
            "created_at": mail.created_at.isoformat(),
            "next_attempt_at": mail.next_attempt_at.isoformat(),
            "sent_at": mail.sent_at.isoformat() if mail.sent_at else None,
            # Proof of delivery (a PEC receipt's certified time) or a bounce, when known.
            "delivered_at": mail.delivered_at.isoformat() if mail.delivered_at else None,
            "bounced_at": mail.bounced_at.isoformat() if mail.bounced_at else None,
            "delivery": mail.delivery_diagnostic,
            "last_error": mail.last_error,
        }
        for mail, number in session.execute(query).all()
    ]


def _line(row: dict[str, Any]) -> str:
    fields = [
        str(row["id"]),
        row["status"],
        row["kind"],
        row["ticket"] or "-",
        ",".join(row["recipients"]),
        f"attempts={row['attempts']}",
        row["sent_at"] or f"next={row['next_attempt_at']}",
    ]
    if row["delivered_at"]:
        fields.append(f"delivered={row['delivered_at']}")
    if row["last_error"]:
        fields.append(" ".join(row["last_error"].split()))
    if row["delivery"]:  # what became of it: the servers' words, one line per recipient
        fields.append(" | ".join(row["delivery"].splitlines()))
    return "\t".join(fields)


def _outbox_list(args: argparse.Namespace, app: AppLike) -> int:
    with app.reads() as session:
        rows = list_outbox(session, args.status, args.limit)
    emit(args, rows, (_line(row) for row in rows))
    return 0


# The sending machinery is imported by the commands that send: `mailgateway ingest`,
# run once per mail by an MTA, starts faster without it.


def _outbox_retry(args: argparse.Namespace, app: AppLike) -> int:
    from mailgateway.outbound.dispatch import retry

    with app.sessions.begin() as session:
        retry(session, args.id, now=app.clock.now())
    print(f"Outbox mail {args.id} is queued again.")
    return 0


def _dispatch(args: argparse.Namespace, app: AppLike) -> int:
    from mailgateway.outbound.dispatch import Dispatcher, dispatch_once
    from mailgateway.outbound.transports import build_transport

    transport = build_transport(app.settings)
    if args.once:
        report = dispatch_once(app.sessions, app.settings, app.clock, transport)
        print(f"Outbox: {report}.")
        return 0
    asyncio.run(_dispatch_forever(Dispatcher(app.sessions, app.settings, app.clock, transport)))
    return 0


async def _dispatch_forever(dispatcher: Dispatcher) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await dispatcher.run(stopping)


def list_addresses(session: Session) -> list[dict[str, Any]]:
    """Addresses whose mail bounced, the flagged ones (no longer mailed) first."""
    rows = session.scalars(select(BouncingAddress).order_by(
        BouncingAddress.flagged_at.is_(None), BouncingAddress.last_at.desc()))
    return [{"address": a.address, "bounces": a.bounces, "flagged": a.flagged_at is not None,
             "flagged_at": a.flagged_at.isoformat() if a.flagged_at else None,
             "last_at": a.last_at.isoformat(), "last_diagnostic": a.last_diagnostic}
            for a in rows]


def _addresses_list(args: argparse.Namespace, app: AppLike) -> int:
    with app.reads() as session:
        rows = list_addresses(session)
    emit(args, rows, (f"{r['address']}\t{r['bounces']} bounces\t"
                      f"{'not mailed' if r['flagged'] else 'mailed'}\t{r['last_at']}\t"
                      f"{r['last_diagnostic']}" for r in rows))
    return 0


def _addresses_clear(args: argparse.Namespace, app: AppLike) -> int:
    from mailgateway.outbound.delivery import clear_address

    with app.sessions.begin() as session:
        if not clear_address(session, args.address):
            raise UserError(f"{args.address} has no bounces on record.")
    print(f"{args.address} is mailed again; its bounces are forgotten.")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dispatch` and `outbox list|retry` to the top-level command parser."""
    dispatch = subparsers.add_parser(
        "dispatch",
        help="send what the outbox holds",
        description="Send the due mails of the outbox (with --once: one pass, then exit).",
    )
    dispatch.add_argument("--once", action="store_true", help="one pass, then exit")
    dispatch.set_defaults(handler=_dispatch)

    outbox = subparsers.add_parser("outbox", help="the outbound queue")
    commands = outbox.add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="list queued and sent mail",
                                  description="List the outbox, newest first.")
    listing.add_argument("--status", type=str.lower, choices=STATUSES)
    listing.add_argument("--limit", type=int, default=None, help="at most this many rows")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=_outbox_list)
    again = commands.add_parser("retry", help="send a failed or dead mail again",
                                description="Put a failed or dead mail back in the queue.")
    again.add_argument("id", type=int)
    again.set_defaults(handler=_outbox_retry)

    addresses = subparsers.add_parser("addresses", help="addresses whose mail bounces")
    commands = addresses.add_subparsers(dest="addresses_command", required=True,
                                        metavar="COMMAND")
    listing = commands.add_parser(
        "list", help="list addresses whose mail bounced",
        description="Addresses whose mail bounced; those at outbound.bounce_limit are "
                    "no longer mailed.")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=_addresses_list)
    clear = commands.add_parser(
        "clear", help="mail an address again",
        description="Forget an address's bounces: the desk mails it again.")
    clear.add_argument("address")
    clear.set_defaults(handler=_addresses_clear)

