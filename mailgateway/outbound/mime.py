"""The MIME writer: header fields folded and encoded, text parts, files, multiparts.

Written by hand rather than with `email.message.EmailMessage` and
`email.policy.SMTP` (why, and the figures: benchmarks/README.md). It keeps
what that API would guarantee: text parts quoted-printable UTF-8, files
base64, header texts RFC 2047-encoded and folded under 78 characters (message
ids only between ids, never encoded), file names RFC 2231-encoded, no line
over 998 octets whatever the texts contain, and a value with a line break
raises instead of starting another header.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import quote


@dataclass(frozen=True)
class AttachmentFile:
    """A file to attach: its bytes, or (`path`) a stored file read when the mail is
    written, a slice at a time, so a 25 MB file never sits whole in memory."""

    filename: str
    content_type: str
    data: bytes = b""
    path: Path | None = None


# 57 bytes make one 76-character base64 line; 1,024 lines are read and written at once.
_CHUNK_BYTES = 57 * 1024


@dataclass(frozen=True)
class FileBody:
    """A stored file's base64 body, produced a slice at a time (complete lines)."""

    path: Path

    def chunks(self) -> Iterator[bytes]:
        with self.path.open("rb") as stream:
            while block := stream.read(_CHUNK_BYTES):
                yield base64.encodebytes(block).replace(b"\n", b"\r\n")


Piece = bytes | FileBody


@dataclass(frozen=True)
class Message:
    """A message as the pieces it is written from: bytes, and stored files' bodies
    read only when the message is written out."""

    pieces: tuple[Piece, ...]

    @property
    def streamed(self) -> bool:
        """Whether it carries stored files (then it is best written out as a stream)."""
        return any(isinstance(piece, FileBody) for piece in self.pieces)

    def chunks(self) -> Iterator[bytes]:
        """The message's bytes in order; every chunk ends at a line end (CRLF)."""
        for piece in self.pieces:
            if isinstance(piece, FileBody):
                yield from piece.chunks()
            else:
                yield piece

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


CRLF = "\r\n"
_Q_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ATEXT = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~"
)
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
_ENCODED_WORD_PAYLOAD = 63  # "=?utf-8?q?" + payload + "?=" stays within 75 characters
_FOLD_AT = 78


def no_line_break(value: str) -> str:
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


def fold(name: str, tokens: Iterable[str]) -> str:
    """`Name: token token …`, folded before a token that would pass 78 characters."""
    head = f"{name}:"
    lines, line = [], head
    for token in tokens:
        if len(line) + 1 + len(token) > _FOLD_AT and line != head:
            lines.append(line)
            line = ""
        line += f" {token}"
    lines.append(line)
    return CRLF.join(lines) + CRLF


def text_header(name: str, value: str) -> str:
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
    return fold(name, tokens)


def _phrase(display: str) -> list[str]:
    """A display name as header words: atoms as they are, else quoted, else encoded.

    A word or a quoted name too long to fold is encoded too: encoded words fold.
    """
    words = no_line_break(display).split()
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
    local, at, domain = no_line_break(address).strip().rpartition("@")
    if at and not domain.isascii():
        with suppress(UnicodeError):  # not a valid name: left as written
            domain = domain.encode("idna").decode("ascii")
    return f"{local}{at}{domain}"


def mailbox(display: str, address: str) -> list[str]:
    phrase = _phrase(display)
    return [*phrase, f"<{_addr_spec(address)}>"] if phrase else [_addr_spec(address)]


def _recipient(value: str) -> list[str]:
    """One recipient as header words: a bare address as it is, `Name <address>` re-encoded."""
    value = no_line_break(value).strip()
    if _PLAIN_ADDRESS.fullmatch(value):
        return [value]
    display, address = parseaddr(value)
    return mailbox(display, address or value)


def address_list(name: str, values: Iterable[str]) -> str:
    tokens: list[str] = []
    for value in values:
        if tokens:
            tokens[-1] += ","
        tokens += _recipient(value)
    return fold(name, tokens)


def header_line(name: str, value: str) -> str:
    return f"{name}: {no_line_break(value)}{CRLF}"



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


def _attachment_part(file: AttachmentFile) -> list[Piece]:
    maintype, subtype = _mime_type(file.content_type)
    head = (
        f"Content-Type: {maintype}/{subtype}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"{_disposition(file.filename)}\r\n\r\n"
    ).encode("ascii")
    if file.path is not None:
        return [head, FileBody(file.path)]
    return [head + base64.encodebytes(file.data).replace(b"\n", b"\r\n")]


def _multipart(
    subtype: str, boundary: str, parts: Sequence[Sequence[Piece]]
) -> tuple[str, list[Piece]]:
    """The Content-Type header and the body of a multipart entity made of `parts`.

    Boundaries start with "=_", which neither quoted-printable nor base64 text
    can contain, so no part needs to be searched for them.
    """
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    pieces: list[Piece] = [delimiter[2:]]
    for index, part in enumerate(parts):
        if index:
            pieces.append(delimiter)
        pieces += part
    pieces.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n', pieces


def body(
    text: str, html: str, attachments: Sequence[AttachmentFile]
) -> tuple[str, list[Piece]]:
    """The Content-Type header and the body: text and HTML as alternatives, inside a
    multipart/mixed with the files if any. Stored files stay `FileBody` pieces."""
    unique = uuid.uuid4().hex
    texts = [[_text_part("plain", text)], [_text_part("html", html)]]
    content_type, pieces = _multipart("alternative", f"=_a.{unique}", texts)
    if not attachments:
        return content_type, [b"".join(p for p in pieces if isinstance(p, bytes))]
    parts: list[list[Piece]] = [[content_type.encode("ascii") + b"\r\n", *pieces]]
    parts += [_attachment_part(file) for file in attachments]
    return _multipart("mixed", f"=_m.{unique}", parts)
