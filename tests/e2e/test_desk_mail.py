"""The desk as its people meet it, by mail through a real SMTP relay: answers thread
under the mail they answer, a closed ticket's answer reads right and loses nothing,
and the customer's files reach the technician."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import Ticket
from mailgateway.service import Gateway
from tests.e2e.test_conversation import mails_to, reply_to_address, send_outbox
from tests.mails import PERSON, TECHNICIAN, build_mail, deliver, register_desk
from tests.smtp_sink import SmtpSink
from tests.smtp_sink import smtp_sink as smtp_sink  # the relay, as a fixture

NUMBER = "2026-000001"
TAG = f"[Ticket#{NUMBER}]"


@pytest.fixture
def desk(settings: Settings, smtp_sink: SmtpSink, clock: FixedClock) -> Iterator[Gateway]:
    relay = replace(settings.outbound, transport="smtp", host=smtp_sink.host,
                    port=smtp_sink.port, timeout_seconds=5)
    gateway = Gateway(replace(settings, outbound=relay), clock)
    register_desk(gateway)
    yield gateway
    gateway.close()


def _text(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def _id(mail: EmailMessage) -> str:
    return str(mail["Message-ID"]).strip()[1:-1]


def _ids(header: object) -> list[str]:
    return str(header or "").replace("<", "").replace(">", "").split()


def _technician_answers(desk: Gateway, smtp_sink: SmtpSink, notice: EmailMessage,
                        body: str) -> EmailMessage:
    """The technician answers `notice`; returns the answer the customer receives."""
    smtp_sink.clear()
    deliver(desk, build_mail(sender=TECHNICIAN, to=[reply_to_address(notice)],
                             subject="Re: " + str(notice["Subject"]), body=body))
    send_outbox(desk)
    [answer] = mails_to(smtp_sink, PERSON)
    return answer


def _customer_writes(desk: Gateway, smtp_sink: SmtpSink, answered: EmailMessage,
                     message_id: str, body: str,
                     attachments: list[tuple[str, bytes, str]] | None = None) -> EmailMessage:
    """The customer answers `answered` from a mail client; returns the technician's notice."""
    smtp_sink.clear()
    deliver(desk, build_mail(to=[reply_to_address(answered)], message_id=message_id,
                             subject="Re: " + str(answered["Subject"]), body=body,
                             in_reply_to=_id(answered), attachments=attachments or [],
                             references=[*_ids(answered["References"]), _id(answered)]))
    send_outbox(desk)
    # To the assignee once there is one, else the group.
    [notice] = mails_to(smtp_sink, TECHNICIAN) or mails_to(smtp_sink, "tecnici@example.com")
    return notice


def test_a_client_threads_each_answer_under_the_mail_it_answers(
        desk: Gateway, smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(message_id="req-1@client.test", subject="Stampa F24 bloccata"))
    send_outbox(desk)
    [notice] = mails_to(smtp_sink, "tecnici@example.com")
    [ack] = mails_to(smtp_sink, PERSON)
    first = _technician_answers(desk, smtp_sink, notice, "Provi a riavviare.\n\nLuca")
    notice = _customer_writes(desk, smtp_sink, first, "req-2@client.test", "Non va ancora.")
    second = _technician_answers(desk, smtp_sink, notice, "Aggiorni alla versione 12.")
    notice = _customer_writes(desk, smtp_sink, second, "req-3@client.test", "Ora funziona!")
    last = _technician_answers(desk, smtp_sink, notice, "#chiudi\nBene, chiudo il ticket.")

    # What a mail client builds: each mail under the one its In-Reply-To names.
    parent = {_id(m): str(m["In-Reply-To"]).strip("<> ") for m in (ack, first, second, last)}
    assert parent[_id(ack)] == "req-1@client.test"
    assert parent[_id(first)] == "req-1@client.test"
    assert parent[_id(second)] == "req-2@client.test"
    assert parent[_id(last)] == "req-3@client.test"
    for answer in (first, second, last):  # the thread's first mail, then the latest ones
        references = str(answer["References"]).split()
        assert references[0] == "<req-1@client.test>"
        assert references[-1] == str(answer["In-Reply-To"])

    # The technician signed: the answer is not signed a second time.
    assert _text(first).count("Luca") == 1
    assert "Luca Verdi" in _text(second)
    # The answer sent with #chiudi says the ticket is closed, and promises nothing.
    assert "Il ticket è stato chiuso" in _text(last)
    assert "automaticamente" not in _text(last)


def test_a_closed_ticket_s_answer_and_the_customer_s_words(
        desk: Gateway, smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(message_id="req-1@client.test", subject="Stampa F24 bloccata"))
    send_outbox(desk)
    [notice] = mails_to(smtp_sink, "tecnici@example.com")
    answer = _technician_answers(desk, smtp_sink, notice, "#chiudi\nRisolto con l'aggiornamento.")
    smtp_sink.clear()
    deliver(desk, build_mail(to=[reply_to_address(answer)], message_id="late@client.test",
                             subject="Re: " + str(answer["Subject"]),
                             body="Il problema è tornato stamattina.",
                             attachments=[("errore.png", b"png", "image/png")]))
    send_outbox(desk)
    [closed] = mails_to(smtp_sink, PERSON)
    assert closed["Subject"] == f"{TAG} Ticket chiuso: Stampa F24 bloccata"
    assert closed["Reply-To"] is None  # a reply would only be refused again
    assert closed["In-Reply-To"] == "<late@client.test>"
    # The technician who handled it has the customer's words.
    [told] = mails_to(smtp_sink, TECHNICIAN)
    assert "Il problema è tornato stamattina." in _text(told)
    assert "Il ticket è chiuso" in _text(told)
    assert "errore.png" in _text(told)
    assert told["Auto-Submitted"] == "auto-generated"


def test_a_reply_to_a_closed_ticket_opens_a_linked_one_when_configured(
        settings: Settings, smtp_sink: SmtpSink, clock: FixedClock) -> None:
    relay = replace(settings.outbound, transport="smtp", host=smtp_sink.host,
                    port=smtp_sink.port, timeout_seconds=5)
    helpdesk = replace(settings.helpdesk, closed_reply="new_ticket")
    desk = Gateway(replace(settings, outbound=relay, helpdesk=helpdesk), clock)
    try:
        register_desk(desk)
        deliver(desk, build_mail(message_id="req-1@client.test", subject="Stampa F24"))
        send_outbox(desk)
        [notice] = mails_to(smtp_sink, "tecnici@example.com")
        answer = _technician_answers(desk, smtp_sink, notice, "#chiudi\nFatto.")
        deliver(desk, build_mail(to=[reply_to_address(answer)], body="Di nuovo bloccato.",
                                 subject="Re: " + str(answer["Subject"])))
        with desk.sessions() as session:
            first, second = session.execute(select(Ticket).order_by(Ticket.id)).scalars()
            assert second.linked_ticket_id == first.id
            assert "Di nuovo bloccato." in second.messages[0].body
    finally:
        desk.close()


def test_the_customer_s_files_reach_the_technician(desk: Gateway, smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(message_id="req-1@client.test"))
    send_outbox(desk)
    [ack] = mails_to(smtp_sink, PERSON)
    payload = bytes(range(256)) * 40
    notice = _customer_writes(desk, smtp_sink, ack, "req-2@client.test", "Ecco la schermata.",
                              [("schermata errore.png", payload, "image/png")])
    assert notice["Auto-Submitted"] == "auto-generated"
    [part] = list(notice.iter_attachments())
    assert part.get_filename() == "schermata errore.png"
    assert part.get_content_type() == "image/png"
    assert part.get_content() == payload


def test_the_acknowledgment_reads_as_the_desk_writes(desk: Gateway, smtp_sink: SmtpSink) -> None:
    deliver(desk, build_mail(body="Impatto: Riesco a lavorare, con difficoltà\nNon stampa.",
                             attachments=[("errore.png", b"png", "image/png")]))
    deliver(desk, build_mail(subject="Altro", body="Non parte."))
    send_outbox(desk)
    texts = {str(m["Subject"]).split("] ")[1]: _text(m) for m in mails_to(smtp_sink, PERSON)}
    chosen, unstated = texts["Errore 98,20 su MOCO"], texts["Altro"]
    assert "Impatto: Riesco a lavorare, con difficoltà" in chosen
    assert "Impatto:" not in unstated  # a default, not the customer's choice
    for text in (chosen, unstated):  # one promise of the answer time
        assert text.count("entro") == 2 and "Riceverà una risposta entro 24 ore, e comunque" in text
    # The attachment instruction once.
    assert chosen.count("rispondendo a questa e-mail") + chosen.count(
        "rispondere a questa e-mail") == 1
    assert "errore.png" in chosen
