"""Putting a mail in the outbox, inside the transaction of the change that causes it.

The pipeline and the scheduler call `enqueue` while their own transaction is
open and commit it themselves: the mail then exists if and only if the
ticket change does, and the dispatcher picks it up after the commit. Nothing
here commits or talks to the network.

What is queued is the intent, with a snapshot of the ticket for the templates
and the Message-ID it will carry; the dispatcher renders it
(`compose.compose_queued`) when it sends it, outside the transaction that
received the mail.

Automatic answers are rate-limited per recipient (`auto_answer_limit` within
`auto_answer_window_minutes`), remembered in `auto_answers`: a robot that
escaped loop detection, or a customer's script, gets a handful of answers
and then silence instead of an endless exchange. The count is read in the
caller's transaction, so on PostgreSQL two transactions racing for the same
address may each pass the last free slot; the limit is a brake, not a quota.
Rows past the window are only ignored here; the dispatcher deletes them once
a pass (`purge_auto_answers`), so queueing a mail costs one query, not two.
No mail is addressed to the helpdesk itself (it would come back as a loop),
no automatic one to a group, and none to an address flagged for bouncing
(`outbound.delivery`); `recipients` of the row is To then Cc, without duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

import structlog
from sqlalchemy import CursorResult, delete
from sqlalchemy.orm import Session

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.models import AutoAnswer, OutboxMail, OutboxStatus, ThreadRef, Ticket
from mailgateway.outbound.intent import MailIntent, QueuedMail, new_message_id, outbox_document
from mailgateway.store import Store

log = structlog.get_logger(__name__)


def ticket_context(settings: Settings, ticket: Ticket) -> dict[str, Any]:
    """The standard fields of a ticket, as templates name them."""
    account = ticket.account
    person = ticket.person
    return {
        "number": ticket.number,
        "tag": settings.helpdesk.ticket_tag.format(number=ticket.number),
        "subject": ticket.subject,
        "status": ticket.status,
        "product": ticket.product,
        "request_type": ticket.request_type,
        "impact": ticket.impact,
        "group": ticket.group,
        "account": account.name,
        "account_email": account.main_email,
        "person": person.name if person else None,
        "person_email": person.email if person else None,
        "customer": person.name if person else account.name,
        "customer_email": person.email if person else account.main_email,
        "assignee": ticket.assignee.name if ticket.assignee else None,
        "created_at": ticket.created_at,
        "due_at": ticket.due_at,
        "answered_at": ticket.answered_at,
    }


def _is_helpdesk_address(settings: Settings, address: str) -> bool:
    """The helpdesk address or a signed variant of it."""
    local, _, domain = address.lower().partition("@")
    our_local, _, our_domain = settings.helpdesk.address.lower().partition("@")
    return domain == our_domain and local.partition("+")[0] == our_local


def _is_own_address(settings: Settings, address: str) -> bool:
    """The helpdesk address or a signed variant of it, or a group's address: an
    automatic answer to it would loop."""
    if address.lower() in {g.address.lower() for g in settings.groups.values()}:
        return True
    return _is_helpdesk_address(settings, address)


def _unique(addresses: Iterable[str], seen: set[str]) -> list[str]:
    kept = []
    for address in addresses:
        address = address.strip()
        if address and address.lower() not in seen:
            seen.add(address.lower())
            kept.append(address)
    return kept


def _over_limit(
    store: Store, settings: Settings, now: datetime, recipients: list[str]
) -> set[str]:
    """Recipients who already had `auto_answer_limit` automatic mails in the window.

    Only counts: rows older than the window are ignored here and deleted by
    `purge_auto_answers`, once per dispatcher pass rather than once per mail.
    """
    cutoff = now - timedelta(minutes=settings.outbound.auto_answer_window_minutes)
    counts = store.automatic_answers({r.lower() for r in recipients}, cutoff)
    limit = settings.outbound.auto_answer_limit
    return {key for key, count in counts.items() if count >= limit}


# Per database and process: when each address was last warned about.
_WARNED: WeakKeyDictionary[object, dict[str, datetime]] = WeakKeyDictionary()
_MOST_REMEMBERED = 10_000


def _report_limited(
    session: Session, settings: Settings, now: datetime, fields: dict[str, Any],
    blocked: set[str],
) -> None:
    """Warn once per address and limiter window: a bulk import, or a loop with a
    sender's robot, that meets the limit says so once, not for every mail it then
    leaves unanswered; those are logged at info."""
    window = timedelta(minutes=settings.outbound.auto_answer_window_minutes)
    warned = _WARNED.setdefault(session.get_bind(), {})
    if len(warned) > _MOST_REMEMBERED:
        for address, at in list(warned.items()):
            if now - at >= window:
                del warned[address]
    new = sorted(a for a in blocked if a not in warned or now - warned[a] >= window)
    if new:
        warned.update(dict.fromkeys(new, now))
        log.warning("auto_answer_rate_limited", recipients=new, **fields)
    else:
        log.info("auto_answer_rate_limited", recipients=sorted(blocked), **fields)


def purge_auto_answers(session: Session, settings: Settings, now: datetime) -> int:
    """Forget the automatic answers older than the limiter's window; the caller commits."""
    cutoff = now - timedelta(minutes=settings.outbound.auto_answer_window_minutes)
    result = session.execute(
        delete(AutoAnswer)
        .where(AutoAnswer.at <= cutoff)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount if isinstance(result, CursorResult) else 0


def enqueue(
    store: Store, settings: Settings, clock: Clock, intent: MailIntent,
    ticket: Ticket | None = None,
) -> QueuedMail | None:
    """Queue the mail `intent` asks for, about `ticket`; None when nobody may receive it.

    Runs in the caller's transaction and does not commit. The row holds the
    intent with a snapshot of the ticket, and its Message-ID, fixed now so
    that replies to it find the ticket; the dispatcher renders it
    (`compose.compose_queued`).
    """
    now = clock.now()
    fields = {"transport": "outbound", "ticket": ticket.number if ticket else None,
              "kind": intent.kind.value}
    seen: set[str] = set()
    to, cc = _unique(intent.to, seen), _unique(intent.cc, seen)
    # An automatic answer to ourselves or a group would be a loop; nothing at all goes
    # to the desk's own address, which would only bring it back, dropped as ours.
    own = _is_own_address if intent.automatic else _is_helpdesk_address
    to = [a for a in to if not own(settings, a)]
    cc = [a for a in cc if not own(settings, a)]
    if intent.answers_mail:
        blocked = _over_limit(store, settings, now, to + cc)
        if blocked:
            _report_limited(store.session, settings, now, fields, blocked)
        to = [a for a in to if a.lower() not in blocked]
        cc = [a for a in cc if a.lower() not in blocked]
    bouncing = store.flagged_addresses({a.lower() for a in to + cc})
    if bouncing:  # their mail comes back refused: an admin clears them (`addresses clear`)
        log.info("outbound_mail_not_to_bouncing", recipients=sorted(bouncing), **fields)
        to = [a for a in to if a.lower() not in bouncing]
        cc = [a for a in cc if a.lower() not in bouncing]
    if not to:
        log.info("outbound_mail_skipped", reason="no recipient left", **fields)
        return None

    context = dict(ticket_context(settings, ticket)) if ticket is not None else {}
    effective = replace(intent, to=tuple(to), cc=tuple(cc), context=context | dict(intent.context))
    message_id = new_message_id(settings)
    store.session.add(OutboxMail(
        created_at=now, kind=intent.kind.value, ticket=ticket, automatic=intent.automatic,
        mail_from=settings.helpdesk.address, recipients=to + cc, message_id=message_id,
        intent=outbox_document(effective, ticket.number if ticket else None),
        status=OutboxStatus.PENDING, attempts=0, next_attempt_at=now))
    if ticket is not None:  # a fresh id of ours: no ticket can know it already
        store.session.add(ThreadRef(message_id=message_id, ticket=ticket))
    if intent.answers_mail:
        for recipient in to + cc:
            store.add_automatic_answer(recipient.lower(), now)
    log.info("outbox_enqueued", message_id=message_id, recipients=to + cc, **fields)
    return QueuedMail(intent.kind, message_id, tuple(to + cc))

