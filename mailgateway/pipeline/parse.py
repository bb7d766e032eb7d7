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

import binascii
import email
import mimetypes
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.errors import MissingHeaderBodySeparatorDefect
from email.message import Message
from typing import TYPE_CHECKING

import structlog
from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses

from mailgateway.pipeline.decode import (
    MailCharsets,
    aware_datetime,
    decode_8bit_header,
    decode_addresses,
    decode_bytes,
    decode_date,
    decode_header_value,
    decode_unlabelled,
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
    # How the mail is signed or sealed ("S/MIME", "PGP"), None when it is not: a
    # signature is no file of the customer's, and an encrypted mail has no text the
    # desk can read.
    signed: str | None = None
    encrypted: str | None = None
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


def _filename(part: Message, defects: list[str], charsets: MailCharsets | None = None) -> str:
    """The file name a part carries, read from the parameter's raw bytes.

    The stdlib replaces raw 8-bit bytes by U+FFFD before it hands a parameter out,
    and decodes RFC 2231 values with a codec that refuses ISO-2022-JP's vendor rows;
    so the header's bytes are re-read as Latin-1 (one character a byte, nothing lost),
    the parameter taken from them, and its bytes decoded with the charset policy.
    """
    raws = {k.lower(): str(v) for k, v in part.raw_items()
            if k.lower() in ("content-disposition", "content-type")}
    if not any("name" in value.lower() for value in raws.values()):
        return ""
    if not any(has_8bit(value) or "*=" in value or "*0" in value for value in raws.values()):
        name = part.get_filename()  # plain ASCII parameters: the stdlib reads them as they are
        return decode_header_value(str(name), defects).strip() if name else ""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = raws.get(header)
        if raw is None:
            continue
        value = _raw_param(raw, param)
        if value is None:
            continue
        if isinstance(value, tuple):  # RFC 2231: charset, language, bytes as Latin-1
            charset, _, text = value
            data = text.encode("latin-1", "replace")
            name, problem = decode_bytes(data, charset or None) if charset else (
                decode_unlabelled(data, charsets)[0], None)
            if problem:
                defects.append(f"attachment name: {problem}")
        else:
            data = value.encode("latin-1", "replace")
            name = data.decode("ascii") if data.isascii() else decode_unlabelled(data, charsets)[0]
        name = decode_header_value(name, defects) if "=?" in name else name
        name = name.strip()
        if name:
            return name
    return ""


def _raw_param(raw: str, param: str) -> str | tuple[str, str, str] | None:
    """A header parameter as the stdlib reads it, over the header's bytes as Latin-1."""
    holder = Message()
    holder.set_raw("X", raw.encode("ascii", "surrogateescape").decode("latin-1"))
    try:
        value = holder.get_param(param, header="X")
    except Exception:  # a parameter list the stdlib cannot split has no name
        return None
    if isinstance(value, tuple):
        return (str(value[0] or ""), str(value[1] or ""), str(value[2]))
    return value if isinstance(value, str) else None


def _mail_charsets(message: Message) -> MailCharsets:
    """Every charset the mail names, and some 8-bit body text, for unlabelled bytes."""
    declared: list[str] = []
    sample = b""
    for part in message.walk():
        for _, value in part.raw_items():
            declared += _WORD_CHARSET.findall(str(value))
        charset = part.get_param("charset")
        if isinstance(charset, str) and charset.isascii():
            declared.append(charset)
        if not sample and part.get_content_maintype() == "text":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes) and not data.isascii():
                sample = data[:4096]
    return MailCharsets(tuple(dict.fromkeys(d.lower() for d in declared)), sample)


def _has_8bit_headers(message: Message) -> bool:
    return any(has_8bit(str(v)) for part in message.walk() for _, v in part.raw_items())


def _nested_name(part: Message) -> str:
    """A forwarded mail is named after its subject, as mail clients save it."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return "message"
    subject = next((str(v) for k, v in inner.raw_items() if k.lower() == "subject"), "")
    hint = _mail_charsets(inner) if has_8bit(subject) else None
    return _WS.sub(" ", decode_header_value(subject, None, hint)) or "message"


@dataclass
class _Body:
    plain: list[str]
    html: list[str]
    attachments: list[Attachment]
    sealed: list[str] = field(default_factory=list)  # "signed (PGP)", "encrypted (S/MIME)"


# Parts that sign or seal the mail: protocol data, not files the customer sent.
_SIGNATURES = {
    "application/pkcs7-signature": "S/MIME", "application/x-pkcs7-signature": "S/MIME",
    "application/pgp-signature": "PGP",
}
_SEALED = {
    "application/pkcs7-mime": "S/MIME", "application/x-pkcs7-mime": "S/MIME",
    "application/pgp-encrypted": "PGP",
}
_PGP_ARMOR = re.compile(r"-----BEGIN PGP MESSAGE-----")
# Inline uuencode, as Lotus Notes and old Unix mailers put files in the text.
_UUENCODED = re.compile(
    r"(?ms)^begin [0-7]{3,4} ([^\r\n]+?)[ \t]*\r?\n"
    r"((?:[!-`][^\r\n]*\r?\n)+?)`?[ \t]*\r?\nend[ \t]*\r?$"
)


def _read_parts(message: Message, defects: list[str], charsets: MailCharsets | None = None
                ) -> _Body:
    body = _Body([], [], [])
    _read_into(message, body, defects, charsets)
    return body


def _read_into(part: Message, body: _Body, defects: list[str], charsets: MailCharsets | None
               ) -> None:
    """One part into `body`; a forwarded mail (message/*) stays one attachment."""
    kind = part.get_content_type()
    payload = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(payload, list):
        subs = [sub for sub in payload if isinstance(sub, Message)]
        if kind == "multipart/alternative" and len(subs) > 1:
            _read_alternatives(subs, body, defects, charsets)
        else:
            for sub in subs:
                _read_into(sub, body, defects, charsets)
    else:
        try:
            _read_leaf(part, kind, body, defects, charsets)
        except Exception as exc:  # one bad part must not cost the rest of the mail
            defects.append(f"unreadable {kind} part ({type(exc).__name__})")
    # After reading: decoding the payload adds its own defects (bad base64).
    defects.extend(type(d).__name__ for d in part.defects)


def _read_alternatives(subs: list[Message], body: _Body, defects: list[str],
                       charsets: MailCharsets | None) -> None:
    """One text of several alternatives, never their concatenation.

    The plain text is the first alternative that has one (senders put the simplest
    first); the HTML the last that has one. A "text/plain" alternative that is HTML
    (some mailers label both the same) counts as HTML. Files in any alternative (the
    images of the HTML one) are kept.
    """
    readings = []
    for sub in subs:
        reading = _Body([], [], [])
        _read_into(sub, reading, defects, charsets)
        reading.html += [t for t in reading.plain if _looks_like_html(t)]
        reading.plain = [t for t in reading.plain if not _looks_like_html(t)]
        readings.append(reading)
    plain = next((r.plain for r in readings if any(t.strip() for t in r.plain)), [])
    html = next((r.html for r in reversed(readings) if any(t.strip() for t in r.html)), [])
    body.plain += plain
    body.html += html
    for reading in readings:
        body.attachments += reading.attachments
        body.sealed += reading.sealed


_HTML_START = re.compile(r"\A\s*(?:<!DOCTYPE\s+html|<html[\s>]|<head[\s>]|<body[\s>])", re.I)


def _looks_like_html(text: str) -> bool:
    return _HTML_START.match(text) is not None


def _read_leaf(part: Message, kind: str, body: _Body, defects: list[str],
               charsets: MailCharsets | None = None) -> None:
    disposition = (part.get_content_disposition() or "").lower()
    if kind.startswith("multipart/"):  # its boundary was not found in the body
        recovered = _rebound(part, kind)
        if recovered is not None:
            defects.append("MIME boundary not as declared: parts split at the one used")
            _merge(body, _read_parts(recovered, defects, charsets))
            return
        kind = "text/plain"
    if kind in _SIGNATURES:
        body.sealed.append(f"signed ({_SIGNATURES[kind]})")
        return
    if kind in _SEALED and (kind != "application/pkcs7-mime"
                            or "signed" not in str(part.get_param("smime-type") or "")):
        body.sealed.append(f"encrypted ({_SEALED[kind]})")
    filename = _filename(part, defects, charsets)
    # A text part is body text unless it is an attachment: a file name alone
    # (`text/plain; name="msg.txt"`) is how some mailers label the body.
    if kind in ("text/plain", "text/html") and disposition != "attachment":
        text, problem = decode_bytes(_payload_bytes(part), part.get_content_charset())
        if problem:
            defects.append(problem)
        if kind == "text/plain":
            text = _take_uuencoded(text, body, defects)
            if _PGP_ARMOR.search(text):
                body.sealed.append("encrypted (PGP)")
        (body.html if kind == "text/html" else body.plain).append(text)
        return
    if kind == "message/rfc822" and not filename:
        filename = _nested_name(part) + ".eml"
    inline = disposition == "inline" or part.get("Content-ID") is not None
    body.attachments.append(Attachment(filename, kind, _payload_bytes(part), inline))


def _take_uuencoded(text: str, body: _Body, defects: list[str]) -> str:
    """The text without its inline uuencoded files, which become attachments."""
    if "begin " not in text:
        return text

    def extract(found: re.Match[str]) -> str:
        try:
            data = b"".join(_uu_line(line) for line in found[2].splitlines() if line.strip())
        except (binascii.Error, ValueError):
            defects.append("inline uuencoded file unreadable: kept as text")
            return found[0]
        name = found[1].strip()
        body.attachments.append(Attachment(name, _guess_type(name), data, False))
        return ""

    rest = _UUENCODED.sub(extract, text)
    return re.sub(r"\n{3,}", "\n\n", rest) if rest != text else text


def _uu_line(line: str) -> bytes:
    """One uuencoded line; some encoders drop trailing spaces, which a2b_uu needs."""
    raw = line.rstrip("\r\n").encode("ascii")
    length = (raw[0] - 32) & 0x3F
    wanted = 1 + (length + 2) // 3 * 4
    return binascii.a2b_uu(raw.ljust(wanted, b" ")[:max(wanted, 1)])


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


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
    body.sealed.extend(more.sealed)


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


def _all(headers: tuple[tuple[str, str], ...], name: str) -> tuple[str, ...]:
    wanted = name.lower()
    return tuple(value for key, value in headers if key.lower() == wanted)


_WORD_CHARSET = re.compile(r"=\?([\w.:-]+)(?:\*[\w-]+)?\?[bBqQ]\?")
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
    message: Message | None, raw: list[tuple[str, str]], hint: MailCharsets | None = None
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
        signed=_sealing(body.sealed, "signed"),
        encrypted=_sealing(body.sealed, "encrypted"),
    )


def _sealing(sealed: list[str], how: str) -> str | None:
    """"PGP" for "encrypted (PGP)" when asked for "encrypted"; None when there is none."""
    found = next((s for s in sealed if s.startswith(how)), None)
    return found[len(how):].strip(" ()") if found else None


def _from_message(message: Message, defects: list[str]) -> ParsedMail:
    raw = [(str(name), str(value)) for name, value in message.raw_items()]
    charsets = _mail_charsets(message) if _has_8bit_headers(message) else None
    headers = tuple((name, decode_header_value(value, defects, charsets)) for name, value in raw)
    body = _read_parts(message, defects, charsets)
    return _assemble(headers, _address_map(message, raw, charsets), _date(raw), body, defects)


def _date(raw: list[tuple[str, str]]) -> datetime | None:
    """mail-parser's reading of the first Date header; None sends `_assemble` to the
    stdlib's."""
    value = next((v for k, v in raw if k.lower() == "date"), None)
    try:
        return aware_datetime(parse_mail_date(value).value) if value is not None else None
    except Exception:  # the stdlib reading follows
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
