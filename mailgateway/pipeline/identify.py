"""Who wrote: a technician, a registered person, an account's main address, or unknown.

Pure: the caller looks the address up and hands the rows in. Being *listed*
as a technician is not enough to act as one, since `From:` is trivially
forged; `staff_authority` says whether the mail also proves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mailgateway.db.models import Account, Person, Staff
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


def identify(
    email: str,
    name: str,
    *,
    staff: Staff | None,
    person: Person | None,
    account: Account | None,
) -> Sender:
    """Classify the sender address; a technician wins over a customer with the same address."""
    if staff is not None and staff.active:
        return Sender(SenderKind.STAFF, email, staff.name, staff_id=staff.id)
    if person is not None:
        return Sender(SenderKind.PERSON, email, person.name or name,
                      account_id=person.account_id, person_id=person.id)
    if account is not None:
        return Sender(SenderKind.ACCOUNT, email, account.name or name, account_id=account.id)
    return Sender(SenderKind.UNKNOWN, email, name)


def _authres_pass(value: str, trusted: tuple[str, ...], sender_domain: str) -> bool:
    authserv, _, results = value.partition(";")
    if authserv.strip().split()[0:1] and authserv.strip().split()[0].lower() not in trusted:
        return False
    lowered = results.lower()
    for method in ("dmarc=pass", "dkim=pass"):
        index = lowered.find(method)
        if index >= 0 and sender_domain in lowered[index:index + 200]:
            return True
    return False


def staff_authority(
    mail: ParsedMail, token: ReplyToken | None, trusted_authserv_ids: tuple[str, ...]
) -> str | None:
    """How a technician's mail proves itself: the reason, or None when it does not."""
    if token is not None and token.purpose == TokenPurpose.STAFF:
        return "signed staff reply address"
    if trusted_authserv_ids:
        trusted = tuple(t.lower() for t in trusted_authserv_ids)
        domain = mail.from_addr.rpartition("@")[2]
        for value in mail.header_all("Authentication-Results"):
            if _authres_pass(value, trusted, domain):
                return "Authentication-Results from a trusted MTA"
    return None
