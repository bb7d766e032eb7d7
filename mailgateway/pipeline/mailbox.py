"""Which sender addresses are mailboxes the desk may answer and keep an account for.

Mail from form scripts and spam tools carries From values that are no address
(`test test@example.com`, `@powerupdev.com`): an account made for one would be
junk, and a mail to one bounces or, worse, reaches a stranger's domain. Old
mailers still write the obsolete RFC 2822 syntax (`<@relay:user@host>`, spaces
around the dots and the `@`, comments); it is recovered rather than refused.
"""

from __future__ import annotations

import re

__all__ = ["recovered_mailbox", "valid_mailbox"]

# dot-atom (or quoted, without spaces) local part @ a domain with at least one dot;
# letters beyond ASCII allowed (RFC 6531), no empty labels.
_MAILBOX = re.compile(
    r"^(?:[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*|\"(?:[^\"\\\s]|\\.)+\")"
    r"@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_][\w-]*[^\W_]$"
)
_COMMENT = re.compile(r"\([^()]*\)")
_ANGLE = re.compile(r"<([^<>]*)>")
_ROUTE = re.compile(r"^\s*(?:@[^,:]+,?\s*)+:")
_AROUND_SEPARATORS = re.compile(r"\s*([.@])\s*")

LONGEST = 254  # RFC 5321: a path is at most 256 octets with its brackets


def valid_mailbox(address: str) -> bool:
    """True for an address one can write to: `local@domain.tld`, nothing else."""
    return len(address) <= LONGEST and _MAILBOX.match(address) is not None


def recovered_mailbox(value: str | None) -> str:
    """The address in a header value written in obsolete syntax, or "" when there is none.

    `John <@relay.example:john @ example . com>` → `john@example.com`.
    """
    if not value:
        return ""
    text = _COMMENT.sub(" ", value)
    angle = _ANGLE.search(text)
    inner = angle[1] if angle else text
    inner = _ROUTE.sub("", inner)
    candidate = _AROUND_SEPARATORS.sub(r"\1", inner).strip().strip('"').lower()
    return candidate if valid_mailbox(candidate) else ""
