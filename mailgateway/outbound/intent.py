"""What the pipeline and the scheduler ask to be mailed, before it is rendered.

Deciding *that* a mail is due belongs to the stage that caused it; turning it
into an RFC 5322 message belongs to `outbound`. This value is the hand-over,
and it is what the outbox keeps (`outbox_document`) until the dispatcher
renders it: rendering and composing were a fifth of the work of receiving
a new ticket, so they are kept out of the transaction that receives the mail.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailgateway.config import Settings


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
    REFUSED_NOTICE = "refused_notice"      # a technician's mail refused: to the group
    ENCRYPTED_MAIL = "encrypted_mail"      # the customer's reply is encrypted: unreadable here
    BOUNCE_NOTICE = "bounce_notice"        # a mail to the customer bounced: to the group
    DUPLICATE_JOINED = "duplicate_joined"  # a repeated request added to its open ticket
    STATUS_REPORT = "status_report"        # STATO / I MIEI TICKET: the sender's tickets


# Automatic answers to a mail received: a robot at the other end could answer them
# back, so they are rate-limited per recipient and never sent to a machine.
ANSWERING_KINDS = frozenset(
    {MailKind.ACKNOWLEDGMENT, MailKind.UNKNOWN_SENDER, MailKind.CLOSED_TICKET,
     MailKind.REJECTED, MailKind.ENCRYPTED_MAIL, MailKind.DUPLICATE_JOINED,
     MailKind.STATUS_REPORT}
)
# Automatic mails time sends (RFC 3834 "auto-generated"): they answer nothing.
GENERATED_KINDS = frozenset({MailKind.REMINDER, MailKind.AUTOCLOSE})
AUTOMATIC_KINDS = ANSWERING_KINDS | GENERATED_KINDS


@dataclass(frozen=True)
class MailIntent:
    kind: MailKind
    to: tuple[str, ...]
    language: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None          # the Message-ID we answer, without <>
    references: tuple[str, ...] = ()        # the thread so far, oldest first, without <>
    context: Mapping[str, Any] = field(default_factory=dict)  # template variables

    @property
    def automatic(self) -> bool:
        """Written by no person: marked so (Auto-Submitted), never to our own addresses."""
        return self.kind in AUTOMATIC_KINDS

    @property
    def answers_mail(self) -> bool:
        """An automatic answer to a mail received: rate-limited per recipient."""
        return self.kind in ANSWERING_KINDS


@dataclass(frozen=True)
class QueuedMail:
    """An outbox row just queued: what the caller may want to know of it. Its
    Message-ID names it; the row itself is written with the caller's commit."""

    kind: MailKind
    message_id: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class StoredIntent:
    """An outbox row's intent read back: enough to render the mail as it was asked for."""

    intent: MailIntent  # its context: the template variables of the moment it was queued
    ticket_number: str | None


_DATETIME = "$datetime"  # JSON has no date type; the templates format real datetimes


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _to_json(value: Any) -> Any:
    if type(value) in _PLAIN:  # most of a context: no call deeper
        return value
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, Mapping):
        return {str(k): v if type(v) in _PLAIN else _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _DATETIME in value:
            return datetime.fromisoformat(value[_DATETIME])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def outbox_document(intent: MailIntent, ticket_number: str | None) -> dict[str, Any]:
    """The intent, with its template context, as JSON for the outbox row.

    The context is a snapshot taken when the mail is queued, so the mail tells
    the ticket as it was then (its status, its deadline), however late it is sent.
    """
    return {
        "kind": intent.kind.value, "to": list(intent.to), "cc": list(intent.cc),
        "language": intent.language, "ticket_number": ticket_number,
        "in_reply_to": intent.in_reply_to,
        "references": list(intent.references), "context": _to_json(intent.context),
    }


def stored_intent(document: Mapping[str, Any]) -> StoredIntent:
    intent = MailIntent(
        kind=MailKind(document["kind"]), to=tuple(document["to"]), cc=tuple(document["cc"]),
        language=document["language"], in_reply_to=document["in_reply_to"],
        references=tuple(document["references"]),
        context=_from_json(document["context"]),
    )
    return StoredIntent(intent, document["ticket_number"])


def new_message_id(settings: Settings) -> str:
    """A fresh Message-ID of ours, without the angle brackets: 128 random bits."""
    return f"mg.{os.urandom(16).hex()}@{settings.helpdesk.domains[0]}"
