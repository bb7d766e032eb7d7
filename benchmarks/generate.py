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
"""

from __future__ import annotations

import csv
import re
import struct
import textwrap
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from random import Random
from typing import Literal

HELPDESK_ADDRESS = "assistenza@example.com"
"""Where the generated customers write; the benchmarks configure the gateway with it."""

DEFAULT_YEAR = 2026
"""Year of the Date headers and of the gateway tags unless the caller says otherwise."""

TagFormat = Callable[[int], str]
"""Maps the ordinal of a new request in the corpus (1, 2, …) to the subject tag."""

Kind = Literal["new", "reply"]
Threading = Literal["headers", "tag"]

_POLICY = policy.default
_ACCOUNTS = 40
_NEW_REQUEST_SHARE = 0.55
_TAG_THREADED_SHARE = 0.3


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


# --- vocabulary -----------------------------------------------------------------------------

_FIRST_NAMES = (
    "Mario",
    "Giulia",
    "Niccolò",
    "Francesca",
    "Luca",
    "Chiara",
    "Andrea",
    "Lucia",
    "Paolo",
    "Sofia",
    "Mattia",
    "Elena",
    "Nicolò",
    "Martina",
    "Davide",
    "Zoë",
    "Simone",
    "Federica",
    "Gianluca",
    "Beatrice",
)
_LAST_NAMES = (
    "Rossi",
    "Bianchi",
    "Ferrè",
    "Esposito",
    "Russo",
    "Romano",
    "Colombo",
    "Ricci",
    "Marino",
    "Greco",
    "Bruno",
    "Gallo",
    "Conti",
    "De Luca",
    "Mancini",
    "Costa",
    "Giordano",
    "Rizzo",
    "Lombardi",
    "Moretti",
    "D'Angelo",
    "Cantù",
    "Forlì",
    "Pellè",
)
_COMPANY_FORMS = (
    "Studio {last} & Associati",
    "Studio Commercialista {first} {last}",
    "{last} S.r.l.",
    "{last} & {other} S.n.c.",
    "Studio Associato {last} – Consulenza del Lavoro",
    "Caffè {last} S.p.A.",
    "Centro Elaborazione Dati {last}",
)
_MAILBOXES = ("{first}.{last}", "{first}", "segreteria", "amministrazione", "info")
_PROVINCE_OFFICES = ("021", "015", "058", "063", "037", "001", "048", "082", "096")

_PRODUCTS = (
    "Multi / Lynfa Studio (Cod. 2)",
    "Lynfa Azienda (Cod. 4)",
    "Gamma Evolution (Cod. 6)",
    "Paghe Studio (Cod. 8)",
    "Fatturazione elettronica (Cod. 11)",
    "Conservazione digitale (Cod. 12)",
)
_REQUEST_TYPES = ("tecnica", "tecnica", "tecnica", "commerciale", "amministrativa")
_IMPACTS = ("Sono bloccato", "Riesco a lavorare, con difficoltà")
_MONTHS = (
    "gennaio",
    "febbraio",
    "marzo",
    "aprile",
    "maggio",
    "giugno",
    "luglio",
    "agosto",
    "settembre",
    "ottobre",
    "novembre",
    "dicembre",
)
_WEEKDAYS = ("lun", "mar", "mer", "gio", "ven", "sab", "dom")

_SUBJECTS = (
    "ERRORE {code} ON MOCO",
    "Lynfa: stampa F24 bloccata",
    "Errore {code} all'apertura dell'archivio ditte",
    "Multi: la contabilità non si apre più",
    "Invio telematico 730 — ricevuta non scaricata",
    "Fatturazione elettronica: fattura scartata dallo SdI (codice 00305)",
    "Richiesta preventivo per il modulo Paghe",
    "Fattura n. {number}/{year} non ricevuta",
    "Aggiornamento alla versione {version} non riuscito",
    "Perché il bilancio CEE non quadra?",
    "Cedolini di {month}: errore nel calcolo del TFR",
    "Lynfa Azienda: registrazione prima nota impossibile",
    "Conservazione sostitutiva: firma non più valida",
    "Stampa registri IVA molto più lenta del solito",
    "Licenza scaduta, non riesco più a entrare",
    "Richiesta attivazione nuovo utente per la segreteria",
    "Modello Redditi PF: quadro RW non compilabile",
    "Stampante non più riconosciuta dopo l'aggiornamento di Windows",
    "Importazione estratto conto CBI fallita",
    "Codice errore {code} all'avvio di MPRI",
    "URGENTE: liquidazione IVA trimestrale, importi errati",
    "Domanda sul canone di assistenza {year}",
)
_DESCRIPTIONS = (
    "Quando vado su MPRI, esce una maschera di errore cobol e poi mi esce dal programma.",
    (
        "Da stamattina non riesco più a stampare l'F24: il programma resta fermo su "
        "«Elaborazione in corso…» e poi si chiude senza messaggi."
    ),
    "All'apertura della ditta {company_code} compare l'errore {code} e non si può proseguire.",
    (
        "Non capisco perché l'IVA a debito risulti diversa da quella della liquidazione: "
        "la differenza è di {amount} €."
    ),
    "Vorrei sapere quanto costa aggiungere una postazione e se è compresa nel canone annuo.",
    (
        "Non abbiamo ricevuto la fattura del canone di manutenzione; potete reinviarla "
        "all'indirizzo dell'amministrazione?"
    ),
    (
        "Lo SdI ha scartato la fattura n. {number} con il codice 00305 (IdFiscaleIVA del "
        "cessionario non valido), ma la partita IVA è corretta."
    ),
    (
        "Dopo l'aggiornamento alla versione {version} il programma chiede di nuovo "
        "l'attivazione della licenza."
    ),
    (
        "L'importazione del file CBI della banca si interrompe al movimento {number} con il "
        "messaggio «tracciato non riconosciuto»."
    ),
    (
        "Nei cedolini di {month} il TFR maturato è più alto del dovuto per tutti i "
        "dipendenti a tempo parziale."
    ),
)
_DETAILS = (
    "Ho già provato a riavviare il server ma il problema si ripresenta identico.",
    "È la terza volta questa settimana e siamo in scadenza: potete richiamarmi al più presto?",
    "Il collega ha già aggiornato all'ultima release però l'errore è rimasto.",
    "Succede solo sulla postazione della segreteria; sulle altre funziona.",
    "Il sistema operativo è Windows 11 Pro, la versione del programma è {version}.",
    "Potete verificare anche se la nostra licenza è attiva fino a fine anno?",
    "Non so se può essere utile, ma ieri sera è mancata la corrente per qualche minuto.",
)
_REPLY_OPENINGS = (
    "Grazie per la risposta, ho provato come indicato ma l'errore si ripresenta.",
    "Ecco la schermata che mi avevate chiesto.",
    "Aggiungo un dettaglio: l'errore compare solo dopo aver selezionato l'anno {year}.",
    "Sollecito: siamo ancora bloccati, è davvero urgente perché scade il termine.",
    "Il numero di versione è {version}; il server è stato riavviato stamattina.",
    "Scusate, dimenticavo: la ditta interessata è la {company_code}.",
    "Vi giro anche il messaggio che compare in basso a sinistra, forse è più chiaro.",
    "Ho fatto la prova sul portatile e lì funziona; sul server no.",
)
_GREETINGS = ("Buongiorno,", "Buonasera,", "Salve,", "Gentile assistenza,", "Ciao,")
_CLOSINGS = ("Cordiali saluti", "Grazie, buona giornata", "Saluti", "Grazie mille")


@dataclass(frozen=True)
class _Client:
    """How one mail client writes: its header, reply prefixes, encodings, HTML habit."""

    header: tuple[str, str] | None
    prefixes: tuple[str, ...]
    encodings: tuple[str, ...]
    html_share: float


_CLIENTS = {
    "outlook": _Client(
        header=("X-Mailer", "Microsoft Outlook 16.0"),
        prefixes=("R: ", "R: ", "RIF: "),
        encodings=("quoted-printable", "base64"),
        html_share=0.9,
    ),
    "thunderbird": _Client(
        header=(
            "User-Agent",
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 "
                "Thunderbird/128.5.0"
            ),
        ),
        prefixes=("Re: ",),
        encodings=("8bit", "8bit", "quoted-printable"),
        html_share=0.2,
    ),
    "gmail": _Client(
        header=None,
        prefixes=("Re: ",),
        encodings=("quoted-printable", "base64"),
        html_share=1.0,
    ),
    "apple": _Client(
        header=("X-Mailer", "Apple Mail (2.3776.700.51)"),
        prefixes=("Re: ", "R: "),
        encodings=("quoted-printable", "8bit"),
        html_share=0.5,
    ),
}


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
        first = rng.choice(_FIRST_NAMES)
        last = rng.choice(_LAST_NAMES)
        other = rng.choice([name for name in _LAST_NAMES if name != last])
        name = rng.choice(_COMPANY_FORMS).format(first=first, last=last, other=other)
        domain = _ascii_slug(name.split("–")[0]).replace("-", "")[:28] + ".it"
        mailbox = rng.choice(_MAILBOXES).format(first=_ascii_slug(first), last=_ascii_slug(last))
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
                client=rng.choice(sorted(_CLIENTS)),
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
    msg = _envelope(
        account, HELPDESK_ADDRESS, f"Re: {first.subject}", when, _message_id(rng, account)
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
    return _serialize(msg, rng, windows_paths=())


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


# --- building one mail ----------------------------------------------------------------------


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
    values = _fill(rng, year)
    subject = rng.choice(_SUBJECTS).format(**values)
    lines = [rng.choice(_GREETINGS), ""]
    if rng.random() < 0.35:
        lines += [
            f"Articolo: {rng.choice(_PRODUCTS)}",
            f"Tipo di richiesta: {rng.choice(_REQUEST_TYPES)}",
            f"Impatto: {rng.choice(_IMPACTS)}",
            "",
        ]
    lines.append(rng.choice(_DESCRIPTIONS).format(**values))
    lines += [detail.format(**values) for detail in rng.sample(_DETAILS, rng.randint(0, 2))]
    attachments = _pick_attachments(rng, account, share=0.15)
    if attachments:
        lines.append("Vi allego la schermata dell'errore.")
    text = _compose_text(rng, lines, account)
    message_id = _message_id(rng, account)
    msg = _envelope(account, address, subject, when, message_id)
    meta = GeneratedMail(
        raw=b"",
        message_id=message_id,
        kind="new",
        ticket=ordinal,
        sender=account.email,
        subject=subject,
    )
    return _finish(rng, msg, account, text, attachments, meta), text


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
    client = _CLIENTS[account.client]
    values = _fill(rng, year)
    prefix = rng.choice(client.prefixes)
    by_tag = rng.random() < _TAG_THREADED_SHARE
    parent = thread.mails[-1] if rng.random() < 0.8 else rng.choice(thread.mails)
    lines = [rng.choice(_GREETINGS), "", rng.choice(_REPLY_OPENINGS).format(**values)]
    if rng.random() < 0.4:
        lines.append(rng.choice(_DETAILS).format(**values))
    attachments = _pick_attachments(rng, account, share=0.3)
    text = _compose_text(rng, lines, account) + _quote(parent, thread)
    message_id = _message_id(rng, account)
    ordinal = thread.first.ticket
    if by_tag:
        subject = f"{prefix}{render_tag(ordinal)} {thread.first.subject}"
        msg = _envelope(account, address, subject, when, message_id)
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
        msg = _envelope(account, address, subject, when, message_id)
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
    return _finish(rng, msg, account, text, attachments, meta), text


def _finish(
    rng: Random,
    msg: EmailMessage,
    account: Account,
    text: str,
    attachments: list[tuple[str, str, bytes]],
    meta: GeneratedMail,
) -> GeneratedMail:
    """Add the body and attachments to `msg`, serialize it and fill `meta.raw`."""
    client = _CLIENTS[account.client]
    cte = rng.choice(client.encodings)
    msg.set_content(text, charset="utf-8", cte=cte)
    if rng.random() < client.html_share:
        msg.add_alternative(_html(text), subtype="html", charset="utf-8", cte=cte)
    windows_paths = []
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        if "\\" in filename:
            windows_paths.append(filename)
    return replace(
        meta,
        raw=_serialize(msg, rng, windows_paths=windows_paths),
        attachments=tuple(name for name, _, _ in attachments),
    )


def _envelope(
    account: Account, address: str, subject: str, when: datetime, message_id: str
) -> EmailMessage:
    """Return a message with the headers every generated mail has, in a client's order."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = formataddr((account.person, account.email))
    msg["To"] = formataddr(("Assistenza", address))
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    header = _CLIENTS[account.client].header
    if header:
        msg[header[0]] = header[1]
    msg["Content-Language"] = "it-IT"
    return msg


def _serialize(msg: EmailMessage, rng: Random, *, windows_paths: Sequence[str]) -> bytes:
    """Serialize `msg` with seeded boundaries and, like Outlook, unescaped Windows paths.

    The subject is re-encoded the way mail clients write it (see `_subject_field`). Long
    Message-ID, In-Reply-To and References values stay folded onto the next line, as
    Exchange writes them.

    The standard library would pick boundaries from the global random state and escapes
    backslashes in a quoted filename; real clients send `filename="C:\\Users\\…"` raw, which
    is the harder case for a parser, so the escaping is undone in the bytes.
    """
    for part in msg.walk():
        if part.is_multipart():
            part.set_boundary(f"----=_Part_{rng.getrandbits(64):016x}")
    raw = msg.as_bytes(policy=_POLICY)
    raw = re.sub(
        rb"^Subject:.*\n(?:[ \t].*\n)*",
        lambda _: _subject_field(str(msg["Subject"])),
        raw,
        count=1,
        flags=re.MULTILINE,
    )
    for path in windows_paths:
        escaped = path.replace("\\", "\\\\").encode()
        raw = raw.replace(escaped, path.encode())
    return raw


def _subject_field(subject: str) -> bytes:
    """Return the Subject field as clients write it: one run of encoded words if needed.

    The standard library encodes only the non-ASCII words and may move a whole value to a
    continuation line; clients encode the whole subject (shortest of Q and B) and fold
    between encoded words, which is what a gateway mostly sees.
    """
    charset = "us-ascii" if subject.isascii() else "utf-8"
    folded = Header(subject, charset, header_name="Subject").encode(linesep="\n")
    return f"Subject: {folded}\n".encode("ascii")


def _compose_text(rng: Random, lines: list[str], account: Account) -> str:
    """Return a wrapped plain-text body with closing and signature."""
    wrapped = [textwrap.fill(line, 72) if line else "" for line in lines]
    signature = [
        "",
        rng.choice(_CLOSINGS),
        account.person,
        account.name,
        f"Tel. {account.phone}",
    ]
    if rng.random() < 0.3:
        signature += [
            "",
            (
                "Questo messaggio e i suoi allegati sono riservati: se lo ha ricevuto per "
                "errore, la preghiamo di cancellarlo e di avvisarci."
            ),
        ]
    return "\n".join(wrapped + signature) + "\n"


def _quote(parent: GeneratedMail, thread: _Thread) -> str:
    """Return the quoted history a client appends below a reply."""
    body, when = thread.written[parent.message_id]
    if thread.account.client == "outlook":
        header = (
            f"\n-----Messaggio originale-----\nDa: {thread.account.person} "
            f"<{thread.account.email}>\nInviato: {_italian_date(when)}\n"
            f"A: Assistenza <{HELPDESK_ADDRESS}>\nOggetto: {parent.subject}\n\n"
        )
        return header + body
    if thread.account.client == "thunderbird":
        header = f"\nIl {when:%d/%m/%Y %H:%M}, {thread.account.person} ha scritto:\n"
    else:
        header = (
            f"\nIl giorno {_italian_date(when)} {thread.account.person} "
            f"<{thread.account.email}> ha scritto:\n"
        )
    return header + "".join(f"> {line}\n" if line else ">\n" for line in body.splitlines())


def _pick_attachments(rng: Random, account: Account, share: float) -> list[tuple[str, str, bytes]]:
    """Return the screenshots and documents a mail carries (usually none)."""
    if rng.random() >= share:
        return []
    files = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        kind = rng.random()
        if kind < 0.4:
            files.append((f"errore_{rng.randint(1, 99)}.png", "image/png", _png(rng)))
        elif kind < 0.55:
            user = _ascii_slug(account.person.split()[0])
            path = f"C:\\Users\\{user}\\Desktop\\errore.png"
            files.append((path, "image/png", _png(rng)))
        elif kind < 0.7:
            files.append(("Schermata – errore contabilità.png", "image/png", _png(rng)))
        else:
            name = rng.choice(("F24_marzo.pdf", "fattura_scartata.pdf", "ricevuta 730.pdf"))
            files.append((name, "application/pdf", _pdf(rng)))
    return files


def _png(rng: Random) -> bytes:
    """Return a small valid grayscale PNG (a fake screenshot)."""
    width, height = rng.randint(16, 48), rng.randint(12, 32)
    rows = b"".join(b"\x00" + rng.randbytes(width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def _pdf(rng: Random) -> bytes:
    """Return a small valid one-page PDF with a line of text."""
    text = f"Modello F24 - protocollo {rng.randint(100000, 999999)}".encode("ascii")
    stream = b"BT /F1 12 Tf 72 720 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>"
        ),
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _html(text: str) -> str:
    """Return the HTML alternative a rich-text client would send for `text`."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paragraphs = "".join(
        f"<p>{block.replace(chr(10), '<br>')}</p>\n" for block in escaped.split("\n\n")
    )
    return (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        '</head>\n<body style="font-family:Calibri,sans-serif;font-size:11pt">\n'
        f"{paragraphs}</body></html>\n"
    )


# --- small helpers --------------------------------------------------------------------------


def _fill(rng: Random, year: int) -> dict[str, object]:
    """Return the values the subject and body templates may use."""
    return {
        "code": f"{rng.randint(1, 99)},{rng.randint(1, 40)}",
        "number": rng.randint(1, 480),
        "year": year,
        "version": f"{year % 100}.{rng.randint(0, 9)}.{rng.randint(0, 30)}",
        "month": rng.choice(_MONTHS),
        "amount": f"{rng.randint(1, 9999)},{rng.randint(0, 99):02d}",
        "company_code": f"{rng.randint(1, 999):04d}",
    }


def _pick_thread(rng: Random, threads: Sequence[_Thread]) -> _Thread:
    """Prefer recent requests: customers answer while a ticket is fresh."""
    back = min(len(threads), 30, 1 + int(rng.expovariate(0.15)))
    return threads[-back]


def _message_id(rng: Random, account: Account) -> str:
    """Return a Message-ID in the style of the account's mail client."""
    domain = account.email.split("@", 1)[1]
    token = f"{rng.getrandbits(96):024X}"
    if account.client == "outlook":
        return f"<AM6PR08MB{token}@AM6PR08MB{token[:4]}.eurprd08.prod.outlook.com>"
    if account.client == "gmail":
        return f"<CAF{token.lower()}+{rng.getrandbits(20):05x}@mail.gmail.com>"
    if account.client == "apple":
        return f"<{token[:8]}-{token[8:12]}-{token[12:16]}-{token[16:]}@{domain}>"
    return f"<{token[:8].lower()}-{token[8:12].lower()}-{token[12:].lower()}@{domain}>"


def _account_of(accounts: Sequence[Account], email: str) -> Account:
    """Return the account whose address is `email`."""
    return next(account for account in accounts if account.email == email)


def _italian_date(when: datetime) -> str:
    """Format `when` the way Italian mail clients write it above a quote."""
    return (
        f"{_WEEKDAYS[when.weekday()]} {when.day} {_MONTHS[when.month - 1][:3]} "
        f"{when.year} alle ore {when:%H:%M}"
    )


def _ascii_slug(text: str) -> str:
    """Return `text` lower-cased, accents dropped, other characters turned into dashes."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = "".join(ch if ch.isalnum() else "-" for ch in plain.lower())
    return "-".join(part for part in out.split("-") if part)


def _partita_iva(rng: Random) -> str:
    """Return a well-formed Italian VAT number (11 digits, valid check digit)."""
    digits = [rng.randint(0, 9) for _ in range(7)] + [
        int(ch) for ch in rng.choice(_PROVINCE_OFFICES)
    ]
    total = 0
    for position, digit in enumerate(digits):
        if position % 2 == 0:
            total += digit
        else:
            doubled = digit * 2
            total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)
