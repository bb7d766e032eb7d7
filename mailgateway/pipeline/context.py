"""What every stage of the pipeline is given, and what the reading stages found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.outbound.intent import MailIntent, QueuedMail
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.classify import Classification
from mailgateway.pipeline.identify import Sender
from mailgateway.pipeline.parse import ParsedMail

Mailer = Callable[[Session, MailIntent], QueuedMail | None]

# Transaction caches (`db.session.transaction_cache`) the stages share:
SENDERS = "senders"  # directory rows by address
TICKET_IDS = "ticket ids"  # ticket ids by number
# Ticket ids by Message-ID (None: no ticket knows it); forgotten on rollback.
THREAD_REFS = "thread refs"


@dataclass(frozen=True)
class Pipeline:
    """The configuration every stage reads, and where outbound mail goes."""

    settings: Settings
    clock: Clock
    mailer: Mailer


@dataclass(frozen=True)
class Analysis:
    """Everything the pure stages found about one mail, before anything is written."""

    mail: ParsedMail
    classification: Classification
    sender: Sender
    ticket: d.TicketRef | None
    decision: d.Decision


class InboxEntry(Protocol):
    """What processing reads of an inbox row and records on it: the row itself
    (`db.models.InboxMail`), or a `BatchEntry`."""

    @property
    def id(self) -> int: ...
    @property
    def envelope_from(self) -> str | None: ...

    subject: str | None
    sender: str | None
    status: str
    reason: str | None
    processed_at: datetime | None
    ticket_id: int | None
    attempts: int


@dataclass(slots=True)
class BatchEntry:
    """An inbox row a bulk import has just inserted, kept out of the ORM: building
    and tracking an ORM object per mail, then flushing its changes, was a tenth of
    the import's writing. Its fate is written with the batch's other rows
    (`process.record_fate`)."""

    id: int
    envelope_from: str | None
    status: str
    attempts: int = 0
    subject: str | None = None
    sender: str | None = None
    reason: str | None = None
    processed_at: datetime | None = None
    ticket_id: int | None = None
