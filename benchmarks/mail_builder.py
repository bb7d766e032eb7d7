"""One generated mail, written the way its sender's mail client would write it.

Given the text a customer types, this adds what the client adds — its own headers and
Message-ID style, a quoted-printable, base64 or 8bit body, an HTML alternative, quoted
history below a reply, screenshots and PDFs — and serializes the result byte for byte as
such a client sends it (whole-subject encoded words, raw Windows paths in file names).
Every random choice comes from the caller's `Random`, in a fixed order: the same draws
give the same bytes.
"""

from __future__ import annotations

import re
import struct
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from random import Random

from benchmarks.corpus import HELPDESK_ADDRESS, Account, GeneratedMail
from benchmarks.vocabulary import CLIENTS, CLOSINGS, ascii_slug, italian_date

_POLICY = policy.default

Attachment = tuple[str, str, bytes]
"""File name, content type and content of one attached file."""


def finish_mail(
    rng: Random,
    msg: EmailMessage,
    account: Account,
    text: str,
    attachments: list[Attachment],
    meta: GeneratedMail,
) -> GeneratedMail:
    """Add the body and attachments to `msg`, serialize it and fill `meta.raw`."""
    client = CLIENTS[account.client]
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
        raw=serialize(msg, rng, windows_paths=windows_paths),
        attachments=tuple(name for name, _, _ in attachments),
    )


def envelope(
    account: Account, address: str, subject: str, when: datetime, message_id: str
) -> EmailMessage:
    """Return a message with the headers every generated mail has, in a client's order."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = formataddr((account.person, account.email))
    msg["To"] = formataddr(("Assistenza", address))
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    header = CLIENTS[account.client].header
    if header:
        msg[header[0]] = header[1]
    msg["Content-Language"] = "it-IT"
    return msg


def serialize(msg: EmailMessage, rng: Random, *, windows_paths: Sequence[str]) -> bytes:
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


def compose_text(rng: Random, lines: list[str], account: Account) -> str:
    """Return a wrapped plain-text body with closing and signature."""
    wrapped = [textwrap.fill(line, 72) if line else "" for line in lines]
    signature = [
        "",
        rng.choice(CLOSINGS),
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


def quoted_history(account: Account, subject: str, body: str, when: datetime) -> str:
    """Return the quoted history `account`'s client appends below a reply.

    `subject`, `body` and `when` are those of the mail being answered (its plain text).
    """
    if account.client == "outlook":
        header = (
            f"\n-----Messaggio originale-----\nDa: {account.person} "
            f"<{account.email}>\nInviato: {italian_date(when)}\n"
            f"A: Assistenza <{HELPDESK_ADDRESS}>\nOggetto: {subject}\n\n"
        )
        return header + body
    if account.client == "thunderbird":
        header = f"\nIl {when:%d/%m/%Y %H:%M}, {account.person} ha scritto:\n"
    else:
        header = (
            f"\nIl giorno {italian_date(when)} {account.person} "
            f"<{account.email}> ha scritto:\n"
        )
    return header + "".join(f"> {line}\n" if line else ">\n" for line in body.splitlines())


def pick_attachments(rng: Random, account: Account, share: float) -> list[Attachment]:
    """Return the screenshots and documents a mail carries (usually none)."""
    if rng.random() >= share:
        return []
    files = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        kind = rng.random()
        if kind < 0.4:
            files.append((f"errore_{rng.randint(1, 99)}.png", "image/png", _png(rng)))
        elif kind < 0.55:
            user = ascii_slug(account.person.split()[0])
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



def message_id_for(rng: Random, account: Account) -> str:
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
