"""Which dispatcher sends which outbox row: claims with a lease, and taking them back.

A pass claims due rows by setting a lease (`claimed_until`) and its
claimant: on PostgreSQL the candidates are picked with
`SELECT … FOR UPDATE SKIP LOCKED`, so several dispatchers share the queue
without waiting on each other; on SQLite the same conditional UPDATE runs
under the write lock every transaction takes. Only rows whose lease is
absent or expired are claimable, so a dispatcher that died mid-batch delays
its rows by one lease, never loses them; and one that restarts takes its own
rows back at once (`take_back_own_claims`), since no pass of it is running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.config import OutboundSettings, Settings
from mailgateway.db.dialect import claimed
from mailgateway.db.models import OutboxMail, OutboxStatus, Ticket


def claimant(settings: Settings) -> str:
    """Who claims: this installation (host and data directory), the same after a restart."""
    return f"{socket.gethostname()}:{Path(settings.data_dir).resolve()}"[:255]


def lease_length(settings: OutboundSettings) -> timedelta:
    """How long a claim holds; a batch stops early rather than outlive it."""
    return timedelta(seconds=max(600, 20 * settings.timeout_seconds))


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


@contextlib.contextmanager
def sole_dispatcher(settings: Settings) -> Iterator[bool]:
    """Hold, while the dispatcher runs, the lock that says it is its installation's only
    one; True when it got it. The system drops the lock with the process, however it
    ends."""
    path = Path(settings.data_dir) / "dispatcher.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(handle)


def take_back_own_claims(sessions: sessionmaker[Session], settings: Settings) -> int:
    """Release the leases this installation held when it last stopped; only for the
    installation's sole dispatcher (`sole_dispatcher`), which no pass is using yet."""
    with sessions.begin() as session:
        result = session.execute(
            update(OutboxMail)
            .where(OutboxMail.claimed_by == claimant(settings),
                   OutboxMail.status == OutboxStatus.PENDING,
                   OutboxMail.claimed_until.is_not(None))
            .values(claimed_until=None)
            .execution_options(synchronize_session=False))
        return int(getattr(result, "rowcount", 0) or 0)
