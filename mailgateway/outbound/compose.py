"""A MailIntent and its template context → an RFC 5322 message ready to send.

Everything a mail client needs to keep the conversation together is decided
here, once: the ticket tag in the subject, a Message-ID of ours, capped
`In-Reply-To`/`References`, and a signed `Reply-To` whose token carries the
ticket (a staff token for mails to technicians, which is what lets their
answers act on the ticket). Every mail names the helpdesk in
`X-Mailgateway-Loop` so our own mail coming back is recognised; automatic
ones say so (`Auto-Submitted`, RFC 3834) so other robots do not answer them.

The texts come from the templates (`render.py`); ANSWER mails carry the
technician's stored files. The dispatcher renders a queued mail when it
sends it (`compose_queued`), outside the transaction that received the mail.

The result is the message's bytes (CRLF line endings), written here rather
than through `email.message.EmailMessage` with `email.policy.SMTP`: that API
parses every header it is given (about thirty a mail, parts included) and
folds each again on output. Built on it, even with its header classes made
once, a mail took 1.2-2 ms of CPU against 0.08-0.15 ms here, and the
dispatcher 2.8-3.5 ms of CPU a mail sent against 1.3-1.4 ms: under 300
mails/s on one interpreter, whatever the machine, where the target is 500
on SQLite (`python -m benchmarks --only dispatcher`). Its folding is also
wrong where this is careful: it encodes a long message id, drops the quotes
of a long quoted display name (CPython gh-80222) and leaves two spaces where
it folds a subject before an encoded word. What it would have guaranteed is
kept: text and HTML are quoted-printable UTF-8 alternatives, files base64,
header texts RFC 2047-encoded and folded (message ids only between ids,
never encoded), attachment names RFC 2231-encoded, so no line exceeds 998
octets whatever the texts contain, and a value with a line break raises
rather than injecting a header.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from email.utils import format_datetime, parseaddr
from typing import Any
from urllib.parse import quote

from mailgateway.attachments import attachment_path
from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.errors import PermanentError
from mailgateway.outbound.intent import MailIntent, MailKind, new_message_id, stored_intent
from mailgateway.outbound.render import RenderedMail, choose_language, render
from mailgateway.reply_token import ReplyToken, TokenPurpose, reply_address, staff_token

# Mails that go to technicians carry a staff token: answering them may act on the ticket.
STAFF_KINDS = frozenset(
    {MailKind.NEW_TICKET_NOTICE, MailKind.CUSTOMER_REPLY_NOTICE, MailKind.OVERDUE}
)
# Automatic mails that answer no message (RFC 3834: auto-generated, not auto-replied).
GENERATED_KINDS = frozenset({MailKind.REMINDER, MailKind.AUTOCLOSE})

REFERENCES_HEAD = 1  # the thread's first message: what clients thread on
REFERENCES_TAIL = 10  # and the most recent ones
_MAX_ID_LENGTH = 900  # longer ids could not be folded under 998 octets


@dataclass(frozen=True)
class ComposedMail:
    """A message ready for the outbox: its Message-ID (without <>) and its bytes."""

    message_id: str
    raw: bytes


@dataclass(frozen=True)
class AttachmentFile:
    filename: str
    content_type: str
    data: bytes


# --- headers -----------------------------------------------------------------

_CRLF = "\r\n"
_Q_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
_ENCODED_WORD_PAYLOAD = 63  # "=?utf-8?q?" + payload + "?=" stays within 75 characters
_FOLD_AT = 78


def _no_line_break(value: str) -> str:
    """`value`, refused when it would end the header and start another."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"header values may not contain line breaks: {value!r}")
    return value


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


def _fold(name: str, tokens: Iterable[str]) -> str:
    """`Name: token token …`, folded before a token that would pass 78 characters."""
    head = f"{name}:"
    lines, line = [], head
    for token in tokens:
        if len(line) + 1 + len(token) > _FOLD_AT and line != head:
            lines.append(line)
            line = ""
        line += f" {token}"
    lines.append(line)
    return _CRLF.join(lines) + _CRLF


def _text_header(name: str, value: str) -> str:
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
    return _fold(name, tokens)


def _phrase(display: str) -> list[str]:
    """A display name as header words: atoms as they are, else quoted, else encoded.

    A word or a quoted name too long to fold is encoded too: encoded words fold.
    """
    words = _no_line_break(display).split()
    text = " ".join(words)
    if not words or (
        "=?" not in text
        and all(_ATEXT.issuperset(word) and len(word) <= _ENCODED_WORD_PAYLOAD for word in words)
    ):
        return words
    if text.isascii() and text.isprintable() and len(text) <= _ENCODED_WORD_PAYLOAD:
        return ['"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _q_encoded_words(text)


def _addr_spec(address: str) -> str:
    """An address for a header; a domain that is not ASCII goes in its IDNA form."""
    local, at, domain = _no_line_break(address).strip().rpartition("@")
    if at and not domain.isascii():
        with suppress(UnicodeError):  # not a valid name: left as written
            domain = domain.encode("idna").decode("ascii")
    return f"{local}{at}{domain}"


def _mailbox(display: str, address: str) -> list[str]:
    phrase = _phrase(display)
    return [*phrase, f"<{_addr_spec(address)}>"] if phrase else [_addr_spec(address)]


def _recipient(value: str) -> list[str]:
    """One recipient as header words: a bare address as it is, `Name <address>` re-encoded."""
    value = _no_line_break(value).strip()
    if _PLAIN_ADDRESS.fullmatch(value):
        return [value]
    display, address = parseaddr(value)
    return _mailbox(display, address or value)


def _address_list(name: str, values: Iterable[str]) -> str:
    tokens: list[str] = []
    for value in values:
        if tokens:
            tokens[-1] += ","
        tokens += _recipient(value)
    return _fold(name, tokens)


def _line(name: str, value: str) -> str:
    return f"{name}: {_no_line_break(value)}{_CRLF}"


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
    """The stored files an answer carries; a missing one is an error, not a silent omission."""
    files = []
    for ref in refs:
        path = attachment_path(settings.data_dir, str(ref["sha256"]))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PermanentError(f"attachment {ref.get('filename')!r} missing at {path}") from exc
        content_type = str(ref.get("content_type") or "application/octet-stream")
        files.append(AttachmentFile(str(ref.get("filename") or path.name), content_type, data))
    return files


_MIME_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*")
_FILENAME_SEGMENT = 60  # characters of an RFC 2231 parameter section


def _mime_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.split(";")[0].strip().lower().partition("/")
    # message/* and multipart/* may not be base64-encoded: send them as opaque files.
    if (
        not _MIME_TOKEN.fullmatch(maintype)
        or not _MIME_TOKEN.fullmatch(subtype)
        or maintype in {"message", "multipart"}
    ):
        return "application", "octet-stream"
    return maintype, subtype


def _disposition(filename: str) -> str:
    """`Content-Disposition` naming the file: quoted when short ASCII, else RFC 2231."""
    if filename.isascii() and filename.isprintable() and len(filename) <= _FILENAME_SEGMENT:
        escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
        return f'Content-Disposition: attachment; filename="{escaped}"'
    encoded = quote(filename, safe="")
    sections: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _FILENAME_SEGMENT, len(encoded))
        escape = encoded.find("%", end - 2, end)  # never cut a %XX in two
        if end < len(encoded) and escape != -1:
            end = escape
        sections.append(encoded[start:end])
        start = end
    if len(sections) == 1:
        params = [f"filename*=utf-8''{sections[0]}"]
    else:
        params = [f"filename*0*=utf-8''{sections[0]}"]
        params += [f"filename*{n}*={section}" for n, section in enumerate(sections[1:], 1)]
    return "Content-Disposition: attachment;\r\n " + ";\r\n ".join(params)


# --- the body ----------------------------------------------------------------


def _text_part(subtype: str, text: str) -> bytes:
    """A quoted-printable UTF-8 text part; its lines end with CRLF, the last one too."""
    content = text.replace("\r\n", "\n").replace("\r", "\n")
    if not content.endswith("\n"):
        content += "\n"
    body = binascii.b2a_qp(content.encode("utf-8"), istext=True)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return head.encode("ascii") + body.replace(b"\n", b"\r\n")


def _attachment_part(file: AttachmentFile) -> bytes:
    maintype, subtype = _mime_type(file.content_type)
    head = (
        f"Content-Type: {maintype}/{subtype}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"{_disposition(file.filename)}\r\n\r\n"
    )
    return head.encode("ascii") + base64.encodebytes(file.data).replace(b"\n", b"\r\n")


def _multipart(subtype: str, boundary: str, parts: Sequence[bytes]) -> tuple[str, bytes]:
    """The Content-Type header and the body of a multipart entity made of `parts`.

    Boundaries start with "=_", which neither quoted-printable nor base64 text
    can contain, so no part needs to be searched for them.
    """
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    body = delimiter[2:] + delimiter.join(parts) + f"\r\n--{boundary}--\r\n".encode("ascii")
    return f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n', body


def _body(rendered: RenderedMail, attachments: Sequence[AttachmentFile]) -> tuple[str, bytes]:
    """Text and HTML as alternatives, inside a multipart/mixed with the files if any."""
    unique = uuid.uuid4().hex
    texts = [_text_part("plain", rendered.text), _text_part("html", rendered.html)]
    content_type, body = _multipart("alternative", f"=_a.{unique}", texts)
    if not attachments:
        return content_type, body
    parts = [content_type.encode("ascii") + b"\r\n" + body]
    parts += [_attachment_part(file) for file in attachments]
    return _multipart("mixed", f"=_m.{unique}", parts)


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
    fields = [_fold("From", _mailbox(helpdesk.name, helpdesk.address))]
    fields.append(_address_list("To", intent.to))
    if intent.cc:
        fields.append(_address_list("Cc", intent.cc))
    if ticket_number is not None:
        address = reply_address(helpdesk.address, helpdesk.secret,
                                reply_token(settings, clock, intent, ticket_number))
        fields.append(_fold("Reply-To", _mailbox(helpdesk.name, address)))
    fields.append(_text_header("Subject", tagged_subject(settings, subject, ticket_number)))
    fields.append(_line("Date", format_datetime(clock.now())))
    fields.append(_line("Message-ID", f"<{message_id}>"))
    chain = capped_references(intent.in_reply_to, intent.references)
    if intent.in_reply_to and chain and chain[-1] == _bare_id(intent.in_reply_to):
        fields.append(_line("In-Reply-To", f"<{chain[-1]}>"))
    if chain:
        fields.append(_fold("References", [f"<{ref}>" for ref in chain]))
    fields.append(_line("X-Mailgateway-Loop", helpdesk.address))
    if ticket_number is not None:
        fields.append(_line("X-Mailgateway-Ticket", ticket_number))
    if intent.automatic:
        generated = intent.kind in GENERATED_KINDS
        fields.append(_line("Auto-Submitted", "auto-generated" if generated else "auto-replied"))
        fields.append(_line("X-Auto-Response-Suppress", "All"))
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
    content_type, body = _body(rendered, attachments)
    fields += ["MIME-Version: 1.0\r\n", content_type]
    fields.append(_line("Content-Language", choose_language(settings, intent.language)))
    fields.append(_CRLF)
    # Headers are ASCII but for an address with a non-ASCII local part (RFC 6532).
    return ComposedMail(message_id, "".join(fields).encode("utf-8") + body)


def compose(
    settings: Settings,
    clock: Clock,
    intent: MailIntent,
    context: Mapping[str, Any],
    *,
    ticket_number: str | None,
    message_id: str | None = None,
) -> ComposedMail:
    """Render the templates and build the message; ANSWER mails carry the stored files.
    `message_id` is the one given when the mail was queued, else a new one."""
    rendered = render(settings, intent, context)
    attachments: list[AttachmentFile] = []
    if intent.kind is MailKind.ANSWER:
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
    stored = stored_intent(document)
    context = settings_context(settings) | dict(stored.intent.context)
    return compose(settings, clock, stored.intent, context,
                   ticket_number=stored.ticket_number, message_id=message_id).raw
