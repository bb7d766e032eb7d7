"""Transports: get the bytes, commit one inbox row, then acknowledge.

Every transport talks to the rest of the gateway through `Receiver`, so a
transport never touches the database or the pipeline itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Received:
    """What a transport learns after the commit: the inbox row and whether it was a repeat."""

    inbox_id: int
    duplicate: bool


class Receiver(Protocol):
    """The gateway as the transports see it (implemented by `mailgateway.service.Gateway`)."""

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        trust_authentication_results: bool = False,
    ) -> Received:
        """Commit the raw mail durably; only then may the transport acknowledge.
        `trust_authentication_results`: the MTA in front strips outsiders' headers.

        Blocking (database I/O). Raises `TemporaryError` when it could not commit.
        """
        ...

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        """Why a listener facing the senders' servers should refuse `raw` in the SMTP
        dialogue (a 550 with this text), or None to take it: a sender we do not know,
        when such mail is refused, is told by its own server rather than by us."""
        ...

    def process(self, inbox_id: int) -> str:
        """Run the pipeline on one stored mail; returns the inbox status afterwards
        (`processed`, `ignored` or `quarantined`). Never raises for a bad mail."""
        ...

    def statuses(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        """The inbox status of each stored mail still there, for a transport that
        acknowledges by fate once processing elsewhere is done with the mail."""
        ...

    def accepts_recipient(self, address: str) -> bool:
        """True when `address` is in one of the helpdesk's domains."""
        ...
