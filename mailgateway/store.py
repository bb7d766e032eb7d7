"""Where processing reads what it decides on, and writes what later reads must find.

The pipeline and the outbox ask the same few questions again and again: who
is this address, which ticket does this number or Message-ID name, how many
automatic answers has this address had lately. `Store` is that seam.
`SessionStore` answers each question with a query in the caller's session and
writes each row at once, so everything a mail causes is in that session, and
committing it is all there is to do. A batch of mails (a bulk import, a
processor's backlog) goes through `batch_store.BatchStore`, which reads the
batch's answers in a few queries and writes its rows together; the domain
code is the same.

Every other row (tickets' messages, events, outbox rows) is written by the
domain code with plain `session.add` in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Table,
    bindparam,
    func,
    literal,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session, joinedload

from mailgateway.attachments import store_file
from mailgateway.db.dialect import insert_ignoring_duplicates
from mailgateway.db.models import (
    Account,
    AutoAnswer,
    BouncingAddress,
    Person,
    Staff,
    ThreadRef,
    Ticket,
)
from mailgateway.pipeline.identify import DirectoryMatch, SenderKind
from mailgateway.tickets import allocate_number


class Store(Protocol):
    """What processing reads and the writes that later reads depend on."""

    # Mail of the past being imported (`mailgateway import`): nothing that is about
    # "now" applies to it (solved tickets suggested, repeated requests joined).
    archive: bool

    @property
    def session(self) -> Session:
        """The transaction everything is written in."""
        ...

    def directory(self, email: str) -> tuple[DirectoryMatch, ...]:
        """Every staff, person and account row with this address."""
        ...

    def ticket_numbered(self, number: str) -> Ticket | None: ...

    def tickets_referencing(self, message_ids: Sequence[str]) -> list[Ticket]:
        """The tickets that know these Message-IDs, in the order of the ids, each once."""
        ...

    def ticket_number(self, year: int) -> str:
        """The next ticket number of `year` (`tickets.allocate_number`)."""
        ...

    def add_ticket(self, ticket: Ticket) -> None: ...

    def add_account(self, account: Account) -> None: ...

    def remember_message_id(self, message_id: str, ticket: Ticket) -> None:
        """Replies may reference `message_id`: it names `ticket` from now on, unless
        another ticket knew it first."""
        ...

    def automatic_answers(self, recipients: Collection[str], since: datetime) -> Mapping[str, int]:
        """How many automatic answers each (lower-cased) recipient had after `since`."""
        ...

    def add_automatic_answer(self, recipient: str, at: datetime) -> None: ...

    def flagged_addresses(self, recipients: Collection[str]) -> set[str]:
        """Those of the (lower-cased) `recipients` that bounce and are no longer mailed."""
        ...

    def keep_file(self, data_dir: Path, payload: bytes) -> str:
        """Store an attachment's bytes under `data_dir` by their sha256, returned; the
        file is on disk before the rows that name it are committed."""
        ...


_EMAILS: BindParameter[Any] = bindparam("emails", expanding=True)
# Every directory row with one of the addresses, in one round trip.
DIRECTORY: CompoundSelect[Any] = union_all(
    select(literal(SenderKind.STAFF.value), Staff.email, Staff.id, Staff.name, null(),
           Staff.active, Staff.group).where(Staff.email.in_(_EMAILS)),
    select(literal(SenderKind.PERSON.value), Person.email, Person.id, Person.name,
           Person.account_id, true(), null()).where(Person.email.in_(_EMAILS)),
    select(literal(SenderKind.ACCOUNT.value), Account.main_email, Account.id, Account.name,
           Account.id, true(), null()).where(Account.main_email.in_(_EMAILS)),
)


def read_directory(
    session: Session, emails: Collection[str]
) -> dict[str, tuple[DirectoryMatch, ...]]:
    """The directory rows of `emails`; an address with none maps to ()."""
    found: dict[str, list[DirectoryMatch]] = {email: [] for email in emails}
    for kind, email, id_, name, account_id, active, group in session.execute(
            DIRECTORY, {"emails": list(emails)}):
        found[email].append(
            DirectoryMatch(SenderKind(kind), id_, name, account_id, bool(active), group))
    return {email: tuple(matches) for email, matches in found.items()}


# A ticket with what deciding and queueing mail read of it.
TICKET_WITH_PEOPLE = select(Ticket).options(
    joinedload(Ticket.account), joinedload(Ticket.person), joinedload(Ticket.assignee))


def read_references(session: Session, message_ids: Collection[str]) -> dict[str, Ticket]:
    """The tickets that know any of `message_ids`, by id."""
    rows = session.execute(
        select(ThreadRef.message_id, Ticket).join(Ticket, Ticket.id == ThreadRef.ticket_id)
        .options(joinedload(Ticket.account), joinedload(Ticket.person),
                 joinedload(Ticket.assignee))
        .where(ThreadRef.message_id.in_(list(message_ids)))).all()
    return {message_id: ticket for message_id, ticket in rows}


def read_answer_counts(
    session: Session, recipients: Collection[str], since: datetime
) -> dict[str, int]:
    counts = dict.fromkeys(recipients, 0)
    counts.update((recipient, count) for recipient, count in session.execute(
        select(AutoAnswer.recipient, func.count())
        .where(AutoAnswer.recipient.in_(list(recipients)), AutoAnswer.at > since)
        .group_by(AutoAnswer.recipient)))
    return counts


def read_flagged(session: Session, recipients: Collection[str]) -> set[str]:
    if not recipients:
        return set()
    return set(session.scalars(select(BouncingAddress.address).where(
        BouncingAddress.address.in_(list(recipients)), BouncingAddress.flagged_at.is_not(None))))


THREAD_REFS = cast(Table, ThreadRef.__table__)


class SessionStore:
    """The plain store: a query per question, each write in the session at once."""

    def __init__(self, session: Session, *, archive: bool = False) -> None:
        self._session = session
        self.archive = archive

    @property
    def session(self) -> Session:
        return self._session

    def directory(self, email: str) -> tuple[DirectoryMatch, ...]:
        return read_directory(self._session, [email])[email]

    def ticket_numbered(self, number: str) -> Ticket | None:
        return self._session.execute(
            TICKET_WITH_PEOPLE.where(Ticket.number == number)).unique().scalar_one_or_none()

    def tickets_referencing(self, message_ids: Sequence[str]) -> list[Ticket]:
        found = read_references(self._session, message_ids)
        return list({id(t): t for t in (found[m] for m in message_ids if m in found)}.values())

    def ticket_number(self, year: int) -> str:
        return allocate_number(self._session, year)

    def add_ticket(self, ticket: Ticket) -> None:
        self._session.add(ticket)

    def add_account(self, account: Account) -> None:
        self._session.add(account)

    def remember_message_id(self, message_id: str, ticket: Ticket) -> None:
        if ticket in self._session.new:
            self._session.flush()  # the ticket's row first: its id is needed
        self._session.execute(insert_ignoring_duplicates(THREAD_REFS, self._session),
                              {"message_id": message_id, "ticket_id": ticket.id})

    def automatic_answers(self, recipients: Collection[str], since: datetime) -> Mapping[str, int]:
        return read_answer_counts(self._session, recipients, since)

    def add_automatic_answer(self, recipient: str, at: datetime) -> None:
        self._session.add(AutoAnswer(recipient=recipient, at=at))

    def flagged_addresses(self, recipients: Collection[str]) -> set[str]:
        return read_flagged(self._session, recipients)

    def keep_file(self, data_dir: Path, payload: bytes) -> str:
        return store_file(data_dir, payload)
