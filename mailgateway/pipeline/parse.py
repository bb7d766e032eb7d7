"""Raw bytes → ParsedMail: the one place that knows how mail is encoded.

Every later stage (classify, identify, thread, quote, route) works on the frozen
`ParsedMail` and never touches MIME, charsets or a parser library. The message
tree is the stdlib parser's (compat32), the one mail-parser builds too; the
addresses and the date are mail-parser's readings of their headers, which
recover well from sloppy ones. mail-parser's own walk of the tree is not run:
it decodes every part and re-encodes every attachment in base64, which took
twice as long as parsing, and its results would be thrown away, because body
parts, attachments and header text are read here with our own charset policy
(mail-parser falls back to UTF-8 alone: Chinese in `iso-gb2312` became `???`;
and it folds the text of forwarded messages into the body, while a forwarded
message is an attachment here). Should mail-parser's readings raise, the
stdlib's are used; a bytes-level salvage is used when even the tree cannot be
built, so `parse_mail` never raises.

How bytes, header words and HTML become text (the charset policy, html2text) is
`decode`'s business: this module walks the tree and decides what each part is.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from typing import TYPE_CHECKING

import structlog
from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses

from mailgateway.pipeline.decode import (
    aware_datetime,
    decode_8bit_header,
    decode_addresses,
    decode_bytes,
    decode_date,
    decode_header_value,
    has_8bit,
    html_to_text,
    message_ids,
)
from mailgateway.pipeline.large_parts import cut_large_parts, restore_parts
from mailgateway.pipeline.limits import exceeded_limit

if TYPE_CHECKING:
    from mailgateway.pipeline.pec import PecFacts

__all__ = ["Attachment", "ParsedMail", "parse_mail"]

log = structlog.get_logger()

_WS = re.compile(r"\s+")
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:|From ")
# `Content-Type: multipart/mixed;` then `boundary="x"` at the start of the next line.
_UNINDENTED_PARAM = re.compile(rb"(?im)(^content-[\w-]+:[^\r\n]*;[ \t]*\r?\n)([\w*-]+=)")
_BOUNDARY_LINE = re.compile(r"(?m)^--([^\s\"]\S{0,69}?)[ \t]*\r?\n(?=[\w-]+[ \t]*:)")
_HEAD_END = re.compile(rb"(\r?\n\r?\n)")
_LEADING_BLANK = re.compile(rb"\A(?:[ \t]*\r?\n)+")


@dataclass(frozen=True)
class Attachment:
    """A file carried by the mail; the name is the sender's and still untrusted."""

    filename: str
    content_type: str
    payload: bytes
    inline: bool


@dataclass(frozen=True)
class ParsedMail:
    """Everything later stages need from one mail, decoded, with no MIME left in it."""

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    date: datetime | None
    headers: tuple[tuple[str, str], ...]
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]
    # Why the mail is not read (`limits`): only the start of its header is, and the
    # pipeline quarantines it with this reason.
    over_limit: str | None = None
    # The PEC envelope or receipt the mail came in (`pec.read_certified`), if any.
    pec: PecFacts | None = None

    _index: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every stage looks headers up by name; index them once instead of scanning each time.
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.lower(), []).append(value)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})

    def header(self, name: str) -> str | None:
        """First value of a header, matched case-insensitively, as mail headers are."""
        values = self._index.get(name.lower())
        return values[0] if values else None

    def header_all(self, name: str) -> tuple[str, ...]:
        """Every value of a header in order: Received and friends repeat."""
        return self._index.get(name.lower(), ())


def _message_id(value: str | None) -> str | None:
    if value is None:
        return None
    ids = message_ids(value)
    return ids[0] if ids else None


def _bare(addresses: list[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(addr.strip().lower() for _, addr in addresses if addr and addr.strip())


def _load(raw: bytes, defects: list[str]) -> Message:
    """Parse once; a header block broken by unindented continuation lines, or
    preceded by junk, is repaired and parsed a second time: otherwise From and
    Subject end up in the body."""
    message = email.message_from_bytes(raw)
    if any(
        isinstance(d, MissingHeaderBodySeparatorDefect) for p in message.walk() for d in p.defects
    ):
        repaired = _repair_header_block(_UNINDENTED_PARAM.sub(rb"\1 \2", raw))
        if repaired != raw:
            defects.append("header lines without indentation joined to the header above")
            message = email.message_from_bytes(repaired)
    return message


def _repair_header_block(raw: bytes) -> bytes:
    """Junk before the first header is dropped; a stray line between headers is folded."""
    head, sep, rest = [*_HEAD_END.split(raw, maxsplit=1), b"", b""][:3]
    lines = head.splitlines(keepends=True)
    marks = [bool(_HEADER_LINE.match(line)) for line in lines]
    if True not in marks:
        return raw
    first, last = marks.index(True), len(marks) - 1 - marks[::-1].index(True)
    fixed = [
        line if marks[i] or line[:1] in b" \t" or i > last else b" " + line
        for i, line in enumerate(lines)
        if i >= first
    ]
    return b"".join(fixed) + sep + rest


def _payload_bytes(part: Message) -> bytes:
    """The decoded content of a leaf part, or the source text of a message/* part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        text = "\n".join(_source(sub) for sub in payload if isinstance(sub, Message))
        return text.encode("utf-8", "surrogateescape")
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _source(message: Message) -> str:
    """A parsed message written back as it came, headers unfolded by nobody.

    The stdlib generator re-folds every header through `email.header.Header`, which
    costs more than parsing; the parser kept the raw header lines, so they are reused.
    """
    head = "".join(f"{name}: {value}\n" for name, value in message.raw_items())
    payload = message.get_payload()
    if not isinstance(payload, list):
        return head + "\n" + (payload if isinstance(payload, str) else "")
    parts = [_source(sub) for sub in payload if isinstance(sub, Message)]
    if message.get_content_maintype() != "multipart":
        return head + "\n" + "\n".join(parts)
    boundary = message.get_boundary() or ""
    body = "".join(f"\n--{boundary}\n{part}" for part in parts)
    return f"{head}\n{message.preamble or ''}{body}\n--{boundary}--\n{message.epilogue or ''}"


def _filename(part: Message, defects: list[str]) -> str:
    try:
        name = part.get_filename()
    except Exception:  # an RFC 2231 name in a charset the codec rejects
        defects.append("undecodable attachment name")
        return ""
    if not name:
        return ""
    return decode_header_value(str(name), defects)


def _nested_name(part: Message) -> str:
    """A forwarded mail is named after its subject, as mail clients save it."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return "message"
    subject = next((str(v) for k, v in inner.raw_items() if k.lower() == "subject"), "")
    hint = _body_charset(inner) if has_8bit(subject) else None
    return _WS.sub(" ", decode_header_value(subject, None, hint)) or "message"


def _leaves(message: Message) -> Iterator[Message]:
    """Parts in order, stopping at message/* parts: a forwarded mail is one attachment."""
    yield message
    payload = message.get_payload()
    if message.get_content_maintype() == "multipart" and isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from _leaves(sub)


@dataclass
class _Body:
    plain: list[str]
    html: list[str]
    attachments: list[Attachment]


def _read_parts(message: Message, defects: list[str]) -> _Body:
    body = _Body([], [], [])
    for part in _leaves(message):
        kind = part.get_content_type()
        if not (part.is_multipart() and part.get_content_maintype() == "multipart"):
            try:
                _read_leaf(part, kind, body, defects)
            except Exception as exc:  # one bad part must not cost the rest of the mail
                defects.append(f"unreadable {kind} part ({type(exc).__name__})")
        # After reading: decoding the payload adds its own defects (bad base64).
        defects.extend(type(d).__name__ for d in part.defects)
    return body


def _read_leaf(part: Message, kind: str, body: _Body, defects: list[str]) -> None:
    disposition = (part.get_content_disposition() or "").lower()
    filename = _filename(part, defects)
    if kind.startswith("multipart/"):  # its boundary was not found in the body
        recovered = _rebound(part, kind)
        if recovered is not None:
            defects.append("MIME boundary not as declared: parts split at the one used")
            _merge(body, _read_parts(recovered, defects))
            return
        kind = "text/plain"
    is_body_text = kind in ("text/plain", "text/html") and not filename
    if is_body_text and disposition != "attachment":
        text, problem = decode_bytes(_payload_bytes(part), part.get_content_charset())
        if problem:
            defects.append(problem)
        (body.html if kind == "text/html" else body.plain).append(text)
        return
    if kind == "message/rfc822" and not filename:
        filename = _nested_name(part) + ".eml"
    inline = disposition == "inline" or part.get("Content-ID") is not None
    body.attachments.append(Attachment(filename, kind, _payload_bytes(part), inline))


def _rebound(part: Message, kind: str) -> Message | None:
    """The parts of a multipart whose declared boundary is wrong, split at the one used."""
    payload = part.get_payload()
    found = _BOUNDARY_LINE.search(payload) if isinstance(payload, str) else None
    if found is None:
        return None
    head = f'Content-Type: {kind}; boundary="{found[1]}"\n\n'
    rebuilt = email.message_from_bytes((head + str(payload)).encode("utf-8", "surrogateescape"))
    return rebuilt if rebuilt.is_multipart() else None


def _merge(body: _Body, more: _Body) -> None:
    body.plain.extend(more.plain)
    body.html.extend(more.html)
    body.attachments.extend(more.attachments)


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


def _all(headers: tuple[tuple[str, str], ...], name: str) -> tuple[str, ...]:
    wanted = name.lower()
    return tuple(value for key, value in headers if key.lower() == wanted)


# An RFC 2047 encoded word, and a run of them separated by white space only.
_ENCODED_WORDS = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=(?:\s+=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_QUOTED_STRING = re.compile(r'("(?:[^"\\]|\\.)*")', re.DOTALL)


def _encoded_words_quoted(value: str) -> str:
    """`value` with every run of encoded words replaced by a quoted string of its text.

    An encoded word stands for words of a display name or a comment, nothing else
    (RFC 2047 §5): written as a quoted string, whatever it decodes to (a comma, an
    `@`, a line break and a forged `Bcc:`) stays inside the name, and the address is
    read from the header's structure alone.
    """
    def quoted(run: re.Match[str]) -> str:
        text = _CONTROL.sub(" ", decode_header_value(run[0])).strip()
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    if "=?" not in value:
        return value
    # Only outside quoted strings: one already quoted is a name, whatever it holds.
    pieces = _QUOTED_STRING.split(value)
    return "".join(piece if index % 2 else _ENCODED_WORDS.sub(quoted, piece)
                   for index, piece in enumerate(pieces))


def _addresses(
    message: Message | None, header: str, raw: tuple[str, ...]
) -> list[tuple[str, str]]:
    """mail-parser's reading of an address header (its first occurrence, as mail-parser
    reads it); the stdlib's when it found none or could not read it."""
    if message is not None:
        value = message.get(header)
        if isinstance(value, str):
            value = _encoded_words_quoted(value)
        try:
            found = [
                (_name("" if name == address else name), address)
                for name, address in get_addresses(value, decode_names=True)
                if address
            ]
        except Exception:  # keep going with the stdlib reading
            found = []
        if found:
            return found
    return decode_addresses(raw)


# Address headers; those mail-parser reads (the others are read by the stdlib only).
_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender")
_MAILPARSER_READS = frozenset({"from", "to", "cc", "reply-to"})


def _name(display: str) -> str:
    """A display name; encoded words mail-parser could not decode get our charset policy."""
    return decode_header_value(display) if "=?" in display else display


def _address_map(
    message: Message | None, raw: list[tuple[str, str]], hint: str | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Address headers read from their raw values: decoding first would split names at commas."""
    found: dict[str, list[tuple[str, str]]] = {}
    for header in _ADDRESS_HEADERS:
        values = tuple(v for k, v in raw if k.lower() == header)
        eight_bit = any(has_8bit(v) for v in values)  # mail-parser escapes those
        values = tuple(decode_8bit_header(v, None, hint) for v in values)
        reader = None if eight_bit or header not in _MAILPARSER_READS else message
        found[header] = _addresses(reader, header, values)
    return found


def _join(texts: list[str]) -> str:
    """The body parts as one text with plain newlines (a base64 part keeps its CRLFs)."""
    joined = "\n\n".join(t.strip("\r\n") for t in texts if t.strip())
    return joined.replace("\r\n", "\n") if "\r" in joined else joined


def _assemble(
    headers: tuple[tuple[str, str], ...],
    addresses: dict[str, list[tuple[str, str]]],
    date: datetime | None,
    body: _Body,
    defects: list[str],
) -> ParsedMail:
    html = _join(body.html) or None
    text = _join(body.plain)
    if not text and html:
        text = html_to_text(html)
    senders = addresses["from"] or addresses["sender"] or addresses["reply-to"]
    if senders and not addresses["from"]:
        defects.append("no usable From: sender taken from Sender or Reply-To")
    return ParsedMail(
        message_id=_message_id(_first(headers, "Message-ID")),
        in_reply_to=tuple(i for v in _all(headers, "In-Reply-To") for i in message_ids(v)),
        references=tuple(i for v in _all(headers, "References") for i in message_ids(v)),
        subject=_WS.sub(" ", _first(headers, "Subject") or "").strip(),
        from_addr=senders[0][1].strip().lower() if senders else "",
        from_name=_WS.sub(" ", senders[0][0]).strip() if senders else "",
        to=_bare(addresses["to"]),
        cc=_bare(addresses["cc"]),
        reply_to=_bare(addresses["reply-to"]),
        date=date or decode_date(_first(headers, "Date")),
        headers=headers,
        text=text,
        html=html,
        attachments=tuple(body.attachments),
        defects=tuple(dict.fromkeys(defects)),
    )


def _from_message(message: Message, defects: list[str]) -> ParsedMail:
    raw = [(str(name), str(value)) for name, value in message.raw_items()]
    hint = _body_charset(message) if any(has_8bit(v) for _, v in raw) else None
    headers = tuple((name, decode_header_value(value, defects, hint)) for name, value in raw)
    body = _read_parts(message, defects)
    return _assemble(headers, _address_map(message, raw, hint), _date(raw), body, defects)


def _date(raw: list[tuple[str, str]]) -> datetime | None:
    """mail-parser's reading of the first Date header; None sends `_assemble` to the
    stdlib's."""
    value = next((v for k, v in raw if k.lower() == "date"), None)
    try:
        return aware_datetime(parse_mail_date(value).value) if value is not None else None
    except Exception:  # the stdlib reading follows
        return None


def _body_charset(message: Message) -> str | None:
    """The first charset declared on a text part: raw 8-bit headers are usually in it."""
    for part in message.walk():
        charset = part.get_content_charset() if part.get_content_maintype() == "text" else None
        if charset:
            return str(charset)
    return None


def _salvage(raw: bytes, defects: list[str]) -> ParsedMail:
    """Headers and body split by hand, for bytes no parser could take."""
    head, _, rest = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    pairs = []
    for line in re.split(rb"\n(?![ \t])", head):
        name, colon, value = line.partition(b":")
        if colon and name.strip() and not re.search(rb"\s", name.strip()):
            pairs.append(
                (name.decode("ascii", "replace"), value.decode("ascii", "surrogateescape"))
            )
    headers = tuple((name, decode_header_value(value, defects)) for name, value in pairs)
    text, problem = decode_bytes(rest, None)
    if problem:
        defects.append(problem)
    body = _Body([text], [], [])
    return _assemble(headers, _address_map(None, pairs), None, body, defects)


def _nothing(defects: list[str]) -> ParsedMail:
    empty: dict[str, list[tuple[str, str]]] = {key: [] for key in _ADDRESS_HEADERS}
    return _assemble((), empty, None, _Body([], [], []), defects)


_READ_OF_AN_OVERSIZED_HEADER = 16 * 1024


def parse_mail(raw: bytes) -> ParsedMail:
    """Raw RFC 822 bytes → ParsedMail; never raises, whatever the bytes."""
    problem = exceeded_limit(raw)
    if problem is not None:
        # Enough of the header to show who sent what in `inbox list`, nothing more.
        start = raw[:_READ_OF_AN_OVERSIZED_HEADER]
        start = start[:start.rfind(b"\n") + 1] or start
        return replace(_parse(start + b"\r\n"), over_limit=problem, text="", html=None,
                       attachments=())
    skeleton, cut = cut_large_parts(raw)
    if cut is not None:
        mail = restore_parts(_parse(skeleton), cut)
        if mail is not None:
            return mail
    return _parse(raw)


def _parse(raw: bytes) -> ParsedMail:
    defects: list[str] = []
    stripped = _LEADING_BLANK.sub(b"", raw)
    if len(stripped) != len(raw):
        defects.append("blank lines before the headers removed")
    try:
        return _from_message(_load(stripped, defects), defects)
    except Exception as exc:  # the last resorts below still keep the mail
        defects.append(f"message tree unusable ({type(exc).__name__}); headers split by hand")
        log.warning("parse.salvage", error=repr(exc))
    try:
        return _salvage(stripped, defects)
    except Exception as exc:  # nothing readable: an empty mail that says why
        defects.append(f"salvage failed ({type(exc).__name__})")
        log.error("parse.unreadable", error=repr(exc))
        return _nothing(defects)
