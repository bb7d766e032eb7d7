"""Who wrote: a technician, a registered person, an account's main address, or unknown.

Pure: the caller looks the address up and hands the rows in. Being *listed*
as a technician is not enough to act as one, since `From:` is trivially
forged; `staff_authority` says whether the mail also proves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

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


@dataclass(frozen=True)
class DirectoryMatch:
    """One directory row holding the sender's address."""

    kind: SenderKind        # STAFF, PERSON or ACCOUNT
    id: int
    name: str
    account_id: int | None  # the person's account, or the account itself
    active: bool = True


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
            staff_id=match.id if kind == SenderKind.STAFF else None,
        )
    return Sender(SenderKind.UNKNOWN, email, name)


def _vouched(value: str, trusted: frozenset[str], sender_domain: str) -> bool:
    """True when a trusted MTA reports DMARC or DKIM passing for the sender's domain.

    Parsed with `authres` (RFC 8601): a hand-rolled split on ";" is fooled by
    comments and quoted values, and this header decides who may act as staff.
    """
    try:
        header = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {value}")
    except Exception:
        return False
    if str(header.authserv_id).lower() not in trusted:
        return False
    for result in header.results:
        if result.method not in ("dmarc", "dkim") or result.result != "pass":
            continue
        domains = {str(p.value).lower().lstrip("@").rpartition("@")[2]
                   for p in result.properties if p.name in ("d", "from", "i")}
        if sender_domain in domains:
            return True
    return False


def staff_authority(
    mail: ParsedMail, token: ReplyToken | None, trusted_authserv_ids: tuple[str, ...]
) -> str | None:
    """How a technician's mail proves itself: the reason, or None when it does not."""
    if token is not None and token.purpose == TokenPurpose.STAFF:
        return "signed staff reply address"
    if trusted_authserv_ids:
        trusted = frozenset(t.lower() for t in trusted_authserv_ids)
        domain = mail.from_addr.rpartition("@")[2]
        for value in mail.header_all("Authentication-Results"):
            if _vouched(value, trusted, domain):
                return "Authentication-Results from a trusted MTA"
    return None
