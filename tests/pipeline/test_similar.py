"""Beyond the portal, end to end on the real database: solved tickets suggested in the
acknowledgment and the notice, a customer's "risolto" closing the ticket, repeated
requests joined or flagged, and the STATO page by mail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import undefer

from mailgateway.clock import FixedClock
from mailgateway.config import Settings, settings_from_mapping
from mailgateway.db.models import OutboxMail, SolvedTicket, Ticket
from mailgateway.directory import add_account
from mailgateway.outbound.compose import settings_context
from mailgateway.outbound.intent import stored_intent
from mailgateway.outbound.render import RenderedMail, render
from mailgateway.pipeline.similar import Candidate, asks_status, rank, request_text, says_solved
from mailgateway.service import Gateway
from mailgateway.solved import similar_solved
from mailgateway.views import show_ticket
from tests.mails import CUSTOMER, PERSON, TECHNICIAN, build_mail, deliver, register_desk
from tests.mails import staff_reply_address as staff_address

TAG = "[Ticket#{number}]"
OTHER = "info@bianchisrl.it"   # another account
F24 = ("Lynfa: stampa F24 bloccata",
       "Da stamattina non riesco più a stampare le deleghe F24: il programma resta fermo "
       "su Elaborazione in corso e poi si chiude.")
F24_ANSWER = ("Buongiorno, il blocco della stampa F24 dipende dalla stampante predefinita: "
              "in Lynfa scelga Utilità > Stampanti e reimposti la stampante PDF.")
IVA = ("Liquidazione IVA trimestrale errata",
       "La liquidazione IVA del trimestre riporta un importo a debito diverso dai registri.")


@pytest.fixture
def config_data(config_data: dict[str, Any]) -> dict[str, Any]:
    """The desk's defaults: repeated requests join their open ticket."""
    config_data["duplicates"] = {"action": "thread"}
    return config_data


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    with gateway.sessions.begin() as session:
        add_account(session, gateway.clock, name="Bianchi S.r.l.", email=OTHER)
    return gateway


def _number(gateway: Gateway) -> str:
    with gateway.sessions() as session:
        return session.scalars(select(Ticket.number).order_by(Ticket.id.desc())).first() or ""


def solved(gateway: Gateway, request: tuple[str, str], answer: str,
           sender: str = PERSON) -> str:
    """A request answered and closed by the technician; its number."""
    assert deliver(gateway, build_mail(sender=sender, subject=request[0],
                                       body=request[1])) == "processed"
    number = _number(gateway)
    deliver(gateway, build_mail(sender=TECHNICIAN, to=[staff_address(number)],
                                subject=f"Re: [Ticket#{number}]", body=f"#chiudi\n{answer}"))
    return number


def outbox(gateway: Gateway, kind: str) -> list[OutboxMail]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                    .where(OutboxMail.kind == kind).order_by(OutboxMail.id)))


def rendered(settings: Settings, row: OutboxMail) -> RenderedMail:
    assert row.intent is not None
    stored = stored_intent(row.intent)
    return render(settings, stored.intent, settings_context(settings) | dict(stored.intent.context))


def ticket(gateway: Gateway, number: str) -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, TAG, number)


def test_closing_a_ticket_indexes_it_in_the_same_transaction(desk: Gateway) -> None:
    number = solved(desk, F24, F24_ANSWER)
    with desk.sessions() as session:
        [row] = session.scalars(select(SolvedTicket)).all()
        assert (row.subject, row.request, row.answer) == (F24[0], F24[1], F24_ANSWER)
        [found] = similar_solved(session, row.account_id, "la stampa dell'F24 si blocca")
    assert (found.number, found.subject, found.answer) == (number, F24[0], F24_ANSWER)


def test_acknowledgment_and_notice_list_similar_solved_tickets(desk: Gateway) -> None:
    f24 = solved(desk, F24, F24_ANSWER)
    solved(desk, IVA, "Ricalcoli la liquidazione dal menu Contabilità.")
    solved(desk, F24, "Risposta data a un altro cliente.", sender=OTHER)
    deliver(desk, build_mail(subject="Non si stampano più gli F24",
                             body="Quando stampo la delega F24 il programma si blocca."))
    ack = outbox(desk, "acknowledgment")[-1]
    assert ack.intent is not None
    similar = ack.intent["context"]["similar"]
    assert similar[0] == {"number": f24, "subject": F24[0], "answer": F24_ANSWER}
    assert all("altro cliente" not in item["answer"] for item in similar)
    mail = rendered(desk.settings, ack)
    assert f"Ticket {f24}: {F24[0]}" in mail.text and "> Buongiorno, il blocco" in mail.text
    assert "scrivendo soltanto RISOLTO oppure CHIUSO nella prima riga" in mail.text
    assert f"<strong>{f24}</strong>" in mail.html and "RISOLTO</strong> oppure" in mail.html
    notice = outbox(desk, "new_ticket_notice")[-1]
    text = rendered(desk.settings, notice).text
    assert "Ticket risolti simili" in text and "Risposta di chiusura:" in text
    assert F24_ANSWER[:40] in text


def test_scope_all_shows_other_accounts_answers_without_their_data(
        desk: Gateway, config_data: dict[str, Any], clock: FixedClock) -> None:
    solved(desk, F24, F24_ANSWER, sender=OTHER)
    config_data["similar"] = {"scope": "all"}
    wide = Gateway(settings_from_mapping(config_data), clock)
    try:
        deliver(wide, build_mail(subject="Stampa F24 bloccata",
                                 body="La stampa delle deleghe F24 resta bloccata."))
        ack = outbox(wide, "acknowledgment")[-1]
        assert ack.intent is not None
        [item] = ack.intent["context"]["similar"]
        assert item == {"number": None, "subject": None, "answer": F24_ANSWER}
        text = rendered(wide.settings, ack).text
        assert "Risposta a una richiesta simile" in text and "S.r.l" not in text
        assert "2026-000001" not in text
    finally:
        wide.close()


def test_english_acknowledgment_reads_in_english(desk: Gateway, settings: Settings) -> None:
    with desk.sessions.begin() as session:
        add_account(session, desk.clock, name="Smith Ltd", email="it@smith.test", language="en")
    solved(desk, F24, F24_ANSWER, sender="it@smith.test")
    deliver(desk, build_mail(sender="it@smith.test", subject="F24 printing blocked",
                             body="Printing the F24 blocks the program."))
    mail = rendered(settings, outbox(desk, "acknowledgment")[-1])
    assert "answers to similar, already solved requests" in mail.text
    assert "with just SOLVED on the first line" in mail.text
    assert "<strong>SOLVED</strong>" in mail.html


@pytest.mark.parametrize(("answer", "closes"), [
    ("Risolto", True), ("RISOLTO!\n\nGrazie mille.", True), ("chiuso.", True),
    ("Solved", True), ("Non è risolto: l'errore si ripresenta.", False),
    ("Risolto in parte, ma la stampa è lenta.", False),
])
def test_customer_answer_risolto_closes_the_ticket(
        desk: Gateway, answer: str, closes: bool) -> None:
    deliver(desk, build_mail(subject=F24[0], body=F24[1], message_id="f24@client.test"))
    number = _number(desk)
    deliver(desk, build_mail(subject=f"Re: [Ticket#{number}] {F24[0]}", body=answer,
                             in_reply_to="f24@client.test"))
    data = ticket(desk, number)
    assert (data["status"] == "CHIUSO") is closes
    if closes:
        event = data["events"][-1]
        assert (event["kind"], event["actor"], event["to"]) == ("closed", PERSON, "CHIUSO")
        assert "is solved" in event["reason"]


def test_says_solved_reads_only_the_first_line() -> None:
    words = ("risolto", "chiuso", "solved")
    assert says_solved("\n\n  Risolto  \n> quoted", words)
    assert not says_solved("Grazie\nrisolto", words)
    assert not says_solved("non è risolto", words)
    assert not says_solved("", words)


def test_repeated_request_joins_the_open_ticket(desk: Gateway, clock: FixedClock) -> None:
    deliver(desk, build_mail(subject=F24[0], body=F24[1]))
    first = _number(desk)
    clock.advance(hours=3)
    assert deliver(desk, build_mail(subject=F24[0], body=F24[1] + "\nÈ urgente.")) == "processed"
    assert _number(desk) == first                       # no second ticket
    data = ticket(desk, first)
    assert len(data["messages"]) == 2
    assert "duplicate_joined" in [e["kind"] for e in data["events"]]
    [told] = outbox(desk, "duplicate_joined")
    assert told.recipients == [PERSON]
    text = rendered(desk.settings, told).text
    assert f"ticket n. {first} «{F24[0]}», ancora aperto" in text


def test_repeat_after_the_window_or_another_problem_opens_a_ticket(
        desk: Gateway, clock: FixedClock) -> None:
    deliver(desk, build_mail(subject=F24[0], body=F24[1]))
    deliver(desk, build_mail(subject=IVA[0], body=IVA[1]))
    clock.advance(hours=49)
    deliver(desk, build_mail(subject=F24[0], body=F24[1]))
    with desk.sessions() as session:
        assert len(session.scalars(select(Ticket)).all()) == 3
    assert outbox(desk, "duplicate_joined") == []


def test_another_accounts_same_request_is_no_duplicate(desk: Gateway) -> None:
    deliver(desk, build_mail(subject=F24[0], body=F24[1]))
    deliver(desk, build_mail(sender=OTHER, subject=F24[0], body=F24[1]))
    with desk.sessions() as session:
        assert len(session.scalars(select(Ticket)).all()) == 2


def test_flagged_duplicate_opens_a_linked_ticket(
        desk: Gateway, config_data: dict[str, Any], clock: FixedClock) -> None:
    config_data["duplicates"]["action"] = "flag"
    flagging = Gateway(settings_from_mapping(config_data), clock)
    try:
        deliver(flagging, build_mail(subject=F24[0], body=F24[1]))
        first = _number(flagging)
        deliver(flagging, build_mail(sender=CUSTOMER, subject=F24[0], body=F24[1]))
        second = _number(flagging)
        assert second != first
        data = ticket(flagging, second)
        assert "duplicate_flagged" in [e["kind"] for e in data["events"]]
        with flagging.sessions() as session:
            rows = {t.number: t for t in session.scalars(select(Ticket))}
            assert rows[second].linked_ticket_id == rows[first].id
        notice = outbox(flagging, "new_ticket_notice")[-1]
        text = rendered(flagging.settings, notice).text
        assert f"sembra ripetere il ticket aperto {first}" in text
        assert outbox(flagging, "duplicate_joined") == []
    finally:
        flagging.close()


def _status(gateway: Gateway, sender: str) -> dict[str, Any]:
    before = {r.id for r in outbox(gateway, "status_report")}
    with gateway.sessions() as session:
        tickets = session.scalar(select(Ticket.id).order_by(Ticket.id.desc()).limit(1))
    assert deliver(gateway, build_mail(sender=sender, subject="I MIEI TICKET", body="")) \
        == "processed"
    with gateway.sessions() as session:
        assert session.scalar(select(Ticket.id).order_by(Ticket.id.desc()).limit(1)) == tickets
    [row] = [r for r in outbox(gateway, "status_report") if r.id not in before]
    assert row.recipients == [sender] and row.intent is not None
    return {"row": row, **row.intent["context"]}


def test_stato_by_mail(desk: Gateway) -> None:
    solved(desk, F24, F24_ANSWER)                                          # CHIUSO
    deliver(desk, build_mail(subject=IVA[0], body=IVA[1]))                 # APERTO
    answered = _number(desk)
    deliver(desk, build_mail(sender=TECHNICIAN, to=[staff_address(answered)],
                             subject="Re:", body="Ci mandi la stampa dei registri."))  # RISPOSTO
    deliver(desk, build_mail(sender=CUSTOMER, subject="Licenza scaduta",
                             body="Non riesco più a entrare, la licenza risulta scaduta."))
    deliver(desk, build_mail(sender=OTHER, subject="Fattura non ricevuta",
                             body="Non abbiamo ricevuto la fattura del canone."))
    whole = _status(desk, CUSTOMER)
    assert whole["counts"] == {"TUTTI": 3, "APERTO": 1, "IN_GESTIONE": 0, "RISPOSTO": 1,
                               "CHIUSO": 1}
    assert whole["whole_account"] is True
    numbers = [t["number"] for t in whole["open_tickets"]]
    assert len(numbers) == 2 and answered in numbers
    other = ticket(desk, _number(desk))
    assert other["number"] not in numbers
    mail = rendered(desk.settings, whole["row"])
    assert "IN ATTESA DI RISPOSTA    1" in mail.text and "Fattura non ricevuta" not in mail.text
    assert f"assistenza+c{answered}." in mail.text
    assert "mailto:assistenza+c" in mail.html and "%5BTicket%23" in mail.html
    own = _status(desk, PERSON)             # a collaborator: their own tickets only
    assert own["counts"]["TUTTI"] == 2 and own["whole_account"] is False
    assert "Licenza scaduta" not in str(own["open_tickets"])


def test_request_text_leaves_the_signature_out() -> None:
    body = "Buongiorno,\nla stampa F24 si blocca.\n\nCordiali saluti\nAnna Bianchi\nTel. 02 1234"
    assert request_text(body) == "Buongiorno,\nla stampa F24 si blocca."
    assert request_text("Saluti\nresto") == "Saluti\nresto"   # a first line is never cut


def test_rank_weighs_a_rare_shared_word_above_common_ones() -> None:
    query = {"stamp": 3, "f24": 3, "blocc": 1, "programm": 1}
    documents = {"stamp": 40, "f24": 5, "blocc": 50, "programm": 90}
    common = Candidate(1, {"stamp": 3, "blocc": 1, "programm": 1, "iva": 3})
    rare = Candidate(2, {"f24": 3, "deleg": 1})
    assert rank(query, [common, rare], documents, 100, 3)[0] == 2
    assert rank(query, [Candidate(3, {"other": 1})], documents, 100, 3) == []


def test_asks_status() -> None:
    assert all(asks_status(s) for s in ("STATO", "I miei ticket", " status ", "My tickets"))
    assert not any(asks_status(s) for s in ("Re: STATO", "stato del ticket", ""))


def test_another_number_in_the_subject_is_another_incident(desk: Gateway) -> None:
    deliver(desk, build_mail(subject="Fattura 12/2026 non ricevuta", body=IVA[1]))
    deliver(desk, build_mail(subject="Fattura 13/2026 non ricevuta", body=IVA[1]))
    with desk.sessions() as session:
        assert len(session.scalars(select(Ticket)).all()) == 2
