"""What became of a mail after the relay took it: refused for good, delayed, delivered.

The relay's acceptance (`sent`) is all the dispatcher learns. What happens
next comes back later as mail: a delivery status notification that names one
outbox row (`pipeline.bounces`), or a certified receipt. Whatever brought the
news, recording it is the same, and is here, in the caller's transaction:

- **bounced** (a hard bounce): the row says so with the server's words; the
  ticket gets an event; the ticket's group is told once, naming the address,
  that the customer did not receive the mail (they would otherwise believe the
  desk silent); a customer's address's run of bounces grows, and at
  `outbound.bounce_limit` in a row it is flagged and no longer mailed
  (`queue.enqueue` leaves it out) until an admin clears it. A notice to
  technicians that bounces is recorded and logged as an error, never stopped.
- **delayed** (a delay warning): recorded on the row and the ticket, no alarm:
  the server is still trying.
- **delivered** (proof of delivery): the row says when, with the evidence; the
  address's run of bounces is over.

Recording the same outcome twice (a DSN sent again, a receipt read twice) changes
nothing the second time.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.models import BouncingAddress, OutboxMail, OutboxStatus, Ticket
from mailgateway.outbound.addressing import CUSTOMER_KINDS, group_recipients
from mailgateway.outbound.intent import ANSWERING_KINDS, MailIntent, MailKind
from mailgateway.outbound.queue import enqueue
from mailgateway.store import Store
from mailgateway.tickets import record_event

ACTOR = "system"

# Event kinds on the ticket.
BOUNCED_EVENT = "bounced"
DELAYED_EVENT = "delivery_delayed"
DELIVERED_EVENT = "delivered"

_MOST_DIAGNOSTIC = 2000  # a server's words, kept readable on one row
# Mail whose bounce the group hears of: what the customer of a ticket should have read.
_TELL_GROUP = frozenset(k.value for k in CUSTOMER_KINDS)
# Mail to whoever wrote to the desk, customers or strangers: their addresses are counted.
_TO_CUSTOMERS = _TELL_GROUP | frozenset(k.value for k in ANSWERING_KINDS)


def _log(row: OutboxMail, **values: object) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)
    return logger.bind(transport="outbound", outbox_id=row.id, message_id=row.message_id,
                       ticket=row.ticket.number if row.ticket is not None else None, **values)


@dataclass(frozen=True)
class BounceRecorded:
    """What recording a hard bounce did."""

    new: bool             # False: this address's bounce of this row was known already
    group_told: bool      # a notice to the ticket's group was queued
    address_flagged: bool  # the address reached the limit with this bounce


def _line(recipient: str, text: str) -> str:
    return f"{recipient}: {' '.join(text.split())}"[:_MOST_DIAGNOSTIC]


def _add_line(row: OutboxMail, line: str) -> bool:
    """Add `line` to the row's record of outcomes; False when it is there already."""
    known = (row.delivery_diagnostic or "").splitlines()
    if line in known:
        return False
    row.delivery_diagnostic = "\n".join([*known, line])
    return True


_NOT_BOUNCES = ("delayed: ", "delivered: ")


def _bounced_for(row: OutboxMail, recipient: str) -> bool:
    """The row already records a hard bounce for `recipient`."""
    prefix = f"{recipient}: "
    return row.status == OutboxStatus.BOUNCED and any(
        line.startswith(prefix) and not line[len(prefix):].startswith(_NOT_BOUNCES)
        for line in (row.delivery_diagnostic or "").splitlines())


def _what(row: OutboxMail) -> str:
    return row.kind.replace("_", " ")


def record_bounce(
    store: Store, settings: Settings, clock: Clock, row: OutboxMail, recipient: str,
    diagnostic: str, *, actor: str = ACTOR,
) -> BounceRecorded:
    """`recipient`'s server refused the mail of `row` for good, saying `diagnostic`
    (a DSN's Status and Diagnostic-Code, or a receipt's words).

    The group is told once per mail: only when the row turns `bounced`, and only for
    mail that went to the customer (a bounced notice to technicians is logged).
    """
    now = clock.now()
    recipient = recipient.strip().lower()
    if _bounced_for(row, recipient):  # the report again, or another copy of it
        return BounceRecorded(new=False, group_told=False, address_flagged=False)
    _add_line(row, _line(recipient, diagnostic or "refused"))
    first = row.status != OutboxStatus.BOUNCED
    row.status = OutboxStatus.BOUNCED.value
    row.bounced_at = row.bounced_at or now
    to_customer = row.kind in _TO_CUSTOMERS
    # Only customers' addresses are stopped: a group's mailbox that is full for a day
    # must not silence the desk's notices to it.
    flagged = to_customer and _count_bounce(store.session, settings, recipient, diagnostic,
                                            now)
    ticket = row.ticket
    told = False
    if ticket is not None:
        record_event(store.session, ticket, BOUNCED_EVENT, actor=actor, at=now,
                     reason=f"the {_what(row)} to {recipient} bounced: {diagnostic}"[:2000])
        if first and row.kind in _TELL_GROUP:
            told = _tell_group(store, settings, clock, row, ticket, recipient, diagnostic,
                               flagged)
    bound = _log(row, recipient=recipient)
    (bound.warning if to_customer else bound.error)(
        "outbound_mail_bounced", diagnostic=diagnostic, group_told=told,
        address_flagged=flagged)
    return BounceRecorded(new=True, group_told=told, address_flagged=flagged)


def record_delay(
    store: Store, clock: Clock, row: OutboxMail, recipient: str, diagnostic: str,
    *, actor: str = ACTOR,
) -> bool:
    """A server is still trying to deliver `row` to `recipient`: noted, not alarmed.
    False when this warning was known already."""
    recipient = recipient.strip().lower()
    if not _add_line(row, _line(recipient, f"delayed: {diagnostic or 'no reason given'}")):
        return False
    if row.ticket is not None:
        record_event(store.session, row.ticket, DELAYED_EVENT, actor=actor, at=clock.now(),
                     reason=f"the {_what(row)} to {recipient} is delayed: {diagnostic}"[:2000])
    _log(row, recipient=recipient).info("outbound_mail_delayed", diagnostic=diagnostic)
    return True


def record_delivered(
    store: Store, clock: Clock, row: OutboxMail, recipient: str, delivered_at: datetime,
    evidence: str, *, actor: str = ACTOR,
) -> bool:
    """Proof came back that `row` reached `recipient`'s mailbox at `delivered_at`
    (`evidence`: what proves it, e.g. a certified receipt's identifier). A row that
    bounced for another recipient stays `bounced`. False when known already."""
    recipient = recipient.strip().lower()
    if not _add_line(row, _line(recipient, f"delivered: {evidence}")):
        return False
    if row.status != OutboxStatus.BOUNCED:
        row.status = OutboxStatus.DELIVERED.value
    row.delivered_at = max(row.delivered_at or delivered_at, delivered_at)
    store.session.execute(delete(BouncingAddress).where(
        BouncingAddress.address == recipient, BouncingAddress.flagged_at.is_(None)))
    if row.ticket is not None:
        record_event(store.session, row.ticket, DELIVERED_EVENT, actor=actor, at=clock.now(),
                     reason=f"the {_what(row)} reached {recipient} at "
                            f"{delivered_at.isoformat()}: {evidence}"[:2000])
    _log(row, recipient=recipient).info("outbound_mail_delivered",
                                        delivered_at=delivered_at.isoformat())
    return True


# --- addresses that keep bouncing ---------------------------------------------------


def _count_bounce(
    session: Session, settings: Settings, address: str, diagnostic: str, now: datetime
) -> bool:
    """One more hard bounce of `address`; True when it makes the address flagged."""
    known = session.get(BouncingAddress, address)
    if known is None:
        known = BouncingAddress(address=address, bounces=0, first_at=now, last_at=now,
                                last_diagnostic="")
        session.add(known)
    known.bounces += 1
    known.last_at = now
    known.last_diagnostic = diagnostic[:_MOST_DIAGNOSTIC]
    if known.flagged_at is None and known.bounces >= settings.outbound.bounce_limit:
        known.flagged_at = now
        return True
    return False


def flagged_addresses(session: Session, addresses: Collection[str]) -> set[str]:
    """Those of `addresses` (lower-cased) the desk no longer mails."""
    wanted = {a.strip().lower() for a in addresses}
    if not wanted:
        return set()
    return set(session.scalars(select(BouncingAddress.address).where(
        BouncingAddress.address.in_(wanted), BouncingAddress.flagged_at.is_not(None))))


def not_mailed(session: Session) -> set[str]:
    """Every address the desk no longer mails: few, so listings read them once."""
    return set(session.scalars(select(BouncingAddress.address).where(
        BouncingAddress.flagged_at.is_not(None))))


def clear_address(session: Session, address: str) -> bool:
    """An admin vouches for `address` again: its bounces are forgotten and it is mailed
    again. False when it was not on record."""
    known = session.get(BouncingAddress, address.strip().lower())
    if known is None:
        return False
    session.delete(known)
    return True


def _tell_group(
    store: Store, settings: Settings, clock: Clock, row: OutboxMail, ticket: Ticket,
    address: str, diagnostic: str, flagged: bool,
) -> bool:
    to = group_recipients(store.session, settings, ticket.group) or (settings.helpdesk.address,)
    known = store.session.get(BouncingAddress, address)
    bounces = known.bounces if known is not None else 1
    queued = [enqueue(store, settings, clock, MailIntent(
        kind=MailKind.BOUNCE_NOTICE, to=(recipient,), language=settings.helpdesk.language,
        context={"address": address, "diagnostic": diagnostic, "bounced_kind": row.kind,
                 "sent_at": row.sent_at, "flagged": flagged, "bounces": bounces}), ticket)
        for recipient in to]  # one mail each: its signed reply address names its recipient
    return any(q is not None for q in queued)
