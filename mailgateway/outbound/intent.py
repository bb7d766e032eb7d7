"""What the pipeline and the scheduler ask to be mailed, before it is rendered.

Deciding *that* a mail is due belongs to the stage that caused it; turning it
into an RFC 5322 message belongs to `outbound`. This value is the hand-over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class MailKind(StrEnum):
    ACKNOWLEDGMENT = "acknowledgment"      # a new ticket opened: to the customer
    NEW_TICKET_NOTICE = "new_ticket_notice"  # a new ticket opened: to its group / assignee
    # the customer wrote again: to the assignee, else the group
    CUSTOMER_REPLY_NOTICE = "customer_reply_notice"
    ANSWER = "answer"                      # a technician answered: to the customer
    UNKNOWN_SENDER = "unknown_sender"      # we do not know who wrote
    CLOSED_TICKET = "closed_ticket"        # a mail to a CHIUSO ticket
    REJECTED = "rejected"                  # a routing rule refused the mail
    REMINDER = "reminder"                  # RISPOSTO for reminder_days
    AUTOCLOSE = "autoclose"                # RISPOSTO for autoclose_days: closed
    OVERDUE = "overdue"                    # first-response SLA missed: to the group


AUTOMATIC_KINDS = frozenset(
    {
        MailKind.ACKNOWLEDGMENT,
        MailKind.UNKNOWN_SENDER,
        MailKind.CLOSED_TICKET,
        MailKind.REJECTED,
        MailKind.REMINDER,
        MailKind.AUTOCLOSE,
    }
)


@dataclass(frozen=True)
class MailIntent:
    kind: MailKind
    to: tuple[str, ...]
    language: str
    ticket_id: int | None = None
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None          # the Message-ID we answer, without <>
    references: tuple[str, ...] = ()        # the thread so far, oldest first, without <>
    context: Mapping[str, Any] = field(default_factory=dict)  # template variables

    @property
    def automatic(self) -> bool:
        """Automatic mails are rate-limited and never sent in answer to a machine."""
        return self.kind in AUTOMATIC_KINDS


@dataclass(frozen=True)
class QueuedMail:
    """An outbox row just written: what the caller may want to know of it, as a value
    (building an ORM object for a row nobody reads cost as much as writing it)."""

    id: int
    kind: MailKind
    message_id: str
    ticket_id: int | None
    recipients: tuple[str, ...]
    raw: bytes
