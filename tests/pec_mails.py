"""PEC mails for tests: the public samples in tests/data/pec, and the kinds they lack
built from the technical rules (DM 2 novembre 2005, allegato tecnico).

The rules fix what a provider writes: the transport envelope's and the
receipts' headers (`X-Trasporto`, `X-Ricevuta`, `X-Riferimento-Message-ID`, the
subject prefixes, `From: "Per conto di: …" <posta-certificata@…>`), the MIME
shape (an S/MIME `multipart/signed` around a `multipart/mixed` of the
provider's text, `daticert.xml` and the original as `postacert.eml`) and the
`daticert.xml` schema. A sample re-addressed to a mail of ours keeps every byte
of the provider's but our Message-ID (and, when asked, the certified time).
"""

from __future__ import annotations

import base64
import re
import zlib
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

DATA = Path(__file__).resolve().parent / "data" / "pec"
PROVIDER = "pec.provider.it"

# The subject each receipt kind opens with (allegato tecnico, §3.1.6 – §3.1.9).
RECEIPT_SUBJECTS = {
    "accettazione": "ACCETTAZIONE: ",
    "non-accettazione": "AVVISO DI NON ACCETTAZIONE: ",
    "presa-in-carico": "PRESA IN CARICO: ",
    "avvenuta-consegna": "CONSEGNA: ",
    "errore-consegna": "AVVISO DI MANCATA CONSEGNA: ",
    "preavviso-errore-consegna": "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
    "rilevazione-virus": "PROBLEMA DI SICUREZZA: ",
}


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _daticert(
    kind: str, *, sender: str, recipients: list[str], subject: str, when: datetime,
    identifier: str, msgid: str | None, error: str = "nessuno", delivered_to: str = "",
    error_detail: str = "",
) -> bytes:
    zone = when.strftime("%z")
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<postacert tipo="{kind}" errore="{error}">',
        "  <intestazione>",
        f"    <mittente>{escape(sender)}</mittente>",
        *(f'    <destinatari tipo="certificato">{escape(r)}</destinatari>' for r in recipients),
        f"    <risposte>{escape(sender)}</risposte>",
        f"    <oggetto>{escape(subject)}</oggetto>",
        "  </intestazione>",
        "  <dati>",
        "    <gestore-emittente>Provider PEC S.p.A.</gestore-emittente>",
        f'    <data zona="{zone}">',
        f"      <giorno>{when:%d/%m/%Y}</giorno>",
        f"      <ora>{when:%H:%M:%S}</ora>",
        "    </data>",
        f"    <identificativo>{escape(identifier)}</identificativo>",
        *([f"    <msgid>&lt;{escape(msgid)}&gt;</msgid>"] if msgid else []),
        *([f"    <consegna>{escape(delivered_to)}</consegna>"] if delivered_to else []),
        *([f"    <errore-esteso>{escape(error_detail)}</errore-esteso>"] if error_detail else []),
        "  </dati>",
        "</postacert>",
    ]
    return ("\n".join(lines) + "\n").encode()


def _b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def _signed(head: list[str], text: str, daticert: bytes | None, original: bytes | None,
            stamp: str) -> bytes:
    """The provider's S/MIME shape around its text, the daticert and the original."""
    mixed, alternative, signed = f"----------=_{stamp}-1", f"----------=_{stamp}-2", \
        f"----SIGNED{stamp}"
    parts = [
        f"--{mixed}",
        f'Content-Type: multipart/alternative; boundary="{alternative}"',
        "",
        f"--{alternative}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Disposition: inline",
        "Content-Transfer-Encoding: 8bit",
        "",
        text,
        f"--{alternative}",
        'Content-Type: text/html; charset="utf-8"',
        "Content-Disposition: inline",
        "Content-Transfer-Encoding: 8bit",
        "",
        "<html><body><p>" + text.replace("\n", "<br>\n") + "</p></body></html>",
        f"--{alternative}--",
        "",
    ]
    if daticert is not None:
        parts += [f"--{mixed}", 'Content-Type: application/xml; name="daticert.xml"',
                  'Content-Disposition: inline; filename="daticert.xml"',
                  "Content-Transfer-Encoding: base64", "", _b64(daticert), ""]
    body = "\r\n".join(parts).encode()
    if original is not None:
        body += (f"--{mixed}\r\nContent-Type: message/rfc822; name=\"postacert.eml\"\r\n"
                 "Content-Disposition: inline; filename=\"postacert.eml\"\r\n"
                 "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + original + b"\r\n"
    body += f"--{mixed}--\r\n".encode()
    outer = "\r\n".join([
        *head, "MIME-Version: 1.0",
        'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        f'micalg="sha-256"; boundary="{signed}"', "", "This is an S/MIME signed message", "",
        f"--{signed}", f'Content-Type: multipart/mixed; boundary="{mixed}"', "", ""]).encode()
    signature = "\r\n".join([
        "", f"--{signed}", 'Content-Type: application/pkcs7-signature; name="smime.p7s"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="smime.p7s"',
        "", _b64(b"0\x82 not a real signature"), f"--{signed}--", ""]).encode()
    return outer + body + signature


def envelope(
    original: bytes, *, sender: str, to: list[str], subject: str, message_id: str,
    when: datetime, anomaly: bool = False,
) -> bytes:
    """A transport envelope (`anomaly=True`: an anomaly envelope) around `original`,
    as the recipient's provider delivers it."""
    identifier = f"opec.{when:%Y%m%d%H%M%S}.{zlib.crc32(message_id.encode())}@{PROVIDER}"
    head = [
        f"Received: from smtp.{PROVIDER} by mx.{PROVIDER}; {format_datetime(when)}",
        f"Date: {format_datetime(when)}",
        f"X-Trasporto: {'errore' if anomaly else 'posta-certificata'}",
        f"X-Riferimento-Message-ID: <{message_id}>",
        f'From: "Per conto di: {sender}" <posta-certificata@{PROVIDER}>',
        f"Reply-To: {sender}",
        f"To: {', '.join(to)}",
        f"Subject: {'ANOMALIA MESSAGGIO' if anomaly else 'POSTA CERTIFICATA'}: {subject}",
        f"Message-ID: <{identifier}>",
    ]
    if anomaly:
        text = (f"Anomalia nel messaggio\nIl giorno {when:%d/%m/%Y} alle ore {when:%H:%M:%S} "
                f"({when:%z}) è stato ricevuto\nil messaggio \"{subject}\" proveniente da "
                f"\"{sender}\"\nindirizzato a:\n{chr(10).join(to)}\nQuesti dati non sono stati "
                "certificati per il seguente errore:\nmessaggio non di posta certificata\n"
                "Il messaggio originale è incluso in allegato.\n")
        return _signed(head, text, None, original, str(int(when.timestamp())))
    daticert = _daticert("posta-certificata", sender=sender, recipients=to, subject=subject,
                         when=when, identifier=identifier, msgid=message_id)
    text = (f"Messaggio di posta certificata\nIl giorno {when:%d/%m/%Y} alle ore "
            f"{when:%H:%M:%S} ({when:%z}) il messaggio\n\"{subject}\" è stato inviato da "
            f"\"{sender}\"\nindirizzato a:\n{chr(10).join(to)}\nIl messaggio originale è "
            f"incluso in allegato.\nIdentificativo messaggio: {identifier}\n")
    return _signed(head, text, daticert, original, str(int(when.timestamp())))


def receipt(
    kind: str, *, refers_to: str, to: str, recipient: str, subject: str, when: datetime,
    error: str = "nessuno", error_detail: str = "", original: bytes | None = None,
) -> bytes:
    """A receipt of `kind` about the mail `refers_to` that `to` sent to `recipient`."""
    identifier = f"opec.{when:%Y%m%d%H%M%S}.{kind}@{PROVIDER}"
    head = [
        f"Date: {format_datetime(when)}",
        f"X-Ricevuta: {kind}",
        f"X-Riferimento-Message-ID: <{refers_to}>",
        *(["X-VerificaSicurezza: errore"] if error == "virus" else []),
        f"From: posta-certificata@{PROVIDER}",
        f"To: {to}",
        f"Subject: {RECEIPT_SUBJECTS[kind]}{subject}",
        f"Message-ID: <{identifier}>",
    ]
    delivered_to = recipient if kind in ("avvenuta-consegna", "errore-consegna",
                                         "preavviso-errore-consegna") else ""
    daticert = _daticert(kind, sender=to, recipients=[recipient], subject=subject, when=when,
                         identifier=identifier, msgid=refers_to, error=error,
                         delivered_to=delivered_to, error_detail=error_detail)
    text = (f"Ricevuta ({kind})\nIl giorno {when:%d/%m/%Y} alle ore {when:%H:%M:%S} "
            f"({when:%z}) il messaggio\n\"{subject}\" inviato da \"{to}\" e indirizzato a "
            f"\"{recipient}\".\nIdentificativo messaggio: {identifier}\n")
    return _signed(head, text, daticert, original, str(int(when.timestamp())))


_DATICERT_BLOCK = re.compile(
    rb'(filename="daticert\.xml"\r?\n(?:[^\r\n]+\r?\n)*\r?\n)([A-Za-z0-9+/=\r\n]+?)(\r?\n\r?\n)')


def readdressed(raw: bytes, message_id: str, when: datetime | None = None) -> bytes:
    """A real receipt as if it were about our mail `message_id` (and certified at
    `when`): its `X-Riferimento-Message-ID` and the daticert's `msgid` (and `data`)
    rewritten, every other byte as the provider wrote it."""
    raw = re.sub(rb"(?im)^(X-Riferimento-Message-ID:)[^\r\n]*", lambda m: m[1] + b" <"
                 + message_id.encode() + b">", raw, count=1)

    def rewrite(found: re.Match[bytes]) -> bytes:
        xml = base64.b64decode(found[2])
        xml = re.sub(rb"<msgid>.*?</msgid>", b"<msgid>&lt;" + message_id.encode()
                     + b"&gt;</msgid>", xml, flags=re.S)
        if when is not None:
            xml = re.sub(rb'<data zona="[^"]*">', f'<data zona="{when:%z}">'.encode(), xml)
            xml = re.sub(rb"<giorno>.*?</giorno>", f"<giorno>{when:%d/%m/%Y}</giorno>".encode(),
                         xml)
            xml = re.sub(rb"<ora>.*?</ora>", f"<ora>{when:%H:%M:%S}</ora>".encode(), xml)
        return found[1] + base64.b64encode(xml) + found[3]

    changed, count = _DATICERT_BLOCK.subn(rewrite, raw, count=1)
    assert count == 1, "no daticert.xml in the sample"
    return changed
