"""Posta elettronica certificata: the provider's envelope opened, its receipts named.

Many of the desk's customers write from a PEC mailbox. Their provider never
delivers what they wrote as it is: it wraps it in a transport envelope
(`X-Trasporto: posta-certificata`, subject `POSTA CERTIFICATA: …`, From
`"Per conto di: mario@pec.studiorossi.it" <posta-certificata@provider>`) whose
content is the provider's boilerplate, the certification data (`daticert.xml`),
the original mail as `postacert.eml` and an S/MIME signature. Ordinary mail that
reaches a PEC mailbox comes in the same shape as an anomaly envelope
(`X-Trasporto: errore`, `ANOMALIA MESSAGGIO: …`): the provider could not certify
it. And a desk that sends to, or through, PEC gets the provider's receipts back
(`X-Ricevuta: accettazione`, `avvenuta-consegna`, `errore-consegna` …), which
no person wrote and which prove, with a certified time, what became of our mail.

The shapes are those of the technical rules (DM 2 novembre 2005, allegato
tecnico, and the `daticert.xml` schema): this module reads them and nothing
else. `read_certified` turns a parsed envelope into the mail inside it, with
the envelope's facts (`PecFacts`) kept beside; a receipt stays as it is, with
its facts, for `classify` to call automatic and `pec_record` to tie to our
outbox row. Pure: no database, no clock. The provider's S/MIME signature is
not verified (the raw mail keeps it for whoever needs the legal proof).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

from mailgateway.pipeline.decode import message_ids
from mailgateway.pipeline.parse import Attachment, ParsedMail, parse_mail

__all__ = [
    "Daticert",
    "DeliveryOutcome",
    "PecFacts",
    "ReceiptKind",
    "answer_address",
    "certified_notice",
    "pec_facts",
    "read_certified",
    "read_daticert",
    "read_mail",
    "receipt_reason",
]

TRANSPORT = "posta-certificata"
ANOMALY = "errore"
DATICERT = "daticert.xml"
POSTACERT = "postacert.eml"


class ReceiptKind(StrEnum):
    """The values of `X-Ricevuta` (and of `daticert.xml`'s `tipo` on a receipt)."""

    ACCETTAZIONE = "accettazione"
    NON_ACCETTAZIONE = "non-accettazione"
    PRESA_IN_CARICO = "presa-in-carico"
    AVVENUTA_CONSEGNA = "avvenuta-consegna"
    ERRORE_CONSEGNA = "errore-consegna"
    PREAVVISO_ERRORE_CONSEGNA = "preavviso-errore-consegna"
    RILEVAZIONE_VIRUS = "rilevazione-virus"


class DeliveryOutcome(StrEnum):
    """What a receipt says of the mail it concerns."""

    DELIVERED = "delivered"   # accepted by the sender's provider, or delivered: certified time
    BOUNCED = "bounced"       # refused, or not delivered (or not within the rules' 24 hours)
    NOTED = "noted"           # between providers: kept as evidence, changes nothing


_OUTCOMES = {
    ReceiptKind.ACCETTAZIONE: DeliveryOutcome.DELIVERED,
    ReceiptKind.AVVENUTA_CONSEGNA: DeliveryOutcome.DELIVERED,
    ReceiptKind.NON_ACCETTAZIONE: DeliveryOutcome.BOUNCED,
    ReceiptKind.ERRORE_CONSEGNA: DeliveryOutcome.BOUNCED,
    ReceiptKind.PREAVVISO_ERRORE_CONSEGNA: DeliveryOutcome.BOUNCED,
}

# `daticert.xml` is a few hundred bytes; a bigger one is not the provider's.
_DATICERT_LIMIT = 256 * 1024
_ON_BEHALF = re.compile(r"^\s*per\s+conto\s+di\s*:?\s*(\S+@\S+?)\s*$", re.I)
_ZONE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


@dataclass(frozen=True)
class Daticert:
    """`daticert.xml`: what the provider certifies about one transmission."""

    kind: str                           # postacert/@tipo: posta-certificata, a receipt kind
    error: str                          # postacert/@errore: nessuno, no-dest, virus, altro…
    sender: str                         # intestazione/mittente
    recipients: tuple[str, ...]         # intestazione/destinatari
    subject: str                        # intestazione/oggetto
    provider: str                       # dati/gestore-emittente
    certified_at: datetime | None       # dati/data (giorno, ora, zona)
    identifier: str                     # dati/identificativo: the provider's id of the mail
    msgid: str | None                   # dati/msgid: the original Message-ID
    delivered_to: str                   # dati/consegna: the mailbox a receipt is about
    error_detail: str                   # dati/errore-esteso


@dataclass(frozen=True)
class PecFacts:
    """What the PEC envelope or receipt said, kept beside the mail inside it."""

    transport: str | None               # X-Trasporto: posta-certificata | errore
    receipt: ReceiptKind | None         # X-Ricevuta
    envelope_message_id: str | None     # the provider's Message-ID of the envelope
    envelope_subject: str
    on_behalf_of: str                   # the address in `Per conto di: …`
    refers_to: str | None               # X-Riferimento-Message-ID: the original mail's id
    daticert: Daticert | None
    problem: str | None = None          # why the envelope could not be opened, if it could not

    @property
    def anomaly(self) -> bool:
        """The provider could not certify the mail: it came from outside PEC, or broken."""
        return self.transport == ANOMALY

    @property
    def certified_sender(self) -> str:
        """The sender the provider vouches for (its `mittente`), else the `per conto di`."""
        certified = self.daticert.sender if self.daticert is not None else ""
        return certified if "@" in certified else self.on_behalf_of

    @property
    def certified_at(self) -> datetime | None:
        return self.daticert.certified_at if self.daticert is not None else None

    @property
    def provider(self) -> str:
        return self.daticert.provider if self.daticert is not None else ""

    @property
    def outcome(self) -> DeliveryOutcome | None:
        """What a receipt says of our mail; None for an envelope."""
        if self.receipt is None:
            return None
        return _OUTCOMES.get(self.receipt, DeliveryOutcome.NOTED)

    def original_ids(self) -> tuple[str, ...]:
        """The Message-IDs the receipt names as the mail it is about, best first."""
        ids = (self.refers_to, self.daticert.msgid if self.daticert is not None else None)
        return tuple(dict.fromkeys(i for i in ids if i))

    def record(self) -> dict[str, Any]:
        """The facts as plain values: what a message row keeps and `tickets show` prints."""
        cert = self.daticert
        return {
            "kind": self.receipt.value if self.receipt is not None else self.transport,
            "anomaly": self.anomaly,
            "certified_sender": self.certified_sender or None,
            "certified_at": self.certified_at.isoformat() if self.certified_at else None,
            "provider": self.provider or None,
            "identifier": cert.identifier or None if cert is not None else None,
            "msgid": cert.msgid if cert is not None else self.refers_to,
            "envelope_message_id": self.envelope_message_id,
            "error": cert.error if cert is not None and cert.error != "nessuno" else None,
            "error_detail": cert.error_detail or None if cert is not None else None,
            "delivered_to": cert.delivered_to or None if cert is not None else None,
            "problem": self.problem,
        }


def _text(root: ElementTree.Element, path: str) -> str:
    found = root.find(path)
    return " ".join((found.text or "").split()) if found is not None else ""


def _certified_time(root: ElementTree.Element) -> datetime | None:
    """`<data zona="+0100"><giorno>15/11/2024</giorno><ora>18:20:38</ora></data>`."""
    data = root.find("dati/data")
    if data is None:
        return None
    zone = _ZONE.match((data.get("zona") or "").strip())
    try:
        at = datetime.strptime(f"{_text(data, 'giorno')} {_text(data, 'ora')}",
                               "%d/%m/%Y %H:%M:%S")
    except ValueError:
        return None
    if zone is None:
        return at.replace(tzinfo=UTC)
    offset = timedelta(hours=int(zone[2]), minutes=int(zone[3]))
    return at.replace(tzinfo=timezone(-offset if zone[1] == "-" else offset)).astimezone(UTC)


def read_daticert(data: bytes) -> Daticert | None:
    """The certification data; None when the bytes are not a `postacert` document.

    A document that declares entities is refused before parsing: the provider's
    never does, and entity expansion is the one harm an XML parser can do here.
    """
    if len(data) > _DATICERT_LIMIT or b"<!ENTITY" in data or b"<!entity" in data:
        return None
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        return None
    if root.tag != "postacert":
        return None
    msgid = message_ids(_text(root, "dati/msgid"))
    return Daticert(
        kind=(root.get("tipo") or "").strip().lower(),
        error=(root.get("errore") or "nessuno").strip().lower(),
        sender=_text(root, "intestazione/mittente").lower(),
        recipients=tuple(" ".join((d.text or "").split()).lower()
                         for d in root.findall("intestazione/destinatari")),
        subject=_text(root, "intestazione/oggetto"),
        provider=_text(root, "dati/gestore-emittente"),
        certified_at=_certified_time(root),
        identifier=_text(root, "dati/identificativo"),
        msgid=msgid[0] if msgid else None,
        delivered_to=_text(root, "dati/consegna").lower(),
        error_detail=_text(root, "dati/errore-esteso"),
    )


def _named(mail: ParsedMail, name: str) -> Attachment | None:
    return next((a for a in mail.attachments if a.filename.lower() == name), None)


def _inner_mail(mail: ParsedMail) -> Attachment | None:
    """`postacert.eml`; some clients save it under the original subject, so any mail."""
    return _named(mail, POSTACERT) or next(
        (a for a in mail.attachments if a.content_type == "message/rfc822"), None)


def _receipt_kind(mail: ParsedMail) -> ReceiptKind | None:
    value = (mail.header("X-Ricevuta") or "").strip().lower()
    try:
        return ReceiptKind(value) if value else None
    except ValueError:  # a kind the rules do not name: kept, tied to nothing
        return None


def _first_id(value: str | None) -> str | None:
    ids = message_ids(value or "")
    return ids[0] if ids else None


def pec_facts(mail: ParsedMail) -> PecFacts | None:
    """The PEC facts of a mail as received; None for a mail no PEC provider made."""
    transport = (mail.header("X-Trasporto") or "").strip().lower() or None
    receipt = _receipt_kind(mail)
    if (receipt is None and transport not in (TRANSPORT, ANOMALY)
            and mail.header("X-Ricevuta") is None):
        return None
    daticert_part = _named(mail, DATICERT)
    daticert = read_daticert(daticert_part.payload) if daticert_part is not None else None
    name = parseaddr(mail.header("From") or "")[0]
    behalf = _ON_BEHALF.match(name) if name else None
    return PecFacts(
        transport=transport if transport in (TRANSPORT, ANOMALY) else None,
        receipt=receipt, envelope_message_id=mail.message_id,
        envelope_subject=mail.subject,
        on_behalf_of=behalf[1].strip("<>\"'").lower() if behalf else "",
        refers_to=_first_id(mail.header("X-Riferimento-Message-ID")), daticert=daticert)


def receipt_reason(mail: ParsedMail) -> str | None:
    """Why `mail` is a PEC provider's receipt (automatic mail), or None."""
    kind = mail.header("X-Ricevuta")
    if kind is None or (mail.header("X-Trasporto") or "").strip():
        return None  # an envelope carries a person's mail, whatever it quotes
    return f"PEC receipt (X-Ricevuta: {kind.strip() or 'empty'})"


_ENVELOPE_FILES = frozenset({DATICERT, POSTACERT, "smime.p7s"})


def read_certified(mail: ParsedMail) -> ParsedMail:
    """The mail a PEC envelope carries, with the envelope's facts on it; a receipt
    with its facts; any other mail unchanged.

    The inner mail is the customer's: its sender, subject, text, attachments and
    threading headers. Its Message-ID is the one the customer's client knows: the
    envelope's `X-Riferimento-Message-ID` (providers may give the copy inside
    their own). The provider certifies the sender of a transport envelope, so
    that is the sender; an anomaly's sender is only what the mail says.
    """
    facts = pec_facts(mail)
    if facts is None:
        return mail
    if facts.receipt is not None or facts.transport is None:
        return replace(mail, pec=facts)
    part = _inner_mail(mail)
    if part is None or not part.payload.strip():
        return _unopened(mail, replace(facts, problem="no postacert.eml in the envelope"))
    inner = parse_mail(part.payload)
    defects = list(inner.defects)
    sender = inner.from_addr
    certified = facts.certified_sender
    if facts.transport == TRANSPORT and certified and certified != sender:
        if sender:
            defects.append(f"From {sender} differs from the certified sender {certified}")
        sender = certified
    elif not sender:
        sender = certified
    return replace(
        inner, pec=facts, from_addr=sender, headers=_unvouched(inner.headers),
        message_id=facts.refers_to or inner.message_id,
        subject=inner.subject or (facts.daticert.subject if facts.daticert else ""),
        date=inner.date or mail.date, defects=tuple(dict.fromkeys(defects)))


# What a receiving MTA vouches with: inside an envelope anyone may have written them.
_VOUCHING = frozenset({"authentication-results", "arc-authentication-results"})


def _unvouched(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The inner mail's headers without authentication results: our MTA checked the
    envelope, never what is inside it, so those a sender wrote must not pass for ours."""
    return tuple((k, v) for k, v in headers if k.lower() not in _VOUCHING)


def read_mail(raw: bytes) -> ParsedMail:
    """Raw bytes → the mail the pipeline works on: parsed, and taken out of its PEC
    envelope when it came in one. Never raises, as `parse_mail`."""
    mail = parse_mail(raw)
    try:
        return read_certified(mail)
    except Exception as exc:  # an envelope beyond reading is still a mail: as it came
        return replace(mail, defects=(*mail.defects, f"PEC envelope unreadable ({exc!r})"))


def _unopened(mail: ParsedMail, facts: PecFacts) -> ParsedMail:
    """An envelope without the mail inside: its own text, the certified sender, and
    none of the provider's files."""
    files = tuple(a for a in mail.attachments if a.filename.lower() not in _ENVELOPE_FILES)
    return replace(mail, pec=facts, attachments=files,
                   from_addr=facts.certified_sender or mail.from_addr,
                   defects=(*mail.defects, facts.problem or ""))


def answer_address(mail: ParsedMail, sender: str, answer_email: str | None) -> str:
    """Where the answer to `mail` from `sender` goes: the certified address it came
    from, unless the account asked for its answers at an ordinary address."""
    certified = mail.pec is not None and mail.pec.transport == TRANSPORT
    return answer_email if certified and answer_email else sender


def certified_notice(mail: ParsedMail) -> dict[str, Any] | None:
    """What the technicians' notices say of a mail that came by PEC (None: it did not)."""
    facts = mail.pec
    if facts is None or facts.transport is None:
        return None
    return {"anomaly": facts.anomaly, "certified_sender": facts.certified_sender,
            "certified_at": facts.certified_at, "provider": facts.provider}
