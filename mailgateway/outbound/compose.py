"""A MailIntent and its template context → an RFC 5322 message ready for the outbox.

Everything a mail client needs to keep the conversation together is decided
here, once: the ticket tag in the subject, a Message-ID of ours, capped
`In-Reply-To`/`References`, and a signed `Reply-To` whose token carries the
ticket (a staff token for mails to technicians, which is what lets their
answers act on the ticket). Every mail names the helpdesk in
`X-Mailgateway-Loop` so our own mail coming back is recognised; automatic
ones say so (`Auto-Submitted`, RFC 3834) so other robots do not answer them.

The texts come from the templates (`render.py`); ANSWER mails carry the
technician's stored files.

Bodies are quoted-printable and headers RFC 2047-encoded (policy SMTP), so
no line of the result exceeds 998 octets whatever the texts contain.
"""

from __future__ import annotations

import email.policy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.errors import PermanentError
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.outbound.render import RenderedMail, choose_language, render
from mailgateway.reply_token import ReplyToken, TokenPurpose, reply_address

# Mails that go to technicians carry a staff token: answering them may act on the ticket.
STAFF_KINDS = frozenset(
    {MailKind.NEW_TICKET_NOTICE, MailKind.CUSTOMER_REPLY_NOTICE, MailKind.OVERDUE}
)
# Automatic mails that answer no message (RFC 3834: auto-generated, not auto-replied).
GENERATED_KINDS = frozenset({MailKind.REMINDER, MailKind.AUTOCLOSE})

REFERENCES_HEAD = 1  # the thread's first message: what clients thread on
REFERENCES_TAIL = 10  # and the most recent ones
_MAX_ID_LENGTH = 900  # longer ids could not be folded under 998 octets


class _MessageIdListHeader(UnstructuredHeader, BaseHeader):
    """`In-Reply-To`/`References` folded between ids, never inside one.

    The stock policy treats these headers as free text and RFC 2047-encodes
    any id longer than a line, which breaks threading in every client.
    """

    def fold(self, *, policy: email.policy.Policy) -> str:
        ids = str(self).split()
        return f"{self.name}: " + f"{policy.linesep} ".join(ids) + policy.linesep


_Q_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ENCODED_WORD_PAYLOAD = 63  # "=?utf-8?q?" + payload + "?=" stays within 75 characters
_FOLD_AT = 78


def _q_encoded_words(text: str) -> list[str]:
    """RFC 2047 Q-encoded words for `text`, never splitting a character between two."""
    words: list[str] = []
    payload = ""
    for char in text:
        if char == " ":
            piece = "_"
        elif char in _Q_LITERAL:
            piece = char
        else:
            piece = "".join(f"={byte:02X}" for byte in char.encode("utf-8"))
        if len(payload) + len(piece) > _ENCODED_WORD_PAYLOAD:
            words.append(f"=?utf-8?q?{payload}?=")
            payload = ""
        payload += piece
    if payload:
        words.append(f"=?utf-8?q?{payload}?=")
    return words


def fold_text_header(name: str, value: str, linesep: str = "\r\n") -> str:
    """`Name: value` folded under 78 characters, ASCII words kept readable.

    Everything from the first word that needs encoding on is encoded as one
    run, so the spaces between words survive decoding exactly. (The stock
    policy may leave a space before a fold that precedes an encoded word,
    which decodes as two spaces.)
    """
    words = value.split(" ")
    plain: list[str] = []
    for word in words:
        if not word.isascii() or len(word) > _ENCODED_WORD_PAYLOAD or "=?" in word:
            break
        plain.append(word)
    rest = " ".join(words[len(plain):])
    tokens = [w for w in plain if w] + (_q_encoded_words(rest) if rest else [])
    lines, line = [], f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > _FOLD_AT and line.strip() != f"{name}:":
            lines.append(line)
            line = ""
        line += f" {token}"
    lines.append(line)
    return linesep.join(lines) + linesep


class _TextHeader(UnstructuredHeader, BaseHeader):
    """`Subject` folded by `fold_text_header`."""

    def fold(self, *, policy: email.policy.Policy) -> str:
        return fold_text_header(self.name, " ".join(str(self).split()), policy.linesep)


def _header_registry() -> HeaderRegistry:
    registry = HeaderRegistry()
    registry.map_to_type("in-reply-to", _MessageIdListHeader)
    registry.map_to_type("references", _MessageIdListHeader)
    registry.map_to_type("subject", _TextHeader)
    return registry


POLICY = email.policy.SMTP.clone(header_factory=_header_registry())


@dataclass(frozen=True)
class AttachmentFile:
    filename: str
    content_type: str
    data: bytes


# --- pure pieces -----------------------------------------------------------


def new_message_id(settings: Settings) -> str:
    """A fresh Message-ID of ours, without the angle brackets."""
    return f"mg.{uuid.uuid4().hex}@{settings.helpdesk.domains[0]}"


def _bare_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def capped_references(in_reply_to: str | None, references: Sequence[str]) -> list[str]:
    """The thread's first id and its last ones, ending with the one answered, no duplicates."""
    answered = _bare_id(in_reply_to) if in_reply_to else ""
    # The answered id goes last, whatever its place in `references`.
    ids = [bare for bare in map(_bare_id, references) if bare != answered] + [answered]
    chain: list[str] = []
    for bare in ids:
        if bare and len(bare) <= _MAX_ID_LENGTH and " " not in bare and bare not in chain:
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





# --- attachments -----------------------------------------------------------


def attachment_path(settings: Settings, sha256: str) -> Path:
    return settings.data_dir / "attachments" / sha256[:2] / sha256


def load_attachments(settings: Settings, refs: Iterable[Mapping[str, Any]]) -> list[AttachmentFile]:
    """The stored files an answer carries; a missing one is an error, not a silent omission."""
    files = []
    for ref in refs:
        path = attachment_path(settings, str(ref["sha256"]))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PermanentError(f"attachment {ref.get('filename')!r} missing at {path}") from exc
        content_type = str(ref.get("content_type") or "application/octet-stream")
        files.append(AttachmentFile(str(ref.get("filename") or path.name), content_type, data))
    return files


def _mime_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.split(";")[0].strip().lower().partition("/")
    # message/* and multipart/* may not be base64-encoded: send them as opaque files.
    if not maintype or not subtype or maintype in {"message", "multipart"}:
        return "application", "octet-stream"
    return maintype, subtype


# --- the message -----------------------------------------------------------


def build_message(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    rendered: RenderedMail,
    *,
    message_id: str,
    ticket_number: str | None,
    attachments: Sequence[AttachmentFile] = (),
) -> EmailMessage:
    """The complete message; pure apart from reading the clock it is given."""
    helpdesk = settings.helpdesk
    msg = EmailMessage(policy=POLICY)
    msg["From"] = Address(display_name=helpdesk.name, addr_spec=helpdesk.address)
    msg["To"] = ", ".join(intent.to)
    if intent.cc:
        msg["Cc"] = ", ".join(intent.cc)
    if ticket_number is not None:
        token = ReplyToken(token_purpose(intent.kind), ticket_number)
        address = reply_address(helpdesk.address, helpdesk.secret, token)
        msg["Reply-To"] = Address(display_name=helpdesk.name, addr_spec=address)
    msg["Subject"] = tagged_subject(settings, rendered.subject, ticket_number)
    msg["Date"] = clock.now()
    msg["Message-ID"] = f"<{message_id}>"
    chain = capped_references(intent.in_reply_to, intent.references)
    if intent.in_reply_to and chain and chain[-1] == _bare_id(intent.in_reply_to):
        msg["In-Reply-To"] = f"<{chain[-1]}>"
    if chain:
        msg["References"] = " ".join(f"<{ref}>" for ref in chain)
    msg["X-Mailgateway-Loop"] = helpdesk.address
    if ticket_number is not None:
        msg["X-Mailgateway-Ticket"] = ticket_number
    if intent.automatic:
        msg["Auto-Submitted"] = (
            "auto-generated" if intent.kind in GENERATED_KINDS else "auto-replied"
        )
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for file in attachments:
        maintype, subtype = _mime_type(file.content_type)
        msg.add_attachment(file.data, maintype=maintype, subtype=subtype, filename=file.filename)
    # After the body: setting content clears every Content-* header.
    msg["Content-Language"] = choose_language(settings, intent.language)
    return msg


def compose(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    context: Mapping[str, Any],
    *,
    ticket_number: str | None,
) -> EmailMessage:
    """Render the templates and build the message; ANSWER mails carry the stored files."""
    rendered = render(settings, intent, context)
    attachments: list[AttachmentFile] = []
    if intent.kind is MailKind.ANSWER:
        attachments = load_attachments(settings, context.get("attachments") or ())
    return build_message(
        settings,
        clock,
        intent,
        rendered,
        message_id=new_message_id(settings),
        ticket_number=ticket_number,
        attachments=attachments,
    )
