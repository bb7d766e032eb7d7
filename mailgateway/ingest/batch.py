"""A bulk import's batch: many mails stored and processed in one transaction.

Each mail goes through the same single-mail step as a mail the listener
received (`pipeline.process.process_inbox_mail`); what differs is where its
reads and writes go: a `BatchStore` (`mailgateway.batch_store`).

Should any mail fail, the batch rolls back and is done again with the plain
store and a savepoint per mail, so the failing mail is quarantined alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from mailgateway.batch_store import BatchStore
from mailgateway.db.dialect import is_transient
from mailgateway.db.models import InboxMail, InboxStatus
from mailgateway.pipeline.prepare import PreparedMail
from mailgateway.pipeline.process import quarantine
from mailgateway.service import Gateway, Outcome, store_raws
from mailgateway.store import SessionStore, Store

log = structlog.get_logger()

def receive_batch(gateway: Gateway, mails: Sequence[PreparedMail], transport: str) -> list[Outcome]:
    """Store and process `mails` in one transaction, each once (a mail already stored
    is a "duplicate"). If the batch cannot commit, nothing of it is stored and the
    caller may fall back to one mail at a time."""
    try:
        return _receive_batch(gateway, mails, transport, careful=False)
    except Exception as exc:  # in a mail's processing or in the batch's commit
        if isinstance(exc, OperationalError) and is_transient(exc):
            raise
        log.info("a mail of the batch failed; doing the batch again mail by mail",
                 error=f"{exc.__class__.__name__}: {exc}"[:200])
        return _receive_batch(gateway, mails, transport, careful=True)


def _receive_batch(
    gateway: Gateway, mails: Sequence[PreparedMail], transport: str, *, careful: bool
) -> list[Outcome]:
    outcomes = [Outcome("duplicate")] * len(mails)
    with gateway.writing, gateway.sessions.begin() as session:
        fresh = _new_rows(gateway, session, mails, transport)
        if careful:
            for index, row in fresh:
                outcomes[index] = _process_alone(gateway, SessionStore(session, archive=True),
                                                 row, mails[index])
            session.flush()
        else:
            store = BatchStore(session, archive=True)
            with session.no_autoflush:
                store.read_ahead([mails[i] for i, _ in fresh],
                                 gateway.clock.now() - gateway.answer_window)
                for index, row in fresh:
                    outcomes[index] = gateway.process_prepared(store, row, mails[index])
                store.write()
        store_raws(session, [(row.id, mails[index].raw) for index, row in fresh])
    return outcomes


def _new_rows(
    gateway: Gateway, session: Session, mails: Sequence[PreparedMail], transport: str
) -> list[tuple[int, InboxMail]]:
    """Inbox rows for the mails not stored before: (index in `mails`, row). A row is
    written with its fate, and then its bytes, once the batch is processed."""
    keys = [m.identity.dedup_key for m in mails]
    seen = set(session.execute(
        select(InboxMail.dedup_key).where(InboxMail.dedup_key.in_(keys))).scalars())
    fresh: list[tuple[int, InboxMail]] = []
    for index, mail in enumerate(mails):
        if mail.identity.dedup_key not in seen:
            seen.add(mail.identity.dedup_key)
            fresh.append((index, gateway.inbox_row(mail.raw, mail.identity, transport)))
    session.add_all(row for _, row in fresh)
    return fresh


def _process_alone(
    gateway: Gateway, store: Store, row: InboxMail, mail: PreparedMail
) -> Outcome:
    """One mail in a savepoint of its own: its failure quarantines it and nothing else."""
    try:
        with store.session.begin_nested():
            return gateway.process_prepared(store, row, mail)
    except Exception as exc:
        if isinstance(exc, OperationalError) and is_transient(exc):
            raise
        quarantine(row, exc, gateway.clock.now())
        return Outcome(InboxStatus.QUARANTINED.value)
