"""The store of many mails processed in one transaction.

`BatchStore` reads what a batch of mails will ask (their senders, the
tickets their tags and references name, the automatic answers their senders
had) in a few queries before the first mail, answers from what it read and
from what the batch itself wrote, and lets the batch's rows go to the
database together at the end, a statement per table: per mail, a batch costs
a fraction of the round trips one mail alone makes. A bulk import
(`ingest.batch`) and a processor with a backlog (`Gateway.process_pending`)
use it; the domain code is the same as for one mail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session

from mailgateway.attachments import attachment_path, write_file
from mailgateway.db.dialect import insert_ignoring_duplicates, returns_ids_of_many_rows
from mailgateway.db.models import Account, AutoAnswer, Person, Ticket, TicketCounter
from mailgateway.pipeline.identify import DirectoryMatch, SenderKind
from mailgateway.pipeline.prepare import PreparedMail
from mailgateway.pipeline.process import sender_address
from mailgateway.store import (
    THREAD_REFS,
    TICKET_WITH_PEOPLE,
    read_answer_counts,
    read_directory,
    read_flagged,
    read_references,
)
from mailgateway.tickets import allocate_number, format_number

_FILE_WRITERS = ThreadPoolExecutor(4, thread_name_prefix="attachment-writer")


class BatchStore:
    """The store of a batch (see the module's docstring).

    It holds every object it hands out until the batch ends: the session's
    identity map keeps unchanged objects only while someone else does.
    """

    def __init__(self, session: Session, *, archive: bool) -> None:
        self._session = session
        self.archive = archive
        self._directory: dict[str, tuple[DirectoryMatch, ...]] = {}
        self._tickets: dict[str, Ticket | None] = {}
        self._references: dict[str, Ticket | None] = {}
        self._answers: dict[str, int] = {}
        self._flagged: dict[str, bool] = {}
        self._customers: list[Account | Person] = []
        self._remembered: list[tuple[str, Ticket]] = []
        self._files: list[Future[None]] = []
        self._numbers: dict[int, int] = {}  # the last ticket number given, by year

    @property
    def session(self) -> Session:
        return self._session

    def read_ahead(self, mails: Sequence[PreparedMail], answers_since: datetime) -> None:
        """What the batch's mails will ask, in a few queries."""
        senders = {sender_address(m.parsed) for m in mails} - {""}
        numbers = {n for m in mails for n in (
            m.findings.keys.tag_number,
            m.findings.keys.token.ticket_number if m.findings.keys.token else None) if n}
        references = {r for m in mails for r in m.findings.keys.references}
        references |= {m.parsed.message_id[:998] for m in mails if m.parsed.message_id}
        if senders:
            self._directory.update(read_directory(self._session, senders))
            self._hold_customers(senders)
            self._answers.update(read_answer_counts(self._session, senders, answers_since))
            self._read_flagged(senders)
        if numbers:
            self._tickets.update(dict.fromkeys(numbers))
            self._tickets.update((t.number, t) for t in self._session.execute(
                TICKET_WITH_PEOPLE.where(Ticket.number.in_(numbers))).unique().scalars())
        if references:
            self._read_references(references)

    def _hold_customers(self, senders: Collection[str]) -> None:
        matches = [m for email in senders for m in self._directory[email]]
        accounts = {m.account_id for m in matches if m.account_id is not None}
        persons = {m.id for m in matches if m.kind is SenderKind.PERSON}
        if accounts:
            self._customers += self._session.execute(
                select(Account).where(Account.id.in_(accounts))).scalars()
        if persons:
            self._customers += self._session.execute(
                select(Person).where(Person.id.in_(persons))).scalars()

    def _read_references(self, message_ids: Collection[str]) -> None:
        self._references.update(dict.fromkeys(message_ids))
        self._references.update(read_references(self._session, message_ids))

    def directory(self, email: str) -> tuple[DirectoryMatch, ...]:
        if email not in self._directory:
            self._directory.update(read_directory(self._session, [email]))
        return self._directory[email]

    def ticket_numbered(self, number: str) -> Ticket | None:
        if number not in self._tickets:
            self._tickets[number] = self._session.execute(
                TICKET_WITH_PEOPLE.where(Ticket.number == number)).unique().scalar_one_or_none()
        return self._tickets[number]

    def tickets_referencing(self, message_ids: Sequence[str]) -> list[Ticket]:
        missing = [m for m in message_ids if m not in self._references]
        if missing:
            self._read_references(missing)
        found = (self._references[m] for m in message_ids)
        return list({id(t): t for t in found if t is not None}.values())

    def ticket_number(self, year: int) -> str:
        """The first number of a year from the counter row, which the transaction then
        holds (its row lock, or SQLite's write lock); the next ones counted on here and
        written with the batch."""
        if year not in self._numbers:
            self._numbers[year] = int(allocate_number(self._session, year).rpartition("-")[2])
        else:
            self._numbers[year] += 1
        return format_number(year, self._numbers[year])

    def add_ticket(self, ticket: Ticket) -> None:
        self._session.add(ticket)
        self._tickets[ticket.number] = ticket

    def add_account(self, account: Account) -> None:
        """Written at once: the sender's next mail in the batch must find its id."""
        self._session.add(account)
        self._session.flush()
        self._customers.append(account)
        self._directory[account.main_email] = (
            DirectoryMatch(SenderKind.ACCOUNT, account.id, account.name, account.id),)

    def remember_message_id(self, message_id: str, ticket: Ticket) -> None:
        """An id not read ahead (every id of the batch's mails was) is one of our own
        new ones, which no ticket knows: no query for it."""
        if self._references.get(message_id) is None:
            self._references[message_id] = ticket
            self._remembered.append((message_id, ticket))

    def automatic_answers(self, recipients: Collection[str], since: datetime) -> Mapping[str, int]:
        missing = [r for r in recipients if r not in self._answers]
        if missing:
            self._answers.update(read_answer_counts(self._session, missing, since))
        return {r: self._answers[r] for r in recipients}

    def add_automatic_answer(self, recipient: str, at: datetime) -> None:
        self._session.add(AutoAnswer(recipient=recipient, at=at))
        self._answers[recipient] = self.automatic_answers([recipient], at)[recipient] + 1

    def _read_flagged(self, recipients: Collection[str]) -> None:
        flagged = read_flagged(self._session, recipients)
        self._flagged.update((r, r in flagged) for r in recipients)

    def flagged_addresses(self, recipients: Collection[str]) -> set[str]:
        missing = [r for r in recipients if r not in self._flagged]
        if missing:
            self._read_flagged(missing)
        return {r for r in recipients if self._flagged[r]}

    def keep_file(self, data_dir: Path, payload: bytes) -> str:
        """Written by a few threads while the batch goes on (creating, writing and
        syncing a file is waiting on the disk); `write` waits for them."""
        digest = hashlib.sha256(payload).hexdigest()
        target = attachment_path(data_dir, digest)
        self._files.append(_FILE_WRITERS.submit(write_file, target, payload))
        return digest

    def write(self) -> None:
        """Write what the batch added: its files, every row, then the Message-IDs it
        learnt."""
        for written in self._files:
            written.result()  # raises, and so fails the batch, when a file could not be
        for year, last in self._numbers.items():
            self._session.execute(update(TicketCounter).where(TicketCounter.year == year)
                                  .values(last=last)
                                  .execution_options(synchronize_session=False))
        number_new_rows(self._session)
        self._session.flush()
        if self._remembered:
            self._session.execute(
                insert_ignoring_duplicates(THREAD_REFS, self._session),
                [{"message_id": m, "ticket_id": t.id} for m, t in self._remembered])


def number_new_rows(session: Session) -> None:
    """On SQLite, give the session's new rows their ids before they are written.

    SQLite cannot say which id went to which row of a many-row INSERT, so the
    ORM writes a row whose id the database chooses with an INSERT of its own;
    with the ids given here, each table's rows of a batch go in one statement.
    The ids are SQLite's own choice (the largest so far, plus one): the batch
    holds the database's write lock, so no other writer can take one meanwhile.
    PostgreSQL already writes many rows in one statement and returns their ids.
    """
    if returns_ids_of_many_rows(session):
        return
    unnumbered: dict[type[Any], list[Any]] = {}
    for row in session.new:
        if getattr(row, "id", 0) is None:
            unnumbered.setdefault(type(row), []).append(row)
    for model, rows in unnumbered.items():
        with session.no_autoflush:  # the rows must not be written before they have ids
            last = session.execute(select(func.max(model.id))).scalar() or 0
        rows.sort(key=lambda row: inspect(row).insert_order)  # in the order they were added
        for offset, row in enumerate(rows, start=1):
            row.id = last + offset
