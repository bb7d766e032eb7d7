"""Mail as real senders' software writes it, through the whole pipeline: spam flagged
upstream, junk sender addresses, threading by References, signed and encrypted mail."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from mailgateway.db.models import Account, InboxMail, OutboxMail, Ticket
from mailgateway.directory import add_account
from mailgateway.outbound.compose import compose_queued
from mailgateway.pipeline.mailbox import recovered_mailbox, valid_mailbox
from mailgateway.pipeline.parse import parse_mail
from mailgateway.pipeline.process import sender_address
from mailgateway.service import Gateway
from mailgateway.views import list_inbox, show_ticket
from tests.corpus import corpus_file, corpus_mails
from tests.mails import PERSON, build_mail, deliver, register_desk

needs_corpus = pytest.mark.skipif(not corpus_mails(), reason="shared corpus not present")


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    return gateway


def count(gateway: Gateway, model: type[Any]) -> int:
    with gateway.sessions() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def outbox(gateway: Gateway, kind: str) -> list[OutboxMail]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                    .where(OutboxMail.kind == kind).order_by(OutboxMail.id)))


def inbox(gateway: Gateway, status: str | None = None) -> list[dict[str, Any]]:
    with gateway.sessions() as session:
        return list_inbox(session, status)


def with_from(value: bytes, raw: bytes) -> bytes:
    """`raw` with its From line replaced by `value` written as is (junk included)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [b"From: " + value if line.startswith(b"From:") else line
             for line in head.split(b"\r\n")]
    return b"\r\n".join(line for line in lines if line != b"From: ") + b"\r\n\r\n" + body


# --- spam flagged upstream ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-Spam-Flag": "YES"}, {"X-Spam-Status": "Yes, score=12.3 required=5.0 tests=BAYES_99"},
     {"Subject": "[SPAM] Offerta imperdibile"}],
    ids=["flag", "status", "subject tag"],
)
def test_spam_flagged_upstream_opens_nothing_and_is_listed_as_spam(
    desk: Gateway, headers: dict[str, str],
) -> None:
    subject = headers.pop("Subject", "Offerta imperdibile")
    assert deliver(desk, build_mail(subject=subject, headers=headers)) == "spam"
    assert (count(desk, Ticket), count(desk, OutboxMail)) == (0, 0)
    [row] = inbox(desk, "spam")
    assert row["reason"].startswith("spam: ")


def test_spam_status_no_is_not_spam(desk: Gateway) -> None:
    raw = build_mail(headers={"X-Spam-Flag": "NO", "X-Spam-Status": "No, score=-1.9"})
    assert deliver(desk, raw) == "processed"


def test_subject_tag_is_configurable(gateway: Gateway) -> None:
    settings = gateway.settings
    tagged = replace(settings, helpdesk=replace(settings.helpdesk,
                                                spam_subject_tags=("{Spam?}",)))
    other = Gateway(tagged, gateway.clock)
    try:
        register_desk(other)
        assert deliver(other, build_mail(subject="{Spam?} Vinci subito")) == "spam"
        assert deliver(other, build_mail(subject="[SPAM] Non più un tag")) == "processed"
    finally:
        other.close()


# --- junk sender addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "valid"),
    [("test test@example.com", False), ("@powerupdev.com", False), ("a@b", False),
     ("mario@localhost", False), ("anna..b@studio.it", False), ("anna@studiorossi.it", True),
     ("niccolò@città.it", True), ("x" * 250 + "@studio.it", False),
     ('"#FAX#*49000783135#"@otobo.fax', True), ('"a b"@studio.it', False)],
)
def test_valid_mailbox(address: str, valid: bool) -> None:
    assert valid_mailbox(address) is valid


@pytest.mark.parametrize(
    ("value", "address"),
    [("John <@relay.example,@mx.example:john @ example . com>", "john@example.com"),
     ("john@example.com (John Doe)", "john@example.com"),
     ('"Doe, John" <John.Doe@Example.com>', "john.doe@example.com"),
     ("test test@example.com", ""), ("<>", ""), ("", "")],
)
def test_obsolete_syntax_is_recovered(value: str, address: str) -> None:
    assert recovered_mailbox(value) == address


@pytest.mark.parametrize("junk", [b"test test@example.com", b"@powerupdev.com",
                                  b"Form Mailer <@powerupdev.com>"])
def test_junk_sender_is_quarantined_and_never_an_account(desk: Gateway, junk: bytes) -> None:
    accounts = count(desk, Account)
    raw = with_from(junk, build_mail(subject="Richiesta dal modulo"))
    assert deliver(desk, raw) == "quarantined"
    [row] = inbox(desk, "quarantined")
    assert row["reason"].startswith("no valid sender address")
    assert (count(desk, Account), count(desk, OutboxMail), count(desk, Ticket)) == (accounts, 0, 0)


def test_junk_from_with_a_valid_reply_to_is_answered_there(desk: Gateway) -> None:
    raw = with_from(b"test test@example.com", build_mail(headers={"Reply-To": PERSON}))
    assert deliver(desk, raw) == "processed"
    with desk.sessions() as session:
        assert show_ticket(session, "[Ticket#{number}]", "2026-000001")["person"] == PERSON


@pytest.mark.parametrize("header", ["Return-Path", "Sender"])
def test_empty_from_uses_return_path_or_sender(desk: Gateway, header: str) -> None:
    raw = with_from(b"", build_mail(headers={header: f"<{PERSON}>"}))
    assert parse_mail(raw).header("From") is None
    assert deliver(desk, raw) == "processed"


def test_obsolete_from_syntax_names_the_sender() -> None:
    raw = with_from(b"Anna Bianchi <@relay.studiorossi.it:anna @ studiorossi . it>", build_mail())
    assert sender_address(parse_mail(raw)) == PERSON


# --- threading by headers -----------------------------------------------------------------


def test_references_join_the_senders_ticket_not_a_strangers(desk: Gateway) -> None:
    """Anna's reply answers a stranger's mail (In-Reply-To: the stranger's ticket) and
    also references her own first mail: it joins her ticket, not the stranger's."""
    assert deliver(desk, build_mail(message_id="anna-first@client.test")) == "processed"
    with desk.sessions.begin() as session:  # another customer of the desk
        add_account(session, desk.clock, name="Studio Verdi", email="verdi@studioverdi.it",
                    vat="09876543210")
    assert deliver(desk, build_mail(sender="verdi@studioverdi.it", subject="Altro problema",
                                    message_id="verdi-first@client.test")) == "processed"
    reply = build_mail(subject="Re: Altro problema", body="Anche da noi.",
                       in_reply_to="verdi-first@client.test",
                       references=["anna-first@client.test", "verdi-first@client.test"])
    assert deliver(desk, reply) == "processed"
    [row] = [r for r in inbox(desk) if r["subject"] == "Re: Altro problema"]
    assert row["ticket"] == "2026-000001"
    assert "References" in row["reason"]


def test_in_reply_to_comes_first(desk: Gateway) -> None:
    deliver(desk, build_mail(message_id="one@client.test", subject="Primo"))
    deliver(desk, build_mail(message_id="two@client.test", subject="Secondo"))
    reply = build_mail(subject="Re: ?", body="Risposta.", in_reply_to="two@client.test",
                       references=["one@client.test"])
    deliver(desk, reply)
    [row] = [r for r in inbox(desk) if r["subject"] == "Re: ?"]
    assert row["ticket"] == "2026-000002"


# --- signed and encrypted mail ------------------------------------------------------------


_PGP_ENCRYPTED = (
    'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="e"\r\n'
    "\r\n--e\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
    '--e\r\nContent-Type: application/octet-stream; name="encrypted.asc"\r\n\r\n'
    "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA0xyz\r\n-----END PGP MESSAGE-----\r\n--e--\r\n"
)


def _encrypted_mail() -> bytes:
    head = (f"From: Anna Bianchi <{PERSON}>\r\nTo: assistenza@example.com\r\n"
            "Subject: Dati riservati\r\nMessage-ID: <sealed@client.test>\r\n"
            "Date: Mon, 02 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    return (head + _PGP_ENCRYPTED).encode()


def rendered(gateway: Gateway, row: OutboxMail) -> str:
    """The text of a queued mail as the dispatcher would send it."""
    assert row.intent is not None
    raw = compose_queued(gateway.settings, gateway.clock, row.intent, row.message_id)
    return parse_mail(raw).text


def test_encrypted_mail_opens_a_ticket_and_says_it_cannot_be_read(desk: Gateway) -> None:
    assert deliver(desk, _encrypted_mail()) == "processed"
    [ack] = outbox(desk, "acknowledgment")
    text = rendered(desk, ack)
    assert ("Il suo messaggio è arrivato cifrato (PGP) e il nostro servizio di assistenza "
            "non può leggere la posta cifrata") in text
    assert "senza cifratura" in text
    assert "encrypted.asc" not in text  # the sealed text is not a refused file
    [notice] = outbox(desk, "new_ticket_notice")
    assert "Attenzione: il messaggio è cifrato (PGP)" in rendered(desk, notice)
    with desk.sessions() as session:
        data = show_ticket(session, "[Ticket#{number}]", "2026-000001")
    assert data["messages"][0]["refused_attachments"] == []


def test_encrypted_reply_is_told_to_the_customer_and_the_technicians(desk: Gateway) -> None:
    assert deliver(desk, build_mail(message_id="first@client.test")) == "processed"
    reply = _encrypted_mail().replace(b"Subject: Dati riservati",
                                      b"Subject: Re: [Ticket#2026-000001] Dati riservati")
    assert deliver(desk, reply) == "processed"
    [notice] = outbox(desk, "customer_reply_notice")
    assert "Attenzione: il messaggio è cifrato (PGP)" in rendered(desk, notice)
    [told] = outbox(desk, "encrypted_mail")
    assert told.recipients == [PERSON]
    text = rendered(desk, told)
    assert ("ma è arrivato cifrato (PGP) e il nostro servizio di assistenza non può leggere "
            "la posta cifrata") in text
    assert "scrivendo di nuovo il messaggio senza cifratura" in text


@needs_corpus
def test_signed_mail_lists_no_signature_as_refused(desk: Gateway) -> None:
    raw = corpus_file("zammad/test/data/mail/mail040.box").read_bytes()
    raw = re.sub(rb"(?m)^From: [^\r\n]*", f"From: Anna Bianchi <{PERSON}>".encode(), raw, count=1)
    assert deliver(desk, raw) == "processed", inbox(desk)
    with desk.sessions() as session:
        [message] = show_ticket(session, "[Ticket#{number}]", "2026-000001")["messages"]
    assert message["refused_attachments"] == []
    assert message["body"].startswith("smime signed 123 öäüß")
    assert count(desk, InboxMail) == 1
