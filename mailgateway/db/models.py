"""The database: the desk's records and the two durable queues (inbox, outbox).

The database is the only thing that carries work between stages, so every
row that is a queue entry has a status and the timestamps needed to resume
after a crash. Times are stored as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class TicketStatus(StrEnum):
    APERTO = "APERTO"
    IN_GESTIONE = "IN_GESTIONE"
    RISPOSTO = "RISPOSTO"
    CHIUSO = "CHIUSO"


class InboxStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"
    SPAM = "spam"  # flagged by the mail server's filter: kept, nothing opened or answered


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    # Outcomes known after the relay took the mail (outbound.delivery).
    BOUNCED = "bounced"      # a recipient's server refused it for good
    DELIVERED = "delivered"  # proof of delivery came back (a certified receipt)


class Account(Base):
    """A customer company (studio / azienda), known by its main address."""

    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    main_email: Mapped[str] = mapped_column(String(320), unique=True)
    vat_number: Mapped[str] = mapped_column(String(32), default="")
    language: Mapped[str | None] = mapped_column(String(8))
    verified: Mapped[bool] = mapped_column(Boolean, default=True)
    # Where answers go when the account writes by PEC: None, to the certified address it
    # wrote from (the delivery receipts are then the desk's proof); else this address.
    answer_email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime]
    persons: Mapped[list[Person]] = relationship(back_populates="account")


class Person(Base):
    """A collaborator (PERSONA) registered under an account."""

    __tablename__ = "persons"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime]
    account: Mapped[Account] = relationship(back_populates="persons")


class Staff(Base):
    """A technician (tecnico)."""

    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    group: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]


class TicketCounter(Base):
    """Last ticket number handed out per year; one row per year, updated under lock."""

    __tablename__ = "ticket_counters"
    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer, default=0)


# What the scheduler looks for, each in an index of its own: a pass reads the due
# tickets, never all of them. Partial: closed and answered tickets, most of a desk's,
# stay out of them.
_RISPOSTO = text("status = 'RISPOSTO'")
_UNANSWERED = text("answered_at IS NULL AND overdue_signalled_at IS NULL "
                   "AND status != 'CHIUSO'")


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_risposto_since", "answered_at",
              sqlite_where=_RISPOSTO, postgresql_where=_RISPOSTO),
        Index("ix_tickets_unanswered_due", "due_at",
              sqlite_where=_UNANSWERED, postgresql_where=_UNANSWERED),
        # An account's latest tickets (what a new request may repeat) without reading
        # the account's whole history for each mail.
        Index("ix_tickets_account_updated", "account_id", "updated_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    subject: Mapped[str] = mapped_column(Text)
    product: Mapped[str | None] = mapped_column(String(200))
    request_type: Mapped[str] = mapped_column(String(32))
    impact: Mapped[str] = mapped_column(String(32))
    group: Mapped[str | None] = mapped_column(String(64))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("staff.id"))
    linked_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    language: Mapped[str] = mapped_column(String(8))
    rules: Mapped[list[str]] = mapped_column(JSON, default=list)
    watchers: Mapped[list[str]] = mapped_column(JSON, default=list)
    root_message_id: Mapped[str | None] = mapped_column(String(998))
    # The certified (PEC) address the customer wrote from, when a mail came by PEC.
    pec_address: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    due_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    overdue_signalled_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    account: Mapped[Account] = relationship()
    person: Mapped[Person | None] = relationship()
    assignee: Mapped[Staff | None] = relationship()
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id"
    )
    events: Mapped[list[Event]] = relationship(back_populates="ticket", order_by="Event.id")


class Message(Base):
    """One contribution to a ticket: the customer's text, a technician's answer, a note."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    # Indexed: a kept file's row finds its message by the mail it came in.
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inbox.id"), index=True)
    direction: Mapped[str] = mapped_column(String(3))  # "in" | "out"
    author: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    refused_attachments: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The PEC envelope it came in (`pipeline.pec.PecFacts.record`): provider, certified
    # sender and time, daticert identifiers, anomaly. None for ordinary mail.
    pec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    inbox: Mapped[InboxMail | None] = relationship()
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", order_by="Attachment.id"
    )


class Attachment(Base):
    """A kept file; its bytes live content-addressed under data_dir/attachments/<sha256>."""

    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    message: Mapped[Message] = relationship(back_populates="attachments")


class ThreadRef(Base):
    """Every Message-ID known to belong to a ticket, ours and the customer's alike,
    so one indexed lookup threads a reply by In-Reply-To/References."""

    __tablename__ = "thread_refs"
    message_id: Mapped[str] = mapped_column(String(998), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    ticket: Mapped[Ticket] = relationship()


class Event(Base):
    """A state change or decision on a ticket: who, when, from, to, why."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    ticket: Mapped[Ticket] = relationship(back_populates="events")


class InboxMail(Base):
    """Every raw mail as received, the first durable queue."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_status_id", "status", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime]
    transport: Mapped[str] = mapped_column(String(16))
    envelope_from: Mapped[str | None] = mapped_column(String(998))
    envelope_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.RECEIVED)
    reason: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str | None] = mapped_column(String(320))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None]
    # Came through a transport whose MTA strips outsiders' Authentication-Results.
    trusts_authentication_results: Mapped[bool] = mapped_column(Boolean, default=False)
    ticket: Mapped[Ticket | None] = relationship()


class InboxRaw(Base):
    """The bytes of an inbox mail, kept apart from its status: SQLite rewrites a whole
    row on UPDATE, so a 30 MB mail inline would be copied at every change of state."""

    __tablename__ = "inbox_raw"
    inbox_id: Mapped[int] = mapped_column(
        ForeignKey("inbox.id", ondelete="CASCADE"), primary_key=True, autoincrement=False)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class OutboxMail(Base):
    """Every mail to send, written in the transaction that caused it; the second queue."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    # What was asked (outbound.intent.outbox_document); the dispatcher renders it into
    # `raw` when it first sends the row. A row written already rendered has no intent.
    intent: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(255))  # outbound.claims.claimant
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    # What became of the mail after the relay took it (outbound.delivery): when it
    # bounced or was delivered, and the server's words (a DSN's diagnostic, a receipt).
    bounced_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    delivery_diagnostic: Mapped[str | None] = mapped_column(Text)
    ticket: Mapped[Ticket | None] = relationship()


class AutoAnswer(Base):
    """One automatic answer sent to an address: the rate limiter's memory."""

    __tablename__ = "auto_answers"
    __table_args__ = (Index("ix_auto_answers_rcpt_at", "recipient", "at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    at: Mapped[datetime]


class BouncingAddress(Base):
    """An address whose mail came back refused: how often, lately, and whether the desk
    has stopped mailing it (`flagged_at`), until an admin clears it."""

    __tablename__ = "bouncing_addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower-cased
    bounces: Mapped[int] = mapped_column(Integer, default=0)  # hard bounces in a row
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    last_diagnostic: Mapped[str] = mapped_column(Text, default="")
    flagged_at: Mapped[datetime | None]


class SolvedTicket(Base):
    """A CHIUSO ticket as the search for similar requests reads it: its request and the
    last answer the customer received. Written in the transaction that closes the ticket
    (`solved.index_solved`). Its full-text index is the database's own and lives beside
    it, made by migration 0007: on SQLite the FTS5 table `solved_search` (Snowball
    Italian stems, written with the row), on PostgreSQL the generated column `search`
    (`to_tsvector('italian', …)`, the subject weighted A, the request D) under a GIN
    index. The models do not describe
    those (`described_by_models`)."""

    __tablename__ = "solved_tickets"
    ticket_id: Mapped[int] = mapped_column(
        ForeignKey("tickets.id"), primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    closed_at: Mapped[datetime]
    subject: Mapped[str] = mapped_column(Text)
    request: Mapped[str] = mapped_column(Text)   # the first message, without its signature
    answer: Mapped[str] = mapped_column(Text)    # the technician's last answer
    ticket: Mapped[Ticket] = relationship()


# The search structures no model describes; Alembic's comparison leaves them alone.
SEARCH_TABLE = "solved_search"
SEARCH_TERMS = "solved_search_terms"   # SQLite: fts5vocab, documents per term
SEARCH_COLUMN = "search"
SEARCH_INDEX = "ix_solved_tickets_search"


def described_by_models(obj: Any, name: str | None, type_: str, reflected: bool,
                        compare_to: Any) -> bool:
    """Alembic's `include_object`: False for the full-text structures of migration 0007
    (SQLite's FTS5 table and its shadow tables, PostgreSQL's column and index)."""
    if type_ == "table":
        return not (name or "").startswith(SEARCH_TABLE)
    if type_ == "column":
        return not (name == SEARCH_COLUMN and obj.table.name == SolvedTicket.__tablename__)
    return name != SEARCH_INDEX
