"""Deterministic corpus of Italian helpdesk mail for the benchmarks.

The benchmarks need mail that looks like what the desk really receives — studios and
companies writing about their accounting programs, in Italian, from Outlook, Thunderbird,
Gmail and Apple Mail, with accents, screenshots and every common transfer encoding — and
they need the *same* bytes every run, so that two runs (or the gateway and its peer) are
compared on identical input. Everything here is drawn from one seeded `random.Random`;
nothing reads the clock, the global random state or the environment.

The sequence is in arrival order. A mail is either a new request from a registered
account or a reply from the same account to a request generated earlier. Replies thread
in one of two ways:

* **by headers** (most of them): `In-Reply-To` names the mail being answered and
  `References` the thread so far, as every mail client writes them; the subject only has
  the client's `Re:`/`R:`/`RIF:` prefix;
* **by tag**: the subject carries the ticket tag (`R: [Ticket#2026-000123] …`) and there
  are no threading headers, as when a customer writes a fresh mail and copies the tag.

Tag-threaded replies need the number the gateway will give the ticket. The assumption,
which the benchmarks meet, is: the gateway starts from an empty database, numbers tickets
`YYYY-NNNNNN` per year from 000001 in creation order, every new request of the corpus
opens exactly one ticket (all senders are registered accounts, no routing rule rejects or
drops them, nothing in the corpus is automatic mail) and no reply opens one; so the k-th
new request of the corpus becomes ticket k of `year`. The caller passes the year the
gateway's clock will be in. A peer with a different tag format gets the same corpus with
its own tag through the `tag` argument: only the tags change (in those subjects, and in
the quoted history of later replies that quote them); every random draw stays the same.

This module assembles the sequence; the words come from `benchmarks.vocabulary`, the way
each client writes one mail from `benchmarks.mail_builder`, and the values returned (and
their writing to disk) from `benchmarks.corpus`. Those values and writers are importable
from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from random import Random

from benchmarks.corpus import (
    DEFAULT_YEAR,
    HELPDESK_ADDRESS,
    Account,
    Corpus,
    GeneratedMail,
    Kind,
    TagFormat,
    Threading,
    gateway_tag,
    write_accounts_csv,
    write_directory,
    write_maildir,
)
from benchmarks.mail_builder import (
    compose_text,
    envelope,
    finish_mail,
    message_id_for,
    pick_attachments,
    quoted_history,
    serialize,
)
from benchmarks.vocabulary import (
    CLIENTS,
    COMPANY_FORMS,
    DESCRIPTIONS,
    DETAILS,
    FIRST_NAMES,
    GREETINGS,
    IMPACTS,
    LAST_NAMES,
    MAILBOXES,
    PRODUCTS,
    PROVINCE_OFFICES,
    REPLY_OPENINGS,
    REQUEST_TYPES,
    SUBJECTS,
    ascii_slug,
    template_values,
)

__all__ = [
    "DEFAULT_YEAR",
    "HELPDESK_ADDRESS",
    "Account",
    "Corpus",
    "GeneratedMail",
    "Kind",
    "TagFormat",
    "Threading",
    "gateway_tag",
    "generate_accounts",
    "generate_corpus",
    "generate_mails",
    "large_attachment_reply",
    "write_accounts_csv",
    "write_directory",
    "write_maildir",
]

_ACCOUNTS = 40
_NEW_REQUEST_SHARE = 0.55
_TAG_THREADED_SHARE = 0.3


# --- public API -----------------------------------------------------------------------------


def generate_mails(n: int, seed: int = 1) -> list[bytes]:
    """Return `n` raw mails in arrival order; the same `n` and `seed` give the same bytes."""
    return generate_corpus(n, seed).raw


def generate_accounts(seed: int = 1, count: int = _ACCOUNTS) -> list[Account]:
    """Return the accounts that send the corpus of `seed`.

    They depend on the seed only (not on the corpus size), so a benchmark can register
    them once and import corpora of any length.
    """
    rng = Random(f"accounts-{seed}")
    accounts: list[Account] = []
    used: set[str] = set()
    for _ in range(count):
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        other = rng.choice([name for name in LAST_NAMES if name != last])
        name = rng.choice(COMPANY_FORMS).format(first=first, last=last, other=other)
        domain = ascii_slug(name.split("–")[0]).replace("-", "")[:28] + ".it"
        mailbox = rng.choice(MAILBOXES).format(first=ascii_slug(first), last=ascii_slug(last))
        email = f"{mailbox}@{domain}"
        while email in used:
            email = f"{mailbox}{len(used)}@{domain}"
        used.add(email)
        accounts.append(
            Account(
                name=name,
                email=email,
                vat=_partita_iva(rng),
                language="en" if rng.random() < 0.1 else "it",
                person=f"{first} {last}",
                client=rng.choice(sorted(CLIENTS)),
                phone=f"0{rng.randint(10, 99)} {rng.randint(100000, 9999999)}",
            )
        )
    return accounts


def generate_corpus(
    n: int,
    seed: int = 1,
    *,
    year: int = DEFAULT_YEAR,
    tag: TagFormat | None = None,
    address: str = HELPDESK_ADDRESS,
) -> Corpus:
    """Return `n` mails in arrival order and their senders.

    `tag` renders the subject tag of tag-threaded replies from the ordinal of the request
    they answer (default: the gateway's `[Ticket#YYYY-NNNNNN]` of `year`). It consumes no
    randomness, so corpora that differ only in `tag` differ only in the tags.
    """
    if n < 0:
        raise ValueError(f"cannot generate a negative number of mails ({n})")
    render_tag = tag or gateway_tag(year)
    accounts = generate_accounts(seed)
    rng = Random(seed)
    clock = datetime(year, 3, 2, 8, 30, tzinfo=timezone(timedelta(hours=1)))
    threads: list[_Thread] = []
    mails: list[GeneratedMail] = []
    for _ in range(n):
        clock += timedelta(minutes=rng.randint(1, 20), seconds=rng.randint(0, 59))
        if not threads or rng.random() < _NEW_REQUEST_SHARE:
            mail, text = _new_request(rng, accounts, len(threads) + 1, clock, address, year)
            threads.append(_Thread(account=_account_of(accounts, mail.sender), first=mail))
        else:
            thread = _pick_thread(rng, threads)
            mail, text = _reply(rng, thread, clock, address, year, render_tag)
        thread_of = threads[mail.ticket - 1]
        thread_of.mails.append(mail)
        thread_of.written[mail.message_id] = (text, clock)
        mails.append(mail)
    return Corpus(mails=mails, accounts=accounts)


def large_attachment_reply(
    corpus: Corpus, size: int, seed: int = 1, *, year: int = DEFAULT_YEAR
) -> bytes:
    """Return a reply to the corpus's first request carrying one `size`-byte attachment.

    Replies of different sizes have different Message-IDs, so both may be ingested.

    The content is random (so it does not compress, like the PDFs and archives customers
    really send) and base64-encoded, so the mail is about 4/3 of `size`. It threads by
    headers, so it lands on ticket 1 whatever the tag format.
    """
    first = corpus.mails[0]
    account = _account_of(corpus.accounts, first.sender)
    rng = Random(f"large-{seed}-{size}")
    when = datetime(year, 12, 30, 17, 45, tzinfo=timezone(timedelta(hours=1)))
    msg = envelope(
        account, HELPDESK_ADDRESS, f"Re: {first.subject}", when, message_id_for(rng, account)
    )
    msg["In-Reply-To"] = first.message_id
    msg["References"] = first.message_id
    msg.set_content(
        "Buongiorno,\nvi allego l'archivio completo dei dati della ditta, come richiesto.\n"
        f"\n{account.person}\n",
        charset="utf-8",
        cte="quoted-printable",
    )
    msg.add_attachment(
        rng.randbytes(size),
        maintype="application",
        subtype="zip",
        filename="archivio_ditta_completo.zip",
    )
    return serialize(msg, rng, windows_paths=())


# --- one mail of the sequence ---------------------------------------------------------------


@dataclass
class _Thread:
    """A request of the corpus and the mails that followed it."""

    account: Account
    first: GeneratedMail
    mails: list[GeneratedMail] = field(default_factory=list)
    written: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    """Plain text and date of each mail, by Message-ID, for quoting it later."""


def _new_request(
    rng: Random,
    accounts: Sequence[Account],
    ordinal: int,
    when: datetime,
    address: str,
    year: int,
) -> tuple[GeneratedMail, str]:
    """Build a customer's first mail about a problem; return it and its plain text."""
    account = rng.choice(accounts)
    values = template_values(rng, year)
    subject = rng.choice(SUBJECTS).format(**values)
    lines = [rng.choice(GREETINGS), ""]
    if rng.random() < 0.35:
        lines += [
            f"Articolo: {rng.choice(PRODUCTS)}",
            f"Tipo di richiesta: {rng.choice(REQUEST_TYPES)}",
            f"Impatto: {rng.choice(IMPACTS)}",
            "",
        ]
    lines.append(rng.choice(DESCRIPTIONS).format(**values))
    lines += [detail.format(**values) for detail in rng.sample(DETAILS, rng.randint(0, 2))]
    attachments = pick_attachments(rng, account, share=0.15)
    if attachments:
        lines.append("Vi allego la schermata dell'errore.")
    text = compose_text(rng, lines, account)
    message_id = message_id_for(rng, account)
    msg = envelope(account, address, subject, when, message_id)
    meta = GeneratedMail(
        raw=b"",
        message_id=message_id,
        kind="new",
        ticket=ordinal,
        sender=account.email,
        subject=subject,
    )
    return finish_mail(rng, msg, account, text, attachments, meta), text


def _reply(
    rng: Random,
    thread: _Thread,
    when: datetime,
    address: str,
    year: int,
    render_tag: TagFormat,
) -> tuple[GeneratedMail, str]:
    """Build the customer's next mail on `thread`; return it and its plain text.

    It threads by tag or by headers, and quotes the mail it answers like the account's
    client would.
    """
    account = thread.account
    client = CLIENTS[account.client]
    values = template_values(rng, year)
    prefix = rng.choice(client.prefixes)
    by_tag = rng.random() < _TAG_THREADED_SHARE
    parent = thread.mails[-1] if rng.random() < 0.8 else rng.choice(thread.mails)
    lines = [rng.choice(GREETINGS), "", rng.choice(REPLY_OPENINGS).format(**values)]
    if rng.random() < 0.4:
        lines.append(rng.choice(DETAILS).format(**values))
    attachments = pick_attachments(rng, account, share=0.3)
    parent_text, parent_date = thread.written[parent.message_id]
    quoted = quoted_history(account, parent.subject, parent_text, parent_date)
    text = compose_text(rng, lines, account) + quoted
    message_id = message_id_for(rng, account)
    ordinal = thread.first.ticket
    if by_tag:
        subject = f"{prefix}{render_tag(ordinal)} {thread.first.subject}"
        msg = envelope(account, address, subject, when, message_id)
        meta = GeneratedMail(
            raw=b"",
            message_id=message_id,
            kind="reply",
            ticket=ordinal,
            sender=account.email,
            subject=subject,
            threading="tag",
        )
    else:
        subject = f"{prefix}{thread.first.subject}"
        references = (*parent.references, parent.message_id)
        msg = envelope(account, address, subject, when, message_id)
        msg["In-Reply-To"] = parent.message_id
        msg["References"] = " ".join(references)
        meta = GeneratedMail(
            raw=b"",
            message_id=message_id,
            kind="reply",
            ticket=ordinal,
            sender=account.email,
            subject=subject,
            threading="headers",
            parent=parent.message_id,
            references=references,
        )
    return finish_mail(rng, msg, account, text, attachments, meta), text


# --- small helpers --------------------------------------------------------------------------


def _pick_thread(rng: Random, threads: Sequence[_Thread]) -> _Thread:
    """Prefer recent requests: customers answer while a ticket is fresh."""
    back = min(len(threads), 30, 1 + int(rng.expovariate(0.15)))
    return threads[-back]


def _account_of(accounts: Sequence[Account], email: str) -> Account:
    """Return the account whose address is `email`."""
    return next(account for account in accounts if account.email == email)


def _partita_iva(rng: Random) -> str:
    """Return a well-formed Italian VAT number (11 digits, valid check digit)."""
    digits = [rng.randint(0, 9) for _ in range(7)] + [
        int(ch) for ch in rng.choice(PROVINCE_OFFICES)
    ]
    total = 0
    for position, digit in enumerate(digits):
        if position % 2 == 0:
            total += digit
        else:
            doubled = digit * 2
            total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)
