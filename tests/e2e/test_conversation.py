"""A whole conversation by mail: customer → gateway → real SMTP relay → customer's
client → gateway again, with the threading headers and the signed Reply-To
doing their job, and machines never answered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from email.utils import getaddresses

import pytest
from sqlalchemy import select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import OutboxMail, Ticket
from mailgateway.outbound.dispatch import dispatch_once
from mailgateway.outbound.transports import build_transport
from mailgateway.reply_token import TokenPurpose, read_reply_address
from mailgateway.service import Gateway
from tests.mails import CUSTOMER, PERSON, TECHNICIAN, build_mail, deliver, register_desk
from tests.smtp_sink import SmtpSink
from tests.smtp_sink import smtp_sink as smtp_sink  # the relay, as a fixture


@pytest.fixture
def desk(settings: Settings, smtp_sink: SmtpSink, clock: FixedClock) -> Iterator[Gateway]:
    relay = replace(settings.outbound, transport="smtp", host=smtp_sink.host,
                    port=smtp_sink.port, timeout_seconds=5)
    gateway = Gateway(replace(settings, outbound=relay), clock)
    register_desk(gateway)
    yield gateway
    gateway.close()


def send_outbox(gateway: Gateway) -> None:
    transport = build_transport(gateway.settings)
    try:
        dispatch_once(gateway.sessions, gateway.settings, gateway.clock, transport)
    finally:
        transport.close()


def mails_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    return [d.message for d in sink.deliveries if address in d.rcpt_tos]


def reply_to_address(mail: EmailMessage) -> str:
    [(_, address)] = getaddresses([str(mail["Reply-To"])])
    return address


def test_acknowledgment_threads_and_its_reply_address_works(desk: Gateway,
                                                            smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(message_id="req-1@client.test", subject="Stampa F24 bloccata",
                             attachments=[("errore.png", b"png", "image/png")]))
    send_outbox(desk)
    [ack] = mails_to(smtp_sink, PERSON)
    assert "[Ticket#2026-000001]" in str(ack["Subject"])
    assert ack["In-Reply-To"] == "<req-1@client.test>"
    assert "<req-1@client.test>" in str(ack["References"])
    assert ack["Auto-Submitted"] == "auto-replied"
    text = ack.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "errore.png" in text
    token = read_reply_address(reply_to_address(ack), "assistenza@example.com", "test-secret")
    assert token is not None and token.purpose == TokenPurpose.CUSTOMER
    [notice] = mails_to(smtp_sink, "tecnici@example.com")
    staff_token = read_reply_address(reply_to_address(notice), "assistenza@example.com",
                                     "test-secret")
    assert staff_token is not None and staff_token.purpose == TokenPurpose.STAFF

    # The customer answers to the Reply-To address; the client dropped the tag.
    deliver(desk, build_mail(to=[reply_to_address(ack)], subject="Altre informazioni",
                             body="Succede anche con Lynfa.", message_id="req-2@client.test"))
    # The technician answers from the notice: the answer reaches the customer, threaded.
    deliver(desk, build_mail(sender=TECHNICIAN, to=[reply_to_address(notice)],
                             subject="Re: " + str(notice["Subject"]),
                             body="Aggiorni alla versione 12, grazie."))
    smtp_sink.clear()
    send_outbox(desk)
    [answer] = mails_to(smtp_sink, PERSON)
    assert "Aggiorni alla versione 12" in answer.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # Under the customer's latest mail, in the thread that began with the first.
    assert answer["In-Reply-To"] == "<req-2@client.test>"
    assert str(answer["References"]).split()[0] == "<req-1@client.test>"
    assert "Auto-Submitted" not in answer
    with desk.sessions() as session:
        ticket = session.execute(select(Ticket)).scalar_one()
        assert ticket.status == "RISPOSTO"
        assert len(ticket.messages) == 3


def test_forged_reply_address_does_not_thread(desk: Gateway) -> None:
    deliver(desk, build_mail())
    forged = "assistenza+c2026-000001.aaaaaaaaaaaaaaaa@example.com"
    deliver(desk, build_mail(to=[forged], subject="Ciao", body="Nuova domanda"))
    with desk.sessions() as session:
        assert len(session.execute(select(Ticket)).scalars().all()) == 2


def test_out_of_office_to_the_acknowledgment_gets_no_answer(desk: Gateway,
                                                            smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(message_id="req-2@client.test"))
    send_outbox(desk)
    [ack] = mails_to(smtp_sink, PERSON)
    smtp_sink.clear()
    out_of_office = build_mail(
        to=[reply_to_address(ack)], subject="Risposta automatica: " + str(ack["Subject"]),
        body="Sono fuori ufficio fino al 10 marzo.", in_reply_to=str(ack["Message-ID"])[1:-1],
        headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})
    assert deliver(desk, out_of_office) == "ignored"
    send_outbox(desk)
    assert smtp_sink.deliveries == []


def test_a_flood_of_mail_gets_at_most_ten_answers(desk: Gateway) -> None:
    for number in range(50):
        deliver(desk, build_mail(sender="sconosciuto@altrove.test", subject=f"Offerta {number}",
                                 headers={"Return-Path": "<sconosciuto@altrove.test>"}))
    with desk.sessions() as session:
        answers = session.execute(select(OutboxMail).where(
            OutboxMail.kind == "unknown_sender")).scalars().all()
    assert 1 <= len(answers) <= 10


def test_main_address_gets_the_acknowledgment_without_a_person(desk: Gateway,
                                                               smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(sender=CUSTOMER, subject="Città e più: già fatto?"))
    send_outbox(desk)
    [ack] = mails_to(smtp_sink, CUSTOMER)
    assert "Città e più: già fatto?" in str(ack["Subject"])
    assert all(len(line) <= 998 for line in
               smtp_sink.deliveries[0].raw.split(b"\r\n"))
