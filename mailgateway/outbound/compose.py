"""A MailIntent and its template context → an RFC 5322 message ready to send.

Everything a mail client needs to keep the conversation together is decided
here, once: the ticket tag in the subject, a Message-ID of ours, capped
`In-Reply-To`/`References`, and a signed `Reply-To` whose token carries the
ticket (a staff token for mails to technicians, which is what lets their
answers act on the ticket). Every mail names the helpdesk in
`X-Mailgateway-Loop` so our own mail coming back is recognised; automatic
ones say so (`Auto-Submitted`, RFC 3834) so other robots do not answer them.

The texts come from the templates (`render.py`); answers carry the
technician's stored files, and notices of a customer's reply the
customer's. The dispatcher renders a queued mail when it
sends it (`compose_queued`), outside the transaction that received the mail.

The message's bytes (CRLF line endings) are written by `mime`, by hand
rather than with `email.message.EmailMessage`: that API parses every header
it is given and folds it again on output, which keeps the dispatcher below
its target, and folds some headers wrongly (benchmarks/README.md, "What the
fast paths are for").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from mailgateway.attachments import attachment_path
from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.errors import PermanentError
from mailgateway.outbound import mime
from mailgateway.outbound.intent import (
    GENERATED_KINDS,
    MailIntent,
    MailKind,
    new_message_id,
    stored_intent,
)
from mailgateway.outbound.mime import AttachmentFile
from mailgateway.outbound.render import RenderedMail, choose_language, render
from mailgateway.reply_token import ReplyToken, TokenPurpose, reply_address, staff_token

# Mails that go to technicians carry a staff token: answering them may act on the ticket.
STAFF_KINDS = frozenset(
    {MailKind.NEW_TICKET_NOTICE, MailKind.CUSTOMER_REPLY_NOTICE, MailKind.OVERDUE,
     MailKind.BOUNCE_NOTICE}
)

# Notices to technicians: written by no person, though not answers (RFC 3834).
NOTICE_KINDS = STAFF_KINDS | {MailKind.REFUSED_NOTICE}
# A closed ticket is never reopened: its answer invites no reply to the ticket.
UNANSWERABLE_KINDS = frozenset({MailKind.CLOSED_TICKET})
# Mails that carry the files kept from the mail they pass on.
FILE_KINDS = frozenset({MailKind.ANSWER, MailKind.CUSTOMER_REPLY_NOTICE})

REFERENCES_HEAD = 1  # the thread's first message: what clients thread on
REFERENCES_TAIL = 10  # and the most recent ones
_MAX_ID_LENGTH = 900  # longer ids could not be folded under 998 octets


@dataclass(frozen=True)
class ComposedMail:
    """A message ready to send: its Message-ID (without <>) and its pieces (stored
    files are read only as it is written out)."""

    message_id: str
    message: mime.Message

    @property
    def raw(self) -> bytes:
        return self.message.to_bytes()


# --- pure pieces -----------------------------------------------------------


def _bare_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def _usable_id(bare: str) -> bool:
    """Short enough to fold, and one word of visible ASCII: anything else breaks threading."""
    return (
        0 < len(bare) <= _MAX_ID_LENGTH
        and bare.isascii()
        and bare.isprintable()
        and not any(char in bare for char in " <>")
    )


def capped_references(in_reply_to: str | None, references: Sequence[str]) -> list[str]:
    """The thread's first id and its last ones, ending with the one answered, no duplicates."""
    answered = _bare_id(in_reply_to) if in_reply_to else ""
    # The answered id goes last, whatever its place in `references`.
    ids = [bare for bare in map(_bare_id, references) if bare != answered] + [answered]
    chain: list[str] = []
    for bare in ids:
        if _usable_id(bare) and bare not in chain:
            chain.append(bare)
    if len(chain) > REFERENCES_HEAD + REFERENCES_TAIL:
        chain = chain[:REFERENCES_HEAD] + chain[-REFERENCES_TAIL:]
    return chain


def tagged_subject(settings: Settings, subject: str, number: str | None) -> str:
    """One line, prefixed with the ticket tag unless it already carries it."""
    line = " ".join(subject.split())
    if number is None:
        return line
    tag = settings.helpdesk.ticket_tag.format(number=number)
    if tag.lower() in line.lower():
        return line
    return f"{tag} {line}".strip()


def token_purpose(kind: MailKind) -> TokenPurpose:
    return TokenPurpose.STAFF if kind in STAFF_KINDS else TokenPurpose.CUSTOMER


def reply_token(
    settings: Settings, clock: Clock, intent: MailIntent, ticket_number: str
) -> ReplyToken:
    """What the mail's Reply-To proves: to a technician or group, that this mail about
    this ticket reached them today; to a customer, which ticket it is about."""
    if token_purpose(intent.kind) is TokenPurpose.STAFF:
        return staff_token(settings.helpdesk.secret, ticket_number, intent.to[0],
                           clock.now().date())
    return ReplyToken(TokenPurpose.CUSTOMER, ticket_number)


def settings_context(settings: Settings) -> dict[str, Any]:
    """What every template may use whatever the mail: the desk and its promises."""
    scheduler = settings.scheduler
    return {
        "helpdesk": {"name": settings.helpdesk.name, "address": settings.helpdesk.address},
        "timezone": settings.sla.timezone,
        "first_response_hours": settings.sla.first_response_hours,
        "reminder_days": scheduler.reminder_days,
        "autoclose_days": scheduler.autoclose_days,
        "days_left": scheduler.autoclose_days - scheduler.reminder_days,
    }


# --- attachments -----------------------------------------------------------


def load_attachments(settings: Settings, refs: Iterable[Mapping[str, Any]]) -> list[AttachmentFile]:
    """The stored files a mail carries, read only as it is sent (so a 25 MB file is
    streamed, not held); a missing one is an error, not a silent omission."""
    files = []
    for ref in refs:
        path = attachment_path(settings.data_dir, str(ref["sha256"]))
        if not path.is_file():
            raise PermanentError(f"attachment {ref.get('filename')!r} missing at {path}")
        content_type = str(ref.get("content_type") or "application/octet-stream")
        files.append(AttachmentFile(str(ref.get("filename") or path.name), content_type,
                                    path=path))
    return files


# --- the message -----------------------------------------------------------


def _headers(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    subject: str,
    message_id: str,
    ticket_number: str | None,
) -> list[str]:
    """The message's own header fields, each folded and ending with CRLF."""
    helpdesk = settings.helpdesk
    fields = [mime.fold("From", mime.mailbox(helpdesk.name, helpdesk.address))]
    fields.append(mime.address_list("To", intent.to))
    if intent.cc:
        fields.append(mime.address_list("Cc", intent.cc))
    if ticket_number is not None and intent.kind not in UNANSWERABLE_KINDS:
        address = reply_address(helpdesk.address, helpdesk.secret,
                                reply_token(settings, clock, intent, ticket_number))
        fields.append(mime.fold("Reply-To", mime.mailbox(helpdesk.name, address)))
    fields.append(mime.text_header("Subject", tagged_subject(settings, subject, ticket_number)))
    fields.append(mime.header_line("Date", format_datetime(clock.now())))
    fields.append(mime.header_line("Message-ID", f"<{message_id}>"))
    chain = capped_references(intent.in_reply_to, intent.references)
    if intent.in_reply_to and chain and chain[-1] == _bare_id(intent.in_reply_to):
        fields.append(mime.header_line("In-Reply-To", f"<{chain[-1]}>"))
    if chain:
        fields.append(mime.fold("References", [f"<{ref}>" for ref in chain]))
    fields.append(mime.header_line("X-Mailgateway-Loop", helpdesk.address))
    if ticket_number is not None:
        fields.append(mime.header_line("X-Mailgateway-Ticket", ticket_number))
    if intent.automatic or intent.kind in NOTICE_KINDS:
        generated = intent.kind in GENERATED_KINDS or intent.kind in NOTICE_KINDS
        fields.append(mime.header_line("Auto-Submitted",
                                       "auto-generated" if generated else "auto-replied"))
        fields.append(mime.header_line("X-Auto-Response-Suppress", "All"))
    return fields


def build_message(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    rendered: RenderedMail,
    *,
    message_id: str,
    ticket_number: str | None,
    attachments: Sequence[AttachmentFile] = (),
) -> ComposedMail:
    """The complete message; pure apart from reading the clock it is given."""
    fields = _headers(settings, clock, intent, rendered.subject, message_id, ticket_number)
    content_type, body = mime.body(rendered.text, rendered.html, attachments)
    fields += ["MIME-Version: 1.0\r\n", content_type]
    fields.append(mime.header_line("Content-Language", choose_language(settings, intent.language)))
    fields.append(mime.CRLF)
    # Headers are ASCII but for an address with a non-ASCII local part (RFC 6532).
    head = "".join(fields).encode("utf-8")
    if len(body) == 1 and isinstance(body[0], bytes):  # no stored file: one piece
        return ComposedMail(message_id, mime.Message((head + body[0],)))
    return ComposedMail(message_id, mime.Message((head, *body)))


def compose(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    context: Mapping[str, Any],
    *,
    ticket_number: str | None,
    message_id: str | None = None,
) -> ComposedMail:
    """Render the templates and build the message; answers and notices of a customer's
    reply carry the stored files.
    `message_id` is the one given when the mail was queued, else a new one."""
    rendered = render(settings, intent, context)
    attachments: list[AttachmentFile] = []
    if intent.kind in FILE_KINDS:
        attachments = load_attachments(settings, context.get("attachments") or ())
    return build_message(
        settings,
        clock,
        intent,
        rendered,
        message_id=message_id or new_message_id(settings),
        ticket_number=ticket_number,
        attachments=attachments,
    )


def compose_queued(
    settings: Settings, clock: Clock, document: Mapping[str, Any], message_id: str
) -> bytes:
    """The bytes of a queued mail, rendered now from what was asked when it was queued.

    Raises `PermanentError` when it cannot be built (a stored file gone).
    """
    return queued_message(settings, clock, document, message_id).to_bytes()


def queued_message(
    settings: Settings, clock: Clock, document: Mapping[str, Any], message_id: str
) -> mime.Message:
    """`compose_queued`, its stored files left to be read as it is sent."""
    stored = stored_intent(document)
    context = settings_context(settings) | dict(stored.intent.context)
    return compose(settings, clock, stored.intent, context,
                   ticket_number=stored.ticket_number, message_id=message_id).message
