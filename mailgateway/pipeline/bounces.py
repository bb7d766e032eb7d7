"""Reading a delivery report: which mail of ours came back, for whom, and why.

A bounce is worth something only if it is tied to the mail it answers. The
surest tie needs no reading at all: our mail leaves with a signed return
path naming its outbox row (`reply_token.bounce_address`), and a report sent
back to it names the row. Reports that come back another way (forwarded by a
mailbox, or from a server that writes to the From address) are read, in
order of trust:

1. the `message/delivery-status` part (RFC 3464): per recipient its
   Final-/Original-Recipient, Action, Status and Diagnostic-Code;
2. `X-Failed-Recipients` (Exim and Gmail);
3. an Amazon SES notification's JSON;
4. for old servers that write prose, `flufl.bounce`'s detectors.

The mail that bounced is named by the Message-ID of the returned message or
headers (ours are `mg.…@<our domain>`), and by the report's own
In-Reply-To/References, which some servers set. Everything here is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import Any

import structlog

from mailgateway.pipeline.decode import message_ids
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.reply_token import read_bounce_address

log = structlog.get_logger(__name__)


class Action:
    """RFC 3464 Action values, and what we make of them."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"


@dataclass(frozen=True)
class RecipientOutcome:
    """What a report says of one recipient."""

    address: str      # lower-cased
    action: str       # Action.*; also "relayed", "expanded": nothing to record
    status: str = ""  # the enhanced status code, "5.1.1"
    diagnostic: str = ""

    @property
    def words(self) -> str:
        """The status and the server's words, as the desk reads them."""
        return " ".join(p for p in (self.status, self.diagnostic) if p) or self.action


@dataclass(frozen=True)
class BounceReport:
    """What a delivery report names: the outbox row (by its return path), the mails
    it returns (Message-IDs), and each recipient's outcome."""

    outbox_id: int | None
    message_ids: tuple[str, ...]
    recipients: tuple[RecipientOutcome, ...]
    read_by: str  # which of the readings found the recipients; "" for none


_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status",
                        "text/delivery-status"})
_RETURNED_TYPES = frozenset({"message/rfc822", "text/rfc822-headers", "message/rfc822-headers",
                             "message/global", "message/global-headers", "message/partial"})
_FIELD = re.compile(r"^([A-Za-z][\w-]*)[ \t]*:[ \t]*(.*)$")
_ADDRESS = re.compile(r"[^\s<>\"';,()\[\]]+@[^\s<>\"';,()\[\]]+")
_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
_MESSAGE_ID_FIELD = re.compile(r"(?im)^message-id[ \t]*:[ \t]*((?:.*)(?:\r?\n[ \t]+.*)*)")
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")
_MOST_DIAGNOSTIC = 500


def _blocks(text: str) -> list[dict[str, str]]:
    """The field blocks of a delivery-status text (blank-line separated), continuation
    lines unfolded; names lower-cased, first value kept."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        found = _FIELD.match(line)
        if found is None:
            continue
        last = found[1].lower()
        if last in current:  # a second block without the blank line between them
            if last in _RECIPIENT_FIELDS and "action" in current:
                blocks.append(current)
                current = {}
            else:
                continue
        current[last] = found[2].strip()
    if current:
        blocks.append(current)
    return blocks


def _address(value: str) -> str:
    """`rfc822; <user@host>` → `user@host`."""
    _, semicolon, rest = value.partition(";")
    found = _ADDRESS.search(rest if semicolon else value)
    return found[0].strip(".").lower() if found else ""


def _action(fields: dict[str, str], status: str) -> str:
    action = fields.get("action", "").split()[0].lower() if fields.get("action") else ""
    if action in ("failed", "delayed", "delivered", "relayed", "expanded"):
        return action
    return {"5": Action.FAILED, "4": Action.DELAYED, "2": Action.DELIVERED}.get(
        status[:1], Action.FAILED)


def _diagnostic(fields: dict[str, str]) -> str:
    value = fields.get("diagnostic-code", "")
    _, semicolon, rest = value.partition(";")
    text = " ".join((rest if semicolon else value).split())
    return text[:_MOST_DIAGNOSTIC]


def _from_delivery_status(text: str) -> list[RecipientOutcome]:
    found: list[RecipientOutcome] = []
    for fields in _blocks(text):
        address = next((_address(fields[name]) for name in _RECIPIENT_FIELDS
                        if name in fields and _address(fields[name])), "")
        if not address:
            continue
        status_found = _STATUS.search(fields.get("status", "")) or _STATUS.search(
            fields.get("diagnostic-code", ""))
        status = status_found[0] if status_found else ""
        found.append(RecipientOutcome(address, _action(fields, status), status,
                                      _diagnostic(fields)))
    return found


def _from_failed_header(mail: ParsedMail) -> list[RecipientOutcome]:
    addresses = [a.lower() for value in mail.header_all("X-Failed-Recipients")
                 for a in _ADDRESS.findall(value)]
    return [RecipientOutcome(a, Action.FAILED) for a in dict.fromkeys(addresses)]


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a notification's text holds (folded lines joined), or None."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    for candidate in (text[start:end + 1], re.sub(r"\r?\n[ \t]", "", text[start:end + 1])):
        try:
            found = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return None


def _from_ses(mail: ParsedMail) -> tuple[list[RecipientOutcome], list[str]]:
    """An Amazon SES bounce notification (JSON, bare or inside an SNS envelope): its
    recipients, and the Message-IDs of the mail it is about."""
    document = _json_object(mail.text[:262_144])
    if document is not None and isinstance(document.get("Message"), str):
        document = _json_object(document["Message"])
    if document is None or document.get("notificationType") != "Bounce":
        return [], []
    bounce = document.get("bounce") or {}
    permanent = bounce.get("bounceType") == "Permanent"
    found = []
    for item in bounce.get("bouncedRecipients") or ():
        address = str(item.get("emailAddress", "")).strip().lower()
        if _ADDRESS.fullmatch(address):
            status = str(item.get("status") or "")
            action = str(item.get("action") or (Action.FAILED if permanent else Action.DELAYED))
            found.append(RecipientOutcome(address, action.lower(), status,
                                          _diagnostic({"diagnostic-code": str(
                                              item.get("diagnosticCode") or "")})))
    headers = (document.get("mail") or {}).get("headers") or ()
    ids = [i for h in headers if str(h.get("name", "")).lower() == "message-id"
           for i in message_ids(str(h.get("value", "")))]
    return found, ids


def _flufl_message(mail: ParsedMail) -> EmailMessage:
    """The mail rebuilt for flufl.bounce's detectors, which read a Message: its
    headers and its text, each returned message or report as a part."""
    message = EmailMessage()
    for name, value in mail.headers:
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
            try:
                message[name] = " ".join(value.split())
            except Exception:  # a header the stdlib refuses: the detectors can do without
                continue
    message.set_content(mail.text or "")
    for part in mail.attachments:
        if part.content_type in _DSN_TYPES or part.content_type in _RETURNED_TYPES or (
                part.content_type.startswith("text/")):
            message.add_attachment(part.payload.decode("utf-8", "replace"))
    return message


def _from_flufl(mail: ParsedMail) -> list[RecipientOutcome]:
    # Imported when first needed: its detectors take 20 ms to load, and `ingest`, run
    # once per mail by an MTA, usually has no prose report to read.
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(_flufl_message(mail))
    except Exception as exc:  # a detector tripping on odd bytes: the report stays unread
        log.info("bounce.flufl_failed", error=repr(exc))
        return []

    def text(address: bytes | str) -> str:
        value = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
        return value.strip().strip("<>").lower()

    found = [RecipientOutcome(text(a), Action.FAILED) for a in sorted(permanent)]
    found += [RecipientOutcome(text(a), Action.DELAYED) for a in sorted(temporary)
              if text(a) not in {f.address for f in found}]
    return [f for f in found if _ADDRESS.fullmatch(f.address)]


def _returned_ids(mail: ParsedMail, domains: tuple[str, ...]) -> tuple[str, ...]:
    """The Message-IDs of the mails the report returns, ours first."""
    found: list[str] = []
    for part in mail.attachments:
        if part.content_type in _RETURNED_TYPES:
            text = part.payload[:65_536].decode("utf-8", "replace")
            for value in _MESSAGE_ID_FIELD.findall(text):
                found += message_ids(value)
    found += mail.in_reply_to
    found += mail.references
    # The returned headers written into the report's text (DragonFly, qmail, Exchange).
    for value in _MESSAGE_ID_FIELD.findall(mail.text[:65_536]):
        found += message_ids(value)
    ours = _our_ids(mail.text[:65_536], domains) + _our_ids(
        " ".join(p.payload[:65_536].decode("utf-8", "replace") for p in mail.attachments
                 if p.content_type.startswith("text/")), domains)
    unique = list(dict.fromkeys(i for i in [*ours, *found] if i and i != mail.message_id))
    unique.sort(key=lambda i: not _is_ours(i, domains))
    return tuple(i[:998] for i in unique)


def _is_ours(message_id: str, domains: tuple[str, ...]) -> bool:
    return message_id.lower().startswith("mg.") and (
        message_id.rpartition("@")[2].lower() in {d.lower() for d in domains})


def _our_ids(text: str, domains: tuple[str, ...]) -> list[str]:
    """Our Message-IDs quoted anywhere in prose (a returned mail pasted inline)."""
    if "mg." not in text:
        return []
    pattern = "|".join(re.escape(d) for d in domains)
    return re.findall(rf"\b(mg\.[0-9a-f]{{32}}@(?:{pattern}))\b", text, re.IGNORECASE)


def _return_path(mail: ParsedMail, envelope_to: tuple[str, ...], helpdesk_address: str,
                 secret: str) -> int | None:
    """The outbox row named by the address the report was sent to."""
    addresses = [*envelope_to, *mail.to, *mail.cc]
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To"):
        addresses += [a for value in mail.header_all(name) for a in _ADDRESS.findall(value)]
    for address in addresses:
        if "+b" in address.lower():
            outbox_id = read_bounce_address(address, helpdesk_address, secret)
            if outbox_id is not None:
                return outbox_id
    return None


def read_report(
    mail: ParsedMail, *, helpdesk_address: str, secret: str, domains: tuple[str, ...],
    envelope_to: tuple[str, ...] = (),
) -> BounceReport:
    """What a mail classified as a bounce says about our mail."""
    recipients: list[RecipientOutcome] = []
    read_by = ""
    for part in mail.attachments:
        if part.content_type in _DSN_TYPES:
            recipients += _from_delivery_status(part.payload.decode("utf-8", "replace"))
    if recipients:
        read_by = "delivery-status"
    elif "final-recipient:" in mail.text[:65_536].lower():  # a report pasted as text
        recipients = _from_delivery_status(mail.text[:65_536])
        read_by = "delivery-status text" if recipients else ""
    if not recipients:
        recipients = _from_failed_header(mail)
        read_by = "X-Failed-Recipients" if recipients else ""
    returned: list[str] = []
    if not recipients and "notificationType" in mail.text[:262_144]:
        recipients, returned = _from_ses(mail)
        read_by = "Amazon SES notification" if recipients else ""
    if not recipients:
        recipients = _from_flufl(mail)
        read_by = "flufl.bounce" if recipients else ""
    unique = {(r.address, r.action): r for r in recipients}
    ids = tuple(dict.fromkeys((*returned, *_returned_ids(mail, domains))))
    return BounceReport(_return_path(mail, envelope_to, helpdesk_address, secret),
                        ids, tuple(unique.values()), read_by)


# --- which of our mails it is about -------------------------------------------------------


@dataclass(frozen=True)
class SentMail:
    """An outbox row a report may be about."""

    id: int
    message_id: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class BounceMatch:
    """One outcome of one of our mails."""

    outbox_id: int
    outcome: RecipientOutcome


_RECORDED = frozenset({Action.FAILED, Action.DELAYED, Action.DELIVERED})
UNREAD = "returned without a report the desk could read"


def correlate(report: BounceReport, sent: Sequence[SentMail]) -> tuple[BounceMatch, ...]:
    """The outcomes of `report` tied to our mails. `sent` holds the rows the report may
    be about, newest first: the row of its return path, those of its Message-IDs,
    and the latest mail to each recipient it names.

    The return path names the row surely; then a returned Message-ID; failing both, a
    hard bounce is tied to the latest mail to its recipient. A report naming another
    address than the row's (an alias, a forward), or none at all, is tied to the
    row's first recipient, the customer."""
    outcomes = [r for r in report.recipients if r.action in _RECORDED]
    if report.recipients and not outcomes:
        return ()  # relayed or expanded: nothing became of the mail yet
    row = next((s for s in sent if s.id == report.outbox_id), None)
    if row is None:
        by_message = {s.message_id.lower(): s for s in sent}
        row = next((by_message[m.lower()] for m in report.message_ids
                    if m.lower() in by_message), None)
    if row is not None:
        return _for_row(row, outcomes)
    matches = []
    for outcome in outcomes:
        latest = next((s for s in sent if outcome.action == Action.FAILED and
                       outcome.address in {a.lower() for a in s.recipients}), None)
        if latest is not None:
            matches.append(BounceMatch(latest.id, outcome))
    return tuple(matches)


def _for_row(row: SentMail, outcomes: list[RecipientOutcome]) -> tuple[BounceMatch, ...]:
    addresses = {a.lower() for a in row.recipients}
    named = [o for o in outcomes if o.address in addresses]
    if named:
        return tuple(BounceMatch(row.id, o) for o in named)
    if not row.recipients:
        return ()
    first = row.recipients[0].lower()
    if not outcomes:
        return (BounceMatch(row.id, RecipientOutcome(first, Action.FAILED, "", UNREAD)),)
    outcome = next((o for o in outcomes if o.action == Action.FAILED), outcomes[0])
    said = f"(reported for {outcome.address}) {outcome.diagnostic}".strip()
    return (BounceMatch(row.id, replace(outcome, address=first, diagnostic=said)),)
