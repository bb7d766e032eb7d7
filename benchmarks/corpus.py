"""What a generated corpus is, and how it goes to disk for the contenders to read.

The generator (`benchmarks.generate`) returns these values; the benchmarks read them to
know what to expect of a run (which mail should open a ticket, which reply belongs to
which request) and write them where a contender takes its mail from: a Maildir for the
gateway's import, a directory of `.eml` files for django-helpdesk, and the accounts CSV
that registers the senders.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HELPDESK_ADDRESS = "assistenza@example.com"
"""Where the generated customers write; the benchmarks configure the gateway with it."""

DEFAULT_YEAR = 2026
"""Year of the Date headers and of the gateway tags unless the caller says otherwise."""

TagFormat = Callable[[int], str]
"""Maps the ordinal of a new request in the corpus (1, 2, …) to the subject tag."""

Kind = Literal["new", "reply"]
Threading = Literal["headers", "tag"]


def gateway_tag(year: int = DEFAULT_YEAR) -> TagFormat:
    """Return the gateway's default tag format, `[Ticket#YYYY-NNNNNN]`, for `year`."""

    def tag(ordinal: int) -> str:
        return f"[Ticket#{year}-{ordinal:06d}]"

    return tag


@dataclass(frozen=True)
class Account:
    """A customer studio or company, as `mailgateway accounts import` reads it."""

    name: str
    email: str
    vat: str
    language: str
    person: str
    client: str
    phone: str


@dataclass(frozen=True)
class GeneratedMail:
    """One mail of the corpus with what the generator knows about it.

    `ticket` is the 1-based ordinal of the new request the mail belongs to (its own for a
    new request); `parent` is the Message-ID it answers (None for new requests and for
    tag-threaded replies, which carry no threading headers).
    """

    raw: bytes
    message_id: str
    kind: Kind
    ticket: int
    sender: str
    subject: str
    threading: Threading | None = None
    parent: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True)
class Corpus:
    """The generated mails in arrival order and the accounts that send them."""

    mails: list[GeneratedMail]
    accounts: list[Account]

    @property
    def raw(self) -> list[bytes]:
        """The mails' bytes, in arrival order."""
        return [mail.raw for mail in self.mails]

    @property
    def new_requests(self) -> int:
        """How many mails should open a ticket."""
        return sum(1 for mail in self.mails if mail.kind == "new")

    @property
    def replies(self) -> int:
        """How many mails should land on an existing ticket."""
        return sum(1 for mail in self.mails if mail.kind == "reply")


def write_maildir(mails: Sequence[bytes], path: Path) -> Path:
    """Write `mails` as a Maildir (`new/`), names sorting in arrival order; return `path`."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for index, raw in enumerate(mails, 1):
        (path / "new" / f"{index:08d}.bench.localhost").write_bytes(raw)
    return path


def write_directory(mails: Sequence[bytes], path: Path) -> list[Path]:
    """Write one `NNNNNNNN.eml` per mail into `path`, names sorting in arrival order."""
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for index, raw in enumerate(mails, 1):
        file = path / f"{index:08d}.eml"
        file.write_bytes(raw)
        files.append(file)
    return files


def write_accounts_csv(accounts: Sequence[Account], path: Path) -> Path:
    """Write `accounts` as the CSV `mailgateway accounts import` reads; return `path`."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["name", "email", "vat", "language"])
        for account in accounts:
            writer.writerow([account.name, account.email, account.vat, account.language])
    return path
