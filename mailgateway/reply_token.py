"""Signed reply addresses: `<local>+<purpose><number>.<signature>@<domain>`.

Mail clients keep the Reply-To address when answering, so a token in it
threads a reply even when the subject tag was deleted, and proves the writer
received our mail. Two purposes keep the roles apart: a customer token
threads only; a staff token also lets a known technician act (answer, close,
reassign), so a forged From: without it cannot. The signature is a truncated
HMAC-SHA256, base32 lower-case because some MTAs lower-case local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum


class TokenPurpose(StrEnum):
    CUSTOMER = "c"
    STAFF = "s"


@dataclass(frozen=True)
class ReplyToken:
    purpose: TokenPurpose
    ticket_number: str


_SIGNATURE_CHARS = 16
_TOKEN = re.compile(r"^(?P<purpose>[cs])(?P<number>[0-9A-Za-z-]{1,32})\.(?P<sig>[a-z2-7]{16})$")


def _signature(secret: str, purpose: TokenPurpose, number: str) -> str:
    digest = hmac.new(secret.encode(), f"{purpose.value}:{number}".encode(), hashlib.sha256)
    return base64.b32encode(digest.digest()).decode().lower()[:_SIGNATURE_CHARS]


def reply_address(helpdesk_address: str, secret: str, token: ReplyToken) -> str:
    """The signed address to put in Reply-To for `token`."""
    local, _, domain = helpdesk_address.partition("@")
    signature = _signature(secret, token.purpose, token.ticket_number)
    return f"{local}+{token.purpose.value}{token.ticket_number}.{signature}@{domain}"


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
    expected = _signature(secret, purpose, number)
    if not hmac.compare_digest(expected, match["sig"]):
        return None
    return ReplyToken(purpose, number)
