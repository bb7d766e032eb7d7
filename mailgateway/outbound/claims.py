"""Which dispatcher sends which outbox row: claims with a lease, and taking them back.

A pass claims due rows by setting a lease (`claimed_until`) and its
claimant: on PostgreSQL the candidates are picked with
`SELECT … FOR UPDATE SKIP LOCKED`, so several dispatchers share the queue
without waiting on each other; on SQLite the same conditional UPDATE runs
under the write lock every transaction takes. Only rows whose lease is
absent or expired are claimable.

The lease is short (`LEASE`) and renewed while the batch is being sent
(`renew_claims`), so a dispatcher that died mid-batch, on this host or
another, delays its rows by less than a minute and never loses them; a live
one keeps its rows however slow its relay. The claimant names one process,
not one installation: several gateways may share a data directory, and one
restarting must not take rows another is still sending.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from mailgateway.config import Settings
from mailgateway.db.dialect import claimed
from mailgateway.db.models import OutboxMail, OutboxStatus, Ticket

# How long a claim holds without renewal, and how often a sending dispatcher renews it:
# a dead dispatcher's rows are free 45 s after its last renewal at the latest.
LEASE = timedelta(seconds=45)
RENEW_SECONDS = 15.0
_TOKEN = secrets.token_hex(4)


def claimant(settings: Settings) -> str:
    """Who claims: this process (host, pid and a token drawn at start, so a pid reused
    after a restart is another claimant)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"[:255]


def claim_due(
    session: Session, settings: Settings, now: datetime, lease_until: datetime
) -> Sequence[Any]:
    """Lease up to one batch of due rows to this installation; their id, ticket number,
    Message-ID, sender, recipients, bytes, intent, attempts and creation time."""
    due = and_(
        OutboxMail.status == OutboxStatus.PENDING,
        OutboxMail.next_attempt_at <= now,
        or_(OutboxMail.claimed_until.is_(None), OutboxMail.claimed_until < now),
    )
    candidates = claimed(
        select(OutboxMail.id)
        .where(due)
        .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
        .limit(settings.outbound.batch_size), session)
    claim = (
        update(OutboxMail)
        .where(OutboxMail.id.in_(candidates), due)
        .values(claimed_until=lease_until, claimed_by=claimant(settings))
        .returning(OutboxMail.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(session.execute(claim).scalars())
    if not ids:
        return []
    return session.execute(
        select(
            OutboxMail.id,
            Ticket.number,
            OutboxMail.message_id,
            OutboxMail.mail_from,
            OutboxMail.recipients,
            OutboxMail.raw,
            OutboxMail.intent,
            OutboxMail.attempts,
            OutboxMail.created_at,
        )
        .outerjoin(Ticket, Ticket.id == OutboxMail.ticket_id)
        .where(OutboxMail.id.in_(ids))
        .order_by(OutboxMail.next_attempt_at, OutboxMail.id)
    ).all()


def renew_claims(
    session: Session, settings: Settings, now: datetime, ids: Sequence[int]
) -> datetime:
    """Extend this process's leases on `ids` (those still pending) to `now + LEASE`;
    returns the new end. The caller commits."""
    until = now + LEASE
    if ids:
        session.execute(
            update(OutboxMail)
            .where(OutboxMail.id.in_(ids), OutboxMail.claimed_by == claimant(settings),
                   OutboxMail.status == OutboxStatus.PENDING,
                   OutboxMail.claimed_until.is_not(None))  # released: stays released
            .values(claimed_until=until)
            .execution_options(synchronize_session=False))
    return until
