"""Composing outbound mail: headers, threading, tokens, templates, encodings."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

import pytest

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.errors import PermanentError
from mailgateway.outbound.compose import (
    ComposedMail,
    capped_references,
    compose,
    compose_queued,
    settings_context,
    tagged_subject,
)
from mailgateway.outbound.intent import MailIntent, MailKind, outbox_document
from mailgateway.outbound.render import forget_templates
from mailgateway.pipeline.parse import parse_mail
from mailgateway.reply_token import TokenPurpose, read_reply_address

NUMBER = "2026-000123"


def _context(settings: Settings, clock: FixedClock, **extra: Any) -> dict[str, Any]:
    return (
        settings_context(settings)
        | {
            "number": NUMBER,
            "tag": f"[Ticket#{NUMBER}]",
            "subject": "Errore 98,20 su MOCO: perché?",
            "status": "APERTO",
            "product": "Multi / Lynfa Studio (Cod. 2)",
            "request_type": "tecnica",
            "impact": "difficolta",
            "group": "tecnica",
            "account": "Studio Rossi",
            "account_email": "rossi@studiorossi.it",
            "person": "Niccolò Bianchi",
            "person_email": "niccolo@studiorossi.it",
            "customer": "Niccolò Bianchi",
            "customer_email": "niccolo@studiorossi.it",
            "created_at": clock.now(),
            "due_at": clock.now(),
            "answered_at": clock.now(),
            "body": "Quando vado su MPRI esce una maschera di errore cobol.",
            "refused_attachments": ["schermata errore.png"],
        }
        | extra
    )


def _intent(
    kind: MailKind = MailKind.ACKNOWLEDGMENT, language: str = "it", **fields: Any
) -> MailIntent:
    values: dict[str, Any] = {
        "to": ("niccolo@studiorossi.it",),
        "in_reply_to": "CAF1234@mail.studiorossi.it",
        "references": ("CAF1234@mail.studiorossi.it",),
    } | fields
    return MailIntent(kind=kind, language=language, **values)


def _reparse(mail: ComposedMail) -> EmailMessage:
    return message_from_bytes(mail.raw, policy=policy.default)


def _text(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return cast(str, part.get_content()).replace("\r\n", "\n")


def test_acknowledgment_headers(settings: Settings, clock: FixedClock) -> None:
    message = _reparse(
        compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)
    )

    assert message["Subject"] == f"[Ticket#{NUMBER}] Errore 98,20 su MOCO: perché?"
    assert re.fullmatch(r"<mg\.[0-9a-f]{32}@example\.com>", message["Message-ID"])
    assert message["In-Reply-To"] == "<CAF1234@mail.studiorossi.it>"
    assert message["References"] == "<CAF1234@mail.studiorossi.it>"
    assert message["X-Mailgateway-Loop"] == "assistenza@example.com"
    assert message["X-Mailgateway-Ticket"] == NUMBER
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert parsedate_to_datetime(message["Date"]) == clock.now()
    assert message["From"].addresses[0].addr_spec == "assistenza@example.com"
    assert message["From"].addresses[0].display_name == "Assistenza AM"
    reply_to = message["Reply-To"].addresses[0].addr_spec
    token = read_reply_address(reply_to, "assistenza@example.com", "test-secret")
    assert token is not None
    assert (token.purpose, token.ticket_number) == (TokenPurpose.CUSTOMER, NUMBER)


def test_mail_to_technicians_carries_a_staff_token_and_is_auto_generated(
    settings: Settings, clock: FixedClock
) -> None:
    intent = _intent(MailKind.NEW_TICKET_NOTICE, to=("tecnici@example.com",))
    message = _reparse(
        compose(settings, clock, intent, _context(settings, clock), ticket_number=NUMBER)
    )

    token = read_reply_address(
        message["Reply-To"].addresses[0].addr_spec, "assistenza@example.com", "test-secret"
    )
    assert token is not None and token.purpose is TokenPurpose.STAFF
    # A notice is written by no person (RFC 3834), so robots do not answer it either.
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Mailgateway-Loop"] == "assistenza@example.com"
    assert message["Subject"] == f"[Ticket#{NUMBER}] Nuovo ticket: Errore 98,20 su MOCO: perché?"
    assert "#prendi" in _text(message)


def test_scheduled_mails_are_auto_generated(settings: Settings, clock: FixedClock) -> None:
    message = _reparse(compose(
        settings, clock, _intent(MailKind.REMINDER), _context(settings, clock), ticket_number=NUMBER
    ))
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Auto-Response-Suppress"] == "All"


def test_ticketless_mail_has_no_tag_and_no_token(settings: Settings, clock: FixedClock) -> None:
    intent = _intent(MailKind.UNKNOWN_SENDER, to=("ignoto@altrove.it",))
    context = settings_context(settings) | {"sender": "ignoto@altrove.it"}
    message = _reparse(compose(settings, clock, intent, context, ticket_number=None))

    assert message["Subject"] == "Indirizzo non registrato presso Assistenza AM"
    assert message["Reply-To"] is None
    assert message["Auto-Submitted"] == "auto-replied"
    assert "non risulta registrato" in _text(message)


def test_references_keep_the_first_and_the_last_ten() -> None:
    references = [f"id{n}@example.org" for n in range(30)]
    chain = capped_references("id30@example.org", references)
    assert chain == ["id0@example.org", *[f"id{n}@example.org" for n in range(21, 31)]]
    assert capped_references("<a@x>", ["<a@x>", " b@x "]) == ["b@x", "a@x"]


def test_references_drop_ids_that_would_break_threading() -> None:
    unusable = ["", "two words@x", "perché@x", "x" * 901 + "@x", "a<b@x", "line\nbreak@x"]
    assert capped_references("c@x", ["a@x", *unusable, "b@x"]) == ["a@x", "b@x", "c@x"]
    assert capped_references(None, ["a@x"]) == ["a@x"]


def test_long_message_ids_are_written_whole_never_encoded(
    settings: Settings, clock: FixedClock
) -> None:
    ids = [f"{'x' * 150}{n}@mail.example.org" for n in range(5)]
    intent = _intent(in_reply_to=ids[-1], references=tuple(ids[:-1]))
    raw = compose(settings, clock, intent, _context(settings, clock), ticket_number=NUMBER).raw
    head = raw.split(b"\r\n\r\n", 1)[0]

    # Clients read ids as written: each must appear whole, on one line.
    for bare in ids:
        assert f"<{bare}>".encode() in head
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    parsed = parse_mail(raw)
    assert parsed.references == tuple(ids)
    assert parsed.in_reply_to == (ids[-1],)


def test_tag_is_not_repeated() -> None:
    from mailgateway.config import settings_from_mapping

    settings = settings_from_mapping({})
    assert tagged_subject(settings, "Re: [Ticket#1] x", "1") == "Re: [Ticket#1] x"
    assert tagged_subject(settings, " a\n b ", "1") == "[Ticket#1] a b"


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("it", "Riceverà una risposta entro 24 ore"),
        ("en", "You will receive an answer within 24 hours"),
    ],
)
def test_accents_headers_and_line_lengths(
    settings: Settings, clock: FixedClock, language: str, expected: str
) -> None:
    subject = "Perché la città è così lenta? Ça va – “citazioni” " + "à" * 80
    body = "Lunga riga senza a capo: " + "però " * 1200
    context = _context(
        settings, clock, subject=subject, body=body, refused_attachments=["fattura n° 3 è.pdf"]
    )
    raw = compose(settings, clock, _intent(language=language), context, ticket_number=NUMBER).raw

    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == f"[Ticket#{NUMBER}] {subject}"
    assert message["Content-Language"] == language
    text, html = _text(message), _text(message, "html")
    assert expected in text and expected in html
    assert "fattura n° 3 è.pdf" in text and "fattura n° 3 è.pdf" in html
    assert "però però" in text


def test_html_is_escaped_and_text_is_not(settings: Settings, clock: FixedClock) -> None:
    context = _context(
        settings, clock, body="<script>alert('x')</script> & <b>", refused_attachments=["<img>.png"]
    )
    message = _reparse(compose(settings, clock, _intent(), context, ticket_number=NUMBER))
    html = _text(message, "html")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;img&gt;.png" in html
    assert "<script>alert('x')</script> & <b>" in _text(message)


@pytest.mark.parametrize("language", ["it", "en"])
@pytest.mark.parametrize("kind", list(MailKind))
def test_every_kind_renders(
    settings: Settings, clock: FixedClock, kind: MailKind, language: str
) -> None:
    context = _context(settings, clock, author="Luca Verdi", reason="rule x", attachments=[])
    message = _reparse(
        compose(settings, clock, _intent(kind, language), context, ticket_number=NUMBER)
    )
    text, html = _text(message), _text(message, "html")
    assert message["Subject"].startswith(f"[Ticket#{NUMBER}] ")
    if kind not in {MailKind.ANSWER, MailKind.UNKNOWN_SENDER, MailKind.REJECTED,
                    MailKind.STATUS_REPORT}:  # the STATO page is about no one ticket
        assert NUMBER in text
    assert f'<html lang="{language}">' in html
    for rendered in (text, html, message["Subject"]):
        assert "{{" not in rendered and "{%" not in rendered
        assert "None" not in rendered


def test_admin_template_overrides_the_default(settings: Settings, clock: FixedClock) -> None:
    admin = Path(settings.rules.path) / "templates" / "it"
    admin.mkdir(parents=True)
    (admin / "acknowledgment.txt.j2").write_text(
        "Ticket {{ number }} aperto, {{ customer }}.\n", encoding="utf-8"
    )
    message = _reparse(
        compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)
    )
    assert _text(message) == f"Ticket {NUMBER} aperto, Niccolò Bianchi.\n"
    assert "la ringraziamo" in _text(message, "html")  # the HTML default still applies


def test_an_override_edited_unseen_is_read_afresh_after_sighup(
    settings: Settings, clock: FixedClock
) -> None:
    """An edit the directory's signature cannot see (same size, its time put back, as
    a copy tool or a second within one mtime tick does) shows after a reload."""
    admin = Path(settings.rules.path) / "templates" / "it"
    admin.mkdir(parents=True)
    template = admin / "acknowledgment.txt.j2"

    def text() -> str:
        return _text(_reparse(compose(settings, clock, _intent(), _context(settings, clock),
                                      ticket_number=NUMBER)))

    template.write_text("Ticket {{ number }} aperto.\n", encoding="utf-8")
    assert text() == f"Ticket {NUMBER} aperto.\n"
    stamp = template.stat()
    template.write_text("Ticket {{ number }} APERTO.\n", encoding="utf-8")
    os.utime(template, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert text() == f"Ticket {NUMBER} aperto.\n"  # unseen: the cached one
    forget_templates()  # what SIGHUP does
    assert text() == f"Ticket {NUMBER} APERTO.\n"


def test_broken_admin_template_falls_back_to_the_default(
    settings: Settings, clock: FixedClock
) -> None:
    admin = Path(settings.rules.path) / "templates" / "it"
    admin.mkdir(parents=True)
    (admin / "acknowledgment.txt.j2").write_text("{% if %}broken", encoding="utf-8")
    message = _reparse(
        compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)
    )
    assert "la ringraziamo per averci contattato" in _text(message)


def test_unknown_language_uses_the_desk_language(settings: Settings, clock: FixedClock) -> None:
    message = _reparse(
        compose(
            settings, clock, _intent(language="de"), _context(settings, clock), ticket_number=NUMBER
        )
    )
    assert message["Content-Language"] == "it"
    assert "Gentile" in _text(message)


def _store(settings: Settings, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = settings.data_dir / "attachments" / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def test_answer_carries_the_stored_attachments(settings: Settings, clock: FixedClock) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    digest = _store(settings, pdf)
    attachments = [
        {"filename": "procedura però.pdf", "content_type": "application/pdf", "sha256": digest},
        {
            "filename": "inoltro.eml",
            "content_type": "message/rfc822",
            "sha256": _store(settings, b"From: a@b\r\n\r\nx\r\n"),
        },
    ]
    context = _context(
        settings, clock, body="Ecco la procedura.", author="Luca Verdi", attachments=attachments
    )
    raw = compose(settings, clock, _intent(MailKind.ANSWER), context, ticket_number=NUMBER).raw
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = message_from_bytes(raw, policy=policy.default)
    files = list(message.iter_attachments())
    assert [f.get_filename() for f in files] == ["procedura però.pdf", "inoltro.eml"]
    assert files[0].get_content_type() == "application/pdf"
    assert files[0].get_content() == pdf
    assert files[1].get_content_type() == "application/octet-stream"
    assert message["Auto-Submitted"] is None
    assert "Allegati: procedura però.pdf, inoltro.eml" in _text(message)


def test_a_missing_attachment_file_is_an_error(settings: Settings, clock: FixedClock) -> None:
    context = _context(
        settings,
        clock,
        body="x",
        attachments=[{"filename": "a.pdf", "content_type": "application/pdf", "sha256": "ab" * 32}],
    )
    with pytest.raises(PermanentError, match=r"a\.pdf"):
        compose(settings, clock, _intent(MailKind.ANSWER), context, ticket_number=NUMBER)


def test_date_follows_the_clock(settings: Settings, clock: FixedClock) -> None:
    clock.advance(days=3, hours=2)
    mail = compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)
    message = _reparse(mail)
    assert parsedate_to_datetime(str(message["Date"])) == clock.now()
    assert replace(settings).helpdesk.domains[0] in str(message["Message-ID"])
    assert message["Message-ID"] == f"<{mail.message_id}>"


def test_texts_are_utf8_alternatives_and_files_sit_beside_them(
    settings: Settings, clock: FixedClock
) -> None:
    plain = _reparse(
        compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)
    )
    assert plain.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in plain.iter_parts()] == ["text/plain", "text/html"]
    assert {p.get_content_charset() for p in plain.iter_parts()} == {"utf-8"}

    attachments = [
        {"filename": "a.pdf", "content_type": "application/pdf", "sha256": _store(settings, b"a")},
        {"filename": "b", "content_type": "multipart/mixed", "sha256": _store(settings, b"b")},
    ]
    context = _context(settings, clock, author="Luca Verdi", attachments=attachments)
    mixed = _reparse(
        compose(settings, clock, _intent(MailKind.ANSWER), context, ticket_number=NUMBER)
    )
    assert mixed.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in mixed.iter_parts()] == [
        "multipart/alternative", "application/pdf", "application/octet-stream",
    ]
    assert [p["Content-Transfer-Encoding"] for p in mixed.iter_attachments()] == ["base64"] * 2
    assert [p.get_content() for p in mixed.iter_attachments()] == [b"a", b"b"]


def test_the_gateway_reads_back_what_was_written(settings: Settings, clock: FixedClock) -> None:
    name = "Ricevuta n° 7 — perché è così lunga la descrizione di questo file.pdf"
    attachments = [
        {"filename": name, "content_type": "application/pdf", "sha256": _store(settings, b"%PDF")}
    ]
    context = _context(
        settings, clock, author="Luca Verdi", attachments=attachments,
        body="Però la città è «bella».\nSeconda riga.",
    )
    intent = _intent(
        MailKind.ANSWER,
        to=("Niccolò Bianchi <niccolo@studiorossi.it>",),
        cc=("rossi@studiorossi.it", '"Ufficio, Amministrazione" <amm@studiorossi.it>'),
    )
    raw = compose(settings, clock, intent, context, ticket_number=NUMBER).raw
    parsed = parse_mail(raw)

    assert parsed.subject == f"[Ticket#{NUMBER}] Errore 98,20 su MOCO: perché?"
    assert (parsed.from_name, parsed.from_addr) == ("Assistenza AM", "assistenza@example.com")
    assert parsed.to == ("niccolo@studiorossi.it",)
    assert parsed.cc == ("rossi@studiorossi.it", "amm@studiorossi.it")
    assert "Però la città è «bella»." in parsed.text
    assert parsed.html is not None and "Però la città è «bella»." in parsed.html
    assert [a.filename for a in parsed.attachments] == [name]
    assert parsed.date == clock.now()


def test_lines_end_with_crlf(settings: Settings, clock: FixedClock) -> None:
    context = _context(settings, clock, body="uno\ndue\r\ntre\rquattro")
    raw = compose(settings, clock, _intent(), context, ticket_number=NUMBER).raw
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")


@pytest.mark.parametrize(
    "helpdesk",
    [
        {"name": "Assistenza AM\r\nBcc: spia@altrove.it"},
        {"name": "Assistenza AM\nBcc: spia@altrove.it"},
        {"address": "assistenza@example.com\nBcc: spia@altrove.it"},
    ],
)
def test_a_line_break_in_the_helpdesk_name_or_address_is_refused(
    settings: Settings, clock: FixedClock, helpdesk: dict[str, str]
) -> None:
    settings = replace(settings, helpdesk=replace(settings.helpdesk, **helpdesk))
    with pytest.raises(ValueError, match="line break"):
        compose(settings, clock, _intent(), _context(settings, clock), ticket_number=NUMBER)


@pytest.mark.parametrize(
    "recipients",
    [
        {"to": ("niccolo@studiorossi.it\r\nBcc: spia@altrove.it",)},
        {"to": ("Niccolò\n <niccolo@studiorossi.it>",)},
        {"cc": ("rossi@studiorossi.it\nBcc: spia@altrove.it",)},
    ],
)
def test_a_line_break_in_a_recipient_is_refused(
    settings: Settings, clock: FixedClock, recipients: dict[str, tuple[str, ...]]
) -> None:
    intent = _intent(**recipients)
    with pytest.raises(ValueError, match="line break"):
        compose(settings, clock, intent, _context(settings, clock), ticket_number=NUMBER)


def test_a_domain_that_is_not_ascii_goes_out_in_idna(settings: Settings, clock: FixedClock) -> None:
    intent = _intent(to=("Niccolò <niccolo@città.it>",), cc=("ufficio@società.it",))
    raw = compose(settings, clock, intent, _context(settings, clock), ticket_number=NUMBER).raw
    parsed = parse_mail(raw)
    assert parsed.to == ("niccolo@xn--citt-3na.it",)
    assert parsed.cc == ("ufficio@xn--societ-nta.it",)


@pytest.mark.parametrize(
    "name",
    [
        "Assistenza " + "A" * 2000,
        "Assistenza clienti, " + "sede di Forlì e Cesena " * 60,
        "Assistenza clienti, " + "sede di Forli e Cesena " * 60,
        '"Assistenza" ' * 200,
    ],
    ids=["long word", "long with accents", "long to quote", "quotes"],
)
def test_long_names_and_words_never_make_a_line_over_998_octets(
    settings: Settings, clock: FixedClock, name: str
) -> None:
    settings = replace(settings, helpdesk=replace(settings.helpdesk, name=name))
    context = _context(
        settings, clock, subject="Errore " + "x" * 2000 + " perché " + "è" * 2000,
        body="y" * 2000 + " " + "ù" * 2000, author="Luca Verdi", attachments=[],
    )
    intent = _intent(MailKind.ANSWER, to=(f"Niccolò {'B' * 2000} <niccolo@studiorossi.it>",))
    raw = compose(settings, clock, intent, context, ticket_number=NUMBER).raw

    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = parse_mail(raw)
    assert parsed.from_name == " ".join(name.split())
    assert parsed.from_addr == "assistenza@example.com"
    assert parsed.to == ("niccolo@studiorossi.it",)
    assert parsed.subject == f"[Ticket#{NUMBER}] " + context["subject"]
    assert "y" * 2000 in parsed.text and "ù" * 2000 in parsed.text


def test_a_queued_mail_is_composed_with_its_message_id(
    settings: Settings, clock: FixedClock
) -> None:
    context = {"subject": "Errore 98,20 su MOCO", "number": NUMBER, "customer": "Niccolò"}
    document = outbox_document(_intent(context=context), NUMBER)
    raw = compose_queued(settings, clock, document, "mg.queued@example.com")

    parsed = parse_mail(raw)
    assert parsed.message_id == "mg.queued@example.com"
    assert parsed.subject == f"[Ticket#{NUMBER}] Errore 98,20 su MOCO"
    assert "Assistenza AM" in parsed.text  # the desk's name, from `settings_context`
