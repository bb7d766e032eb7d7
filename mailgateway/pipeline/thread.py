"""Which ticket does a mail belong to? Tag, signed token, then References.

Customers' clients mangle subjects in every way: prefix chains in many
languages (`R: RIF: I: Re: AW: WG:`), lower-cased tags, spaces inserted or
removed around `#` and `-`. The tag is therefore matched loosely, and the
number is normalised to its canonical `YYYY-NNNNNN` form before lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from mailgateway.reply_token import ReplyToken, read_reply_address
from mailgateway.tickets import format_number

# Reply and forward prefixes seen in the wild (it, en, de, nl, fr, es, sv, da, no, pl, pt).
_PREFIX = re.compile(
    r"^\s*(?:(?:re|r|rif|i|fw|fwd|inoltro|aw|wg|antw|antwort|sv|vs|vl|tr|rv|enc|odp|pd|res|ref)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
REFERENCES_KEPT = 50
_NUMBER = r"(?P<year>\d{4})\s*-\s*(?P<seq>\d{1,9})"


@dataclass(frozen=True)
class ThreadKeys:
    """Everything in a mail that can point at an existing ticket, strongest first."""

    tag_number: str | None
    token: ReplyToken | None
    references: tuple[str, ...]


@lru_cache(maxsize=8)
def tag_pattern(ticket_tag: str) -> re.Pattern[str]:
    """A loose regex for the configured tag: any spacing, any case, brackets optional."""
    before, _, after = ticket_tag.partition("{number}")

    def loose(literal: str) -> str:
        parts = [re.escape(ch) for ch in literal if not ch.isspace()]
        parts = [f"{p}?" if p in (r"\[", r"\]", r"\(", r"\)", r"\{", r"\}", "<", ">") else p
                 for p in parts]
        return r"\s*".join(parts)

    return re.compile(loose(before) + r"\s*" + _NUMBER + r"\s*" + loose(after), re.IGNORECASE)


def find_tag_number(subject: str, ticket_tag: str) -> str | None:
    """The ticket number in a subject, canonical, or None."""
    match = tag_pattern(ticket_tag).search(subject)
    if not match:
        return None
    return format_number(int(match["year"]), int(match["seq"]))


def clean_subject(subject: str, ticket_tag: str) -> str:
    """The subject without reply prefixes and without our tag: what a new ticket is called."""
    text = tag_pattern(ticket_tag).sub(" ", subject)
    text = _PREFIX.sub("", text)
    text = " ".join(text.split())
    return text


def find_token(
    addresses: Iterable[str], helpdesk_address: str, secret: str
) -> ReplyToken | None:
    """The first valid signed reply address among the recipients; forged ones are ignored."""
    for address in addresses:
        if "+" in address:
            token = read_reply_address(address, helpdesk_address, secret)
            if token is not None:
                return token
    return None


def thread_keys(
    subject: str,
    recipients: Iterable[str],
    in_reply_to: Iterable[str],
    references: Iterable[str],
    *,
    ticket_tag: str,
    helpdesk_address: str,
    secret: str,
) -> ThreadKeys:
    """What in the mail can name a ticket. Message-IDs come In-Reply-To first, then
    References from the newest to the oldest; of a long References only the first
    and the last `REFERENCES_KEPT` count, as mail clients keep them, so a mail with
    a hundred thousand ids costs what one with a hundred does."""
    kept = tuple(references)
    if len(kept) > 2 * REFERENCES_KEPT:
        kept = kept[:REFERENCES_KEPT] + kept[-REFERENCES_KEPT:]
    ids = dict.fromkeys(mid for mid in (*tuple(in_reply_to)[:REFERENCES_KEPT], *reversed(kept))
                        if mid)
    return ThreadKeys(
        tag_number=find_tag_number(subject, ticket_tag),
        token=find_token(recipients, helpdesk_address, secret),
        references=tuple(ids),
    )
