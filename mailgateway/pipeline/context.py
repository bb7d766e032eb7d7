"""What every stage of the pipeline is given, and what the reading stages found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
