"""Signed reply addresses: what a reply proves about who wrote it and about what.

Mail clients keep the Reply-To address when answering, so a token in it
threads a reply even when the subject tag was deleted, and proves the writer
received our mail. Two purposes keep the roles apart:

- a customer token, `<local>+c<number>.<signature>@<domain>`, threads only;
- a staff token, `<local>+s<number>.<recipient>.<day>.<signature>@<domain>`,
  also names whom the mail went to (a technician, or a group's address) and
  the day it was made. It lets a technician act on that one ticket, and only
  a technician the mail went to (directly or through their group) may use
  it; once it is older than `staff_token_max_age_days` it may still carry an
  answer, but no command.

The recipient is a keyed digest of the address, so the address stays out of
the token and the token stays short (a local part has at most 64 octets).
The signature is a truncated HMAC-SHA256 of everything before it. Digests
and signature are base32 lower-case: some MTAs lower-case local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum


class TokenPurpose(StrEnum):
    CUSTOMER = "c"
    STAFF = "s"


@dataclass(frozen=True)
class ReplyToken:
    purpose: TokenPurpose
    ticket_number: str
    recipient: str = ""        # staff: the digest of the address the mail went to
    issued: date | None = None  # staff: the day the token was made

    def was_sent_to(self, address: str, secret: str) -> bool:
        """True when the mail carrying this token went to `address`."""
        return bool(self.recipient) and hmac.compare_digest(
            self.recipient, recipient_digest(secret, address))


def staff_token(secret: str, ticket_number: str, recipient: str, today: date) -> ReplyToken:
    """The token of a mail to `recipient` (a technician or a group) about a ticket."""
    return ReplyToken(TokenPurpose.STAFF, ticket_number, recipient_digest(secret, recipient),
                      today)


_SIGNATURE_CHARS = 16
_RECIPIENT_CHARS = 6
_EPOCH = date(1970, 1, 1)
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_TOKEN = re.compile(
    r"^(?P<purpose>[cs])(?P<number>[0-9a-z-]{1,32})"
    r"(?:\.(?P<recipient>[a-z2-7]{6})\.(?P<day>[a-z2-7]{1,4}))?"
    r"\.(?P<signature>[a-z2-7]{16})$")


def _b32(digest: bytes, chars: int) -> str:
    return base64.b32encode(digest).decode().lower()[:chars]


def recipient_digest(secret: str, address: str) -> str:
    key = hmac.new(secret.encode(), b"recipient:" + address.strip().lower().encode(),
                   hashlib.sha256)
    return _b32(key.digest(), _RECIPIENT_CHARS)


def _day(value: date) -> str:
    number, digits = (value - _EPOCH).days, ""
    while True:
        number, rest = divmod(number, 32)
        digits = _BASE32[rest] + digits
        if not number:
            return digits


def _read_day(text: str) -> date:
    number = 0
    for char in text:
        number = number * 32 + _BASE32.index(char)
    return _EPOCH + timedelta(days=number)


def _fields(token: ReplyToken) -> tuple[str, ...]:
    """What the token says, as written after the `+`, without its signature."""
    fields: tuple[str, ...] = (f"{token.purpose.value}{token.ticket_number}".lower(),)
    if token.recipient and token.issued is not None:
        fields += (token.recipient, _day(token.issued))
    return fields


def _signature(secret: str, token: ReplyToken) -> str:
    # The number upper-case and ":" between the fields: a customer token made before
    # staff tokens named their recipient still verifies.
    message = ":".join((token.purpose.value, token.ticket_number.upper(),
                        *_fields(token)[1:]))
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256)
    return _b32(digest.digest(), _SIGNATURE_CHARS)


def reply_address(helpdesk_address: str, secret: str, token: ReplyToken) -> str:
    """The signed address to put in Reply-To for `token`."""
    local, _, domain = helpdesk_address.partition("@")
    tag = ".".join((*_fields(token), _signature(secret, token)))
    return f"{local}+{tag}@{domain}"


def read_reply_address(address: str, helpdesk_address: str, secret: str) -> ReplyToken | None:
    """The token of a signed address of ours; None for any other or a forged one."""
    local, _, domain = address.lower().partition("@")
    our_local, _, our_domain = helpdesk_address.lower().partition("@")
    base, plus, tag = local.partition("+")
    if not plus or base != our_local or domain != our_domain:
        return None
    match = _TOKEN.match(tag)
    if not match:
        return None
    purpose = TokenPurpose(match["purpose"])
    number = match["number"].upper()
    token = ReplyToken(purpose, number)
    if match["recipient"] is not None:
        token = ReplyToken(purpose, number, match["recipient"], _read_day(match["day"]))
    if not hmac.compare_digest(_signature(secret, token), match["signature"]):
        return None
    return token


# --- the return path of our mail (VERP) ------------------------------------------------
#
# Every mail leaves with `<local>+b<outbox id>.<signature>@<domain>` as its envelope
# sender, so a delivery report comes back to an address that names the outbox row:
# no text needs reading to know which mail bounced. Signed as the reply tokens are, so
# nobody can mark a row of ours bounced by writing to a made-up address.

_BOUNCE_TAG = re.compile(r"^b(?P<row>[0-9]{1,18})\.(?P<signature>[a-z2-7]{16})$")


def _bounce_signature(secret: str, outbox_id: int) -> str:
    digest = hmac.new(secret.encode(), f"bounce:{outbox_id}".encode(), hashlib.sha256)
    return _b32(digest.digest(), _SIGNATURE_CHARS)


def bounce_address(helpdesk_address: str, secret: str, outbox_id: int) -> str:
    """The envelope sender of the outbox row `outbox_id`'s mail."""
    local, _, domain = helpdesk_address.partition("@")
    return f"{local}+b{outbox_id}.{_bounce_signature(secret, outbox_id)}@{domain}"


def read_bounce_address(address: str, helpdesk_address: str, secret: str) -> int | None:
    """The outbox row a return path of ours names; None for any other address or a
    forged one."""
    local, _, domain = address.strip().strip("<>").lower().partition("@")
    our_local, _, our_domain = helpdesk_address.lower().partition("@")
    base, plus, tag = local.partition("+")
    if not plus or base != our_local or domain != our_domain:
        return None
    match = _BOUNCE_TAG.match(tag)
    if match is None:
        return None
    outbox_id = int(match["row"])
    if not hmac.compare_digest(_bounce_signature(secret, outbox_id), match["signature"]):
        return None
    return outbox_id
