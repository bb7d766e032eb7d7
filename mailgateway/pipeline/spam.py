"""Spam the receiving mail server already flagged: kept, never a ticket, never answered.

The filter in front of the gateway (SpamAssassin, rspamd, a provider's) has seen
far more mail than the desk; its verdict is read from the headers it writes and
from the subject tag it adds. Answering spam would confirm the forged sender
address to whoever forged it, so a flagged mail opens nothing and is kept with
the fate `spam`, where `inbox list --status spam` shows it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailgateway.pipeline.parse import ParsedMail

__all__ = ["upstream_spam_verdict"]

_YES = re.compile(r"\s*(yes|true)\b", re.IGNORECASE)


def upstream_spam_verdict(mail: ParsedMail, subject_tags: Sequence[str]) -> str | None:
    """Why the mail is spam by its filter's word, or None when no filter said so."""
    for header in ("X-Spam-Flag", "X-Spam-Status"):
        value = mail.header(header)
        if value is not None and _YES.match(value):
            return f"spam: {header}: {value.split(',')[0].strip()}"
    subject = mail.subject.casefold()
    tag = next((t for t in subject_tags if t and t.casefold() in subject), None)
    return f"spam: subject tagged {tag}" if tag else None
