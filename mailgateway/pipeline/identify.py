"""Who wrote: a technician, a registered person, an account's main address, or unknown.

Pure: the caller looks the address up and hands the rows in. Being *listed*
as a technician is not enough to act as one, since `From:` is trivially
forged; `staff_authority` says what the mail also proves, and so what it
may do.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

import authres

from mailgateway.pipeline.parse import ParsedMail
from mailgateway.reply_token import ReplyToken, TokenPurpose


class SenderKind(StrEnum):
    STAFF = "staff"
    PERSON = "person"
    ACCOUNT = "account"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Sender:
    kind: SenderKind
    email: str
    name: str = ""
    account_id: int | None = None
    person_id: int | None = None
    staff_id: int | None = None
    group: str | None = None  # a technician's group


@dataclass(frozen=True)
class DirectoryMatch:
    """One directory row holding the sender's address."""

    kind: SenderKind        # STAFF, PERSON or ACCOUNT
    id: int
    name: str
    account_id: int | None  # the person's account, or the account itself
    active: bool = True
    group: str | None = None  # a technician's group


_PRECEDENCE = (SenderKind.STAFF, SenderKind.PERSON, SenderKind.ACCOUNT)


def identify(email: str, name: str, matches: Iterable[DirectoryMatch]) -> Sender:
    """Classify the sender address; a technician wins over a customer with the same address,
    a registered person over an account's main address."""
    found = {m.kind: m for m in matches if m.active}
    for kind in _PRECEDENCE:
        match = found.get(kind)
        if match is None:
            continue
        return Sender(
            kind, email, match.name or name, account_id=match.account_id,
            person_id=match.id if kind == SenderKind.PERSON else None,
            staff_id=match.id if kind == SenderKind.STAFF else None, group=match.group,
        )
    return Sender(SenderKind.UNKNOWN, email, name)


_RECEIVED_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)


def _results(value: str) -> tuple[str, list[Any]] | None:
    """An Authentication-Results header's authserv-id and results (RFC 8601), read with
    `authres`: a hand-rolled split on ";" is fooled by comments and quoted values, and
    this header decides who may act as staff."""
    try:
        header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    except Exception:
        return None
    return str(header.authserv_id).lower(), list(header.results)


def _domains(result: Any) -> set[str]:
    return {str(p.value).lower().lstrip("@").rpartition("@")[2]
            for p in result.properties if p.name in ("d", "from", "i")}


def vouched_by_mta(mail: ParsedMail, trusted_authserv_ids: Collection[str]) -> bool:
    """True when our own MTA reports DKIM or DMARC passing for the From domain.

    Only the topmost headers count, those our MTA added on top of the mail:
    reading stops at the first Received line of another host or the first
    Authentication-Results of another server, since below them anyone could
    have written them. A fail or softfail for the domain outweighs any pass.
    """
    trusted = {t.lower() for t in trusted_authserv_ids}
    domain = mail.from_addr.rpartition("@")[2]
    if not trusted or not domain:
        return False
    passed = False
    for name, value in mail.headers:
        name = name.lower()
        if name == "received":
            by = _RECEIVED_BY.search(value)
            if by is None or by[1].lower().rstrip(".") not in trusted:
                break
            continue
        if name != "authentication-results":
            continue
        read = _results(value)
        if read is None or read[0] not in trusted:
            break
        for result in read[1]:
            if result.method not in ("dmarc", "dkim") or domain not in _domains(result):
                continue
            if result.result in ("fail", "softfail"):
                return False
            passed = passed or result.result == "pass"
    return passed


class Authority(StrEnum):
    """What a technician's mail may do to the ticket it names."""

    NONE = "none"      # nothing: it is refused, possibly forged
    ANSWER = "answer"  # add an answer, but no command
    FULL = "full"      # answer and commands


@dataclass(frozen=True)
class StaffProof:
    """What a technician's mail carries to prove who wrote it and about what."""

    token: ReplyToken | None  # the signed reply address it was sent to, if any
    vouched: bool             # our MTA authenticated its From address
    secret: str
    today: date
    max_age_days: int


def staff_authority(
    proof: StaffProof, sender_email: str, group_address: str | None, ticket_number: str
) -> tuple[Authority, str]:
    """Exactly this technician, this ticket, recently: the authority of a mail from
    `sender_email` (whose group's notices go to `group_address`) on ticket
    `ticket_number`, and why.

    A staff token counts only for the ticket it names, and only for a technician
    the mail carrying it was sent to, directly or through their group; past
    `max_age_days` it carries an answer but no command. Our MTA's
    authentication of the sender's address is a proof of its own.
    """
    if proof.vouched:
        return Authority.FULL, "Authentication-Results of our MTA"
    token = proof.token
    if token is None or token.purpose != TokenPurpose.STAFF or token.issued is None:
        return Authority.NONE, (f"{sender_email} wrote without the signed reply address of a "
                                "notice sent to them, nor an authentication by our MTA")
    if token.ticket_number != ticket_number:
        return Authority.NONE, (f"the reply address of ticket {token.ticket_number} "
                                f"cannot act on ticket {ticket_number}")
    mine = token.was_sent_to(sender_email, proof.secret) or (
        group_address is not None and token.was_sent_to(group_address, proof.secret))
    if not mine:
        return Authority.NONE, (f"the reply address of {ticket_number} was not sent to "
                                f"{sender_email} nor to their group")
    if proof.today - token.issued > timedelta(days=proof.max_age_days):
        return Authority.ANSWER, (f"the reply address is older than {proof.max_age_days} "
                                  "days: an answer, but no command")
    return Authority.FULL, "signed staff reply address"
