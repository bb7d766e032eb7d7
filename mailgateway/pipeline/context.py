"""What every stage of the pipeline is given, and what the reading stages found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.models import Ticket
from mailgateway.outbound.intent import MailIntent, QueuedMail
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.classify import Classification
from mailgateway.pipeline.identify import Sender
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.rules import RuleBook
from mailgateway.store import Store

# Queues a mail about a ticket (`outbound.queue.enqueue`); tests pass their own.
Mailer = Callable[[Store, MailIntent, Ticket | None], QueuedMail | None]


@dataclass(frozen=True)
class Pipeline:
    """The configuration every stage reads, the rules in force, and where outbound
    mail goes."""

    settings: Settings
    clock: Clock
    mailer: Mailer
    rules: RuleBook


@dataclass(frozen=True)
class Analysis:
    """Everything the pure stages found about one mail, before anything is written."""

    mail: ParsedMail
    classification: Classification
    sender: Sender
    ticket: Ticket | None
    decision: d.Decision
    rules: tuple[str, ...] = ()  # the routing rules that matched, in order
