"""What is done to a raw mail before any database: how it is recognised when it
comes again, its parsing, and the stages that read nothing but the mail
(classification, threading keys, staff authority, routing, quote stripping).

A bulk import runs this in worker processes, which is why nothing here
imports the database layer: a worker starts in a fraction of the time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from mailgateway.config import Settings
from mailgateway.pipeline.classify import Classification, OwnMarks, classify
from mailgateway.pipeline.identify import vouched_by_mta
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.pec import read_mail
from mailgateway.pipeline.quote import strip_quotes
from mailgateway.pipeline.route import Routing, route_new_ticket
from mailgateway.pipeline.thread import ThreadKeys, thread_keys

# Headers added on the way (by MTAs, by IMAP servers) that must not make one
# mail look like two when it arrives by two routes.
_TRACE_HEADERS = frozenset({
    b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-envelope-to",
    b"x-received", b"authentication-results", b"arc-authentication-results",
    b"arc-seal", b"arc-message-signature", b"received-spf", b"x-spam-status",
    b"x-spam-score", b"x-spam-flag", b"x-spam-level", b"x-virus-scanned", b"status",
    b"x-uid", b"x-keywords", b"x-status", b"lines", b"content-length",
})
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
# A header block is a few KiB. The bound keeps a mail without one (no blank line)
# from being searched whole, on the SMTP listener's event loop among others.
_MESSAGE_ID_SCAN_BYTES = 65_536


def _header_end(raw: bytes, start: int, stop: int | None = None) -> tuple[int, int]:
    """Where the header block from `start` ends and the body begins: the first blank
    line (CRLF or LF) before `stop`, else both `stop` (the end of `raw`). Found with
    `bytes.find`, not a regular expression: a 25 MB mail without a blank line is
    scanned in milliseconds."""
    stop = len(raw) if stop is None else stop
    crlf = raw.find(b"\n\r\n", start, stop)
    # The second search stops where the first succeeded, not at the bound.
    lf = raw.find(b"\n\n", start, stop if crlf < 0 else crlf + 1)
    newline = lf if lf >= 0 else crlf
    if newline < 0:
        return stop, stop
    head_end = newline - 1 if newline > start and raw[newline - 1:newline] == b"\r" else newline
    return head_end, newline + (2 if newline == lf else 3)


def header_end(raw: bytes) -> int:
    """Where the header block of `raw` ends (its length when there is no blank line)."""
    start = 0
    while raw[start:start + 1] in (b"\r", b"\n"):
        start += 1
    return _header_end(raw, start)[0]


def raw_message_id(raw: bytes) -> str | None:
    """The Message-ID of a raw mail, unfolded and without its angle brackets; None when
    there is none (or it is empty).

    Read from the bytes of the header block (within its first 64 KiB), never parsed
    and never raising: cheap enough for every transport's log lines as well as for
    the mail's identity. The pipeline parses the mail properly later.
    """
    start = 0
    while raw[start:start + 1] in (b"\r", b"\n"):
        start += 1
    end, _ = _header_end(raw, start, min(len(raw), start + _MESSAGE_ID_SCAN_BYTES))
    match = _MESSAGE_ID.search(raw[start:end])
    if match is None:
        return None
    value = b" ".join(match.group(1).split()).decode("ascii", "replace")
    return value.strip().strip("<>").strip() or None


@dataclass(frozen=True)
class RawIdentity:
    """How a raw mail is recognised when it arrives again."""

    message_id: str | None
    sha256: str
    dedup_key: str


def _update_normalised(digest: Any, body: memoryview, chunk: int = 1 << 20) -> None:
    """Hash `body` with CRLF read as LF, a chunk at a time: a 25 MB mail is not copied."""
    carry = b""
    for offset in range(0, len(body), chunk):
        piece = carry + bytes(body[offset:offset + chunk])
        carry = b"\r" if piece.endswith(b"\r") else b""
        digest.update(piece[:-1].replace(b"\r\n", b"\n") if carry else
                      piece.replace(b"\r\n", b"\n"))
    digest.update(carry)


def raw_identity(raw: bytes) -> RawIdentity:
    """Message-ID plus a hash of the content without the trace headers that MTAs and
    mail stores add on the way; computed on bytes (no MIME parsing) so the SMTP
    listener can answer fast."""
    start = 0
    while start < len(raw) and raw[start] in b"\r\n":
        start += 1
    head_end, body_start = _header_end(raw, start)
    # A mail that is all header may end with a line break or not: the same mail.
    head = raw[start:head_end].rstrip(b" \t\r\n")
    message_id = raw_message_id(raw)
    content = hashlib.sha256()
    for line in re.split(rb"\r?\n(?![ \t])", head):
        name = line.split(b":", 1)[0].strip().lower()
        if name not in _TRACE_HEADERS:
            content.update(b" ".join(line.split()) + b"\n")
    content.update(b"\0")
    end = len(raw)
    while end > body_start and raw[end - 1] in b" \t\r\n":
        end -= 1
    _update_normalised(content, memoryview(raw)[body_start:end])
    key = hashlib.sha256(f"{message_id or ''}\0{content.hexdigest()}".encode()).hexdigest()
    return RawIdentity(message_id, hashlib.sha256(raw).hexdigest(), key)


@dataclass(frozen=True)
class Findings:
    """What the stages that need no database make of a mail.

    A bulk import has them found in its parsing workers (`find`), on the cores
    the writing process leaves idle; otherwise `analyse` finds them itself.
    """

    classification: Classification
    keys: ThreadKeys
    # Our MTA authenticated the From address (what a technician's mail may do also
    # depends on the transport that brought it: `process.analyse`).
    vouched: bool
    new_ticket: tuple[Routing, str] | None  # None for automatic mail, never answered
    # The text without its quotes, should the mail be a reply; None when no tag, token
    # or reference could make it one (a new request: its quotes are kept).
    unquoted: str | None


@dataclass(frozen=True)
class FindingSettings:
    """The few settings `find` reads: small enough to hand to a worker process."""

    own: OwnMarks
    ticket_tag: str
    address: str
    secret: str
    trusted_authserv_ids: tuple[str, ...]


def own_marks(settings: Settings) -> OwnMarks:
    return OwnMarks(settings.helpdesk.domains, settings.helpdesk.address)


def finding_settings(settings: Settings) -> FindingSettings:
    helpdesk = settings.helpdesk
    return FindingSettings(own_marks(settings), helpdesk.ticket_tag, helpdesk.address,
                           helpdesk.secret, tuple(helpdesk.trusted_authserv_ids))


def find(settings: FindingSettings, mail: ParsedMail, *, unquote: bool = True) -> Findings:
    """The pure stages; `unquote=False` leaves quote stripping to when a ticket is found."""
    classification = classify(mail, settings.own)
    keys = thread_keys(
        mail.subject, (*mail.to, *mail.cc, *mail.header_all("Delivered-To")),
        mail.in_reply_to, mail.references, ticket_tag=settings.ticket_tag,
        helpdesk_address=settings.address, secret=settings.secret,
    )
    human = classification.kind is None
    may_reply = bool(keys.tag_number or keys.token or keys.references)
    return Findings(
        classification, keys, vouched_by_mta(mail, settings.trusted_authserv_ids),
        route_new_ticket(mail.text) if human else None,
        strip_quotes(mail.text) if human and unquote and may_reply else None,
    )


@dataclass(frozen=True)
class PreparedMail:
    """A raw mail with the CPU-bound work done (it may be done in another process)."""

    raw: bytes
    identity: RawIdentity
    parsed: ParsedMail
    findings: Findings


def prepare_mail(raw: bytes, settings: FindingSettings) -> PreparedMail:
    parsed = read_mail(raw)
    return PreparedMail(raw, raw_identity(raw), parsed, find(settings, parsed))


def prepare_mails(raws: list[bytes], settings: FindingSettings) -> list[PreparedMail]:
    """A worker process's job: a part of a batch."""
    return [prepare_mail(raw, settings) for raw in raws]
