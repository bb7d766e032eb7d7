"""PEC: envelopes opened, receipts named, on the public samples (tests/data/pec) and
on the kinds built from the technical rules (tests/pec_mails.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from mailgateway.db.models import Event, InboxMail, OutboxMail, Ticket
from mailgateway.directory import add_account, set_answer_email
from mailgateway.outbound.intent import MailKind
from mailgateway.pipeline.classify import AutoKind, OwnMarks, classify
from mailgateway.pipeline.identify import vouched_by_mta
from mailgateway.pipeline.pec import DeliveryOutcome, ReceiptKind, read_daticert, read_mail
from mailgateway.service import Gateway
from mailgateway.views import show_ticket
from tests.mails import build_mail, deliver, register_desk, staff_reply_address
from tests.pec_mails import RECEIPT_SUBJECTS, envelope, readdressed, receipt, sample

OWN = OwnMarks(("example.com",), "assistenza@example.com")
ROME = timezone(timedelta(hours=1))
SENT = datetime(2026, 3, 2, 10, 0, tzinfo=ROME)
STUDIO = "studio.rossi@pec.studiorossi.it"
ORIGINAL = "4f2a@pec.studiorossi.it"


def studio_mail(**kwargs: Any) -> bytes:
    """What the studio wrote, as its PEC provider wraps it."""
    subject = kwargs.pop("subject", "Stampa F24 bloccata")
    message_id = kwargs.pop("message_id", ORIGINAL)
    inner = build_mail(sender=STUDIO, subject=subject, message_id=message_id, **kwargs)
    return envelope(inner, sender=STUDIO, to=["assistenza@example.com"], subject=subject,
                    message_id=message_id, when=SENT, anomaly=kwargs.get("anomaly", False))


# --- the public samples -----------------------------------------------------------------


def test_real_transport_envelope_is_read_as_the_mail_inside() -> None:
    mail = read_mail(sample("posta-certificata.eml"))
    assert (mail.from_addr, mail.subject, mail.text) == (
        "no-reply@example.com", "POSTA CERTIFICATA: SUBJECT", "text")
    assert mail.attachments == ()  # daticert.xml and smime.p7s are the provider's
    # The id the sender's client knows: the envelope's X-Riferimento-Message-ID.
    assert mail.message_id == "CZPXCJRZKQDRVYXFAZYUIAWNACDAEXAKN@example.com"
    assert mail.pec is not None and mail.pec.receipt is None and not mail.pec.anomaly
    record = mail.pec.record()
    assert record["kind"] == "posta-certificata"
    assert record["certified_sender"] == "no-reply@example.com"
    assert record["certified_at"] == "2021-05-14T10:02:08+00:00"
    assert record["identifier"] == "CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com"
    assert classify(mail, OWN).kind is None  # a person's mail, classified as one


@pytest.mark.parametrize(("name", "kind", "at", "ids", "outcome"), [
    ("accettazione.eml", ReceiptKind.ACCETTAZIONE, "2024-11-15T17:20:38+00:00",
     ("SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@fakepec.it",), DeliveryOutcome.DELIVERED),
    ("avvenuta-consegna.eml", ReceiptKind.AVVENUTA_CONSEGNA, "2021-05-13T12:35:30+00:00",
     ("CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com",), DeliveryOutcome.DELIVERED),
    # The two references of this receipt disagree (@pec.it, @fakepec.it): both are tried.
    ("errore-consegna.eml", ReceiptKind.ERRORE_CONSEGNA, "2024-11-15T17:21:03+00:00",
     ("SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@pec.it",
      "SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@fakepec.it"), DeliveryOutcome.BOUNCED),
])
def test_real_receipts_are_automatic_with_their_certified_facts(
    name: str, kind: ReceiptKind, at: str, ids: tuple[str, ...], outcome: DeliveryOutcome,
) -> None:
    mail = read_mail(sample(name))
    verdict = classify(mail, OWN)
    assert verdict.kind is AutoKind.PEC_RECEIPT and not verdict.may_auto_answer
    assert mail.pec is not None and mail.pec.receipt is kind
    assert mail.pec.record()["certified_at"] == at
    assert mail.pec.original_ids() == ids
    assert mail.pec.outcome is outcome


def test_real_delivery_error_says_why() -> None:
    mail = read_mail(sample("errore-consegna.eml"))
    assert mail.pec is not None
    record = mail.pec.record()
    assert (record["error"], record["error_detail"], record["delivered_to"]) == (
        "no-dest", "5.1.1 - FAKE Pec S.p.A. - indirizzo non valido", "rec@fakepec.it")


# --- the kinds built from the rules ------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(RECEIPT_SUBJECTS))
def test_every_receipt_kind_is_automatic(kind: str) -> None:
    raw = receipt(kind, refers_to="mg.1@example.com", to="assistenza@example.com",
                  recipient=STUDIO, subject="[Ticket#2026-000001] Stampa", when=SENT)
    mail = read_mail(raw)
    assert classify(mail, OWN).kind is AutoKind.PEC_RECEIPT
    assert mail.pec is not None and mail.pec.receipt == kind
    expected = {"accettazione": DeliveryOutcome.DELIVERED,
                "avvenuta-consegna": DeliveryOutcome.DELIVERED,
                "presa-in-carico": DeliveryOutcome.NOTED,
                "rilevazione-virus": DeliveryOutcome.NOTED}.get(kind, DeliveryOutcome.BOUNCED)
    assert mail.pec.outcome is expected


def test_built_envelope_keeps_the_inner_mail_as_it_is() -> None:
    mail = read_mail(studio_mail(body="Buongiorno,\nil programma non stampa.",
                                 attachments=[("errore.png", b"\x89PNG", "image/png")]))
    assert (mail.from_addr, mail.subject, mail.message_id) == (
        STUDIO, "Stampa F24 bloccata", ORIGINAL)
    assert mail.text.splitlines()[0] == "Buongiorno,"
    assert [(a.filename, a.payload) for a in mail.attachments] == [("errore.png", b"\x89PNG")]
    assert mail.pec is not None and mail.pec.certified_at == SENT.astimezone(UTC)


def test_anomaly_envelope_is_opened_and_marked() -> None:
    inner = build_mail(sender="rossi@studiorossi.it", subject="Da casella ordinaria",
                       message_id="plain-1@studiorossi.it")
    mail = read_mail(envelope(inner, sender="rossi@studiorossi.it", to=["assistenza@example.com"],
                              subject="Da casella ordinaria", message_id="plain-1@studiorossi.it",
                              when=SENT, anomaly=True))
    assert (mail.from_addr, mail.subject) == ("rossi@studiorossi.it", "Da casella ordinaria")
    assert mail.pec is not None and mail.pec.anomaly and mail.pec.certified_at is None


def test_a_certified_sender_wins_over_the_inner_from() -> None:
    inner = build_mail(sender="someone@else.it", message_id=ORIGINAL)
    mail = read_mail(envelope(inner, sender=STUDIO, to=["assistenza@example.com"],
                              subject="x", message_id=ORIGINAL, when=SENT))
    assert mail.from_addr == STUDIO
    assert any("differs from the certified sender" in d for d in mail.defects)


def test_authentication_results_inside_an_envelope_vouch_for_nothing() -> None:
    forged = build_mail(sender="luca@example.com", message_id=ORIGINAL, headers={
        "Authentication-Results": "mx.example.com; dkim=pass header.d=example.com; "
                                  "dmarc=pass header.from=example.com"})
    assert vouched_by_mta(read_mail(forged), ("mx.example.com",))  # at the top: our MTA's
    mail = read_mail(envelope(forged, sender="luca@example.com", to=["assistenza@example.com"],
                              subject="x", message_id=ORIGINAL, when=SENT))
    assert mail.from_addr == "luca@example.com"
    assert mail.header("Authentication-Results") is None
    assert not vouched_by_mta(mail, ("mx.example.com",))


def test_an_envelope_without_its_mail_keeps_its_own_text() -> None:
    raw = envelope(b"", sender=STUDIO, to=["assistenza@example.com"], subject="x",
                   message_id=ORIGINAL, when=SENT)
    mail = read_mail(raw)
    assert mail.from_addr == STUDIO and "Messaggio di posta certificata" in mail.text
    assert mail.pec is not None and mail.pec.problem == "no postacert.eml in the envelope"
    assert all(a.filename not in ("daticert.xml", "smime.p7s") for a in mail.attachments)


def test_daticert_that_is_not_the_providers_is_refused() -> None:
    assert read_daticert(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]>"
                         b"<postacert>&a;</postacert>") is None
    assert read_daticert(b"<other/>") is None
    assert read_daticert(b"not xml") is None
    assert read_daticert(b"<postacert tipo='accettazione'/>") is not None


def test_a_person_writing_about_receipts_is_not_one() -> None:
    mail = read_mail(build_mail(body="X-Ricevuta: accettazione\nmi arriva questa ricevuta"))
    assert mail.pec is None and classify(mail, OWN).kind is None


# --- through the pipeline ------------------------------------------------------------------


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    with gateway.sessions.begin() as session:
        add_account(session, gateway.clock, name="Studio Rossi PEC", email=STUDIO)
    return gateway


def outbox(gateway: Gateway) -> list[OutboxMail]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                    .order_by(OutboxMail.id)))


def shown(gateway: Gateway, number: str = "2026-000001") -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, "[Ticket#{number}]", number)


def test_pec_request_becomes_the_customers_ticket(desk: Gateway) -> None:
    raw = studio_mail(body="Buongiorno,\nil programma non stampa.",
                      attachments=[("errore.png", b"\x89PNG", "image/png")])
    assert deliver(desk, raw) == "processed"
    ticket = shown(desk)
    assert (ticket["account"], ticket["subject"]) == (STUDIO, "Stampa F24 bloccata")
    assert ticket["pec_address"] == STUDIO
    [message] = ticket["messages"]
    assert message["author"] == STUDIO and message["body"].startswith("Buongiorno,\n")
    assert message["refused_attachments"] == ["errore.png"]  # a first mail keeps no file
    assert message["pec"]["certified_at"] == "2026-03-02T09:00:00+00:00"
    assert message["pec"]["provider"] == "Provider PEC S.p.A."
    ack, notice = outbox(desk)
    assert ack.kind == MailKind.ACKNOWLEDGMENT and ack.recipients == [STUDIO]
    assert ack.intent is not None and ack.intent["in_reply_to"] == ORIGINAL
    assert notice.kind == MailKind.NEW_TICKET_NOTICE
    assert notice.intent is not None and notice.intent["context"]["pec"]["anomaly"] is False


def test_pec_reply_keeps_the_files_the_inner_mail_has(desk: Gateway) -> None:
    deliver(desk, studio_mail())
    reply = studio_mail(subject="Re: [Ticket#2026-000001] Stampa F24 bloccata",
                        message_id="4f2b@pec.studiorossi.it", in_reply_to=ORIGINAL,
                        body="Ecco la schermata.",
                        attachments=[("schermata.pdf", b"%PDF-1.4", "application/pdf")])
    assert deliver(desk, reply) == "processed"
    _, second = shown(desk)["messages"]
    assert second["body"] == "Ecco la schermata."
    assert [a["filename"] for a in second["attachments"]] == ["schermata.pdf"]
    assert second["pec"]["kind"] == "posta-certificata"
    with desk.sessions() as session:  # what our later mails' References name
        ids = session.scalars(select(InboxMail.message_id).order_by(InboxMail.id)).all()
    assert ids == [ORIGINAL, "4f2b@pec.studiorossi.it"]


def test_anomaly_envelope_is_flagged_for_the_technicians(desk: Gateway) -> None:
    inner = build_mail(sender=STUDIO, subject="Scritta dalla casella ordinaria",
                       message_id="plain-2@pec.studiorossi.it")
    raw = envelope(inner, sender=STUDIO, to=["assistenza@example.com"],
                   subject="Scritta dalla casella ordinaria",
                   message_id="plain-2@pec.studiorossi.it", when=SENT, anomaly=True)
    assert deliver(desk, raw) == "processed"
    ticket = shown(desk)
    assert ticket["messages"][0]["pec"]["anomaly"] is True
    assert ticket["pec_address"] is None  # nothing certified it
    assert [e["kind"] for e in ticket["events"]][-1] == "pec_anomaly"
    notice = outbox(desk)[-1]
    assert notice.intent is not None and notice.intent["context"]["pec"]["anomaly"] is True


@pytest.mark.parametrize("name", ["accettazione.eml", "avvenuta-consegna.eml",
                                  "errore-consegna.eml"])
def test_a_receipt_opens_nothing_and_answers_nothing(desk: Gateway, name: str) -> None:
    assert deliver(desk, sample(name)) == "ignored"
    assert outbox(desk) == []
    with desk.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 0
        row = session.scalars(select(InboxMail)).one()
    assert row.reason is not None and "about no mail of ours" in row.reason


def test_receipts_tie_to_our_outbox_row(desk: Gateway) -> None:
    deliver(desk, studio_mail())
    ack = outbox(desk)[0]
    accepted, delivered = SENT + timedelta(minutes=1), SENT + timedelta(minutes=2)
    assert deliver(desk, readdressed(sample("accettazione.eml"), ack.message_id,
                                     accepted)) == "ignored"
    assert deliver(desk, readdressed(sample("avvenuta-consegna.eml"), ack.message_id,
                                     delivered)) == "ignored"
    with desk.sessions() as session:
        row = session.get(OutboxMail, ack.id)
        assert row is not None
        assert (row.status, row.delivered_at) == ("delivered", delivered.astimezone(UTC))
        assert "PEC avvenuta-consegna" in (row.delivery_diagnostic or "")
        receipts = session.scalars(select(InboxMail).where(InboxMail.id > 1)).all()
        assert {r.ticket_id for r in receipts} == {row.ticket_id}
        assert session.scalar(select(func.count()).select_from(Ticket)) == 1
    assert len(outbox(desk)) == 2  # the acknowledgment and the notice: nothing new


def test_delivery_error_bounces_our_row_with_the_ticket_event(desk: Gateway) -> None:
    deliver(desk, studio_mail())
    ack = outbox(desk)[0]
    assert deliver(desk, readdressed(sample("errore-consegna.eml"), ack.message_id)) == "ignored"
    with desk.sessions() as session:
        row = session.get(OutboxMail, ack.id)
        assert row is not None and row.status == "bounced"
        assert "indirizzo non valido" in (row.delivery_diagnostic or "")
        events = session.scalars(select(Event.kind).where(Event.ticket_id == row.ticket_id))
        assert "bounced" in list(events)
    assert [m.kind for m in outbox(desk)][-1] == MailKind.BOUNCE_NOTICE


def test_account_may_want_answers_at_an_ordinary_address(desk: Gateway) -> None:
    with desk.sessions.begin() as session:
        set_answer_email(session, STUDIO, "segreteria@studiorossi.it")
    deliver(desk, studio_mail())
    ack = outbox(desk)[0]
    assert ack.recipients == ["segreteria@studiorossi.it"]
    answer = build_mail(sender="luca@example.com", to=[staff_reply_address("2026-000001")],
                        subject="Re: [Ticket#2026-000001] Stampa F24 bloccata",
                        body="Aggiorni alla versione 12.")
    assert deliver(desk, answer) == "processed"
    assert outbox(desk)[-1].kind == MailKind.ANSWER
    assert outbox(desk)[-1].recipients == ["segreteria@studiorossi.it"]


def test_real_transport_envelope_becomes_its_senders_ticket(desk: Gateway) -> None:
    with desk.sessions.begin() as session:
        add_account(session, desk.clock, name="Example", email="no-reply@example.com")
    assert deliver(desk, sample("posta-certificata.eml")) == "processed"
    ticket = shown(desk)
    assert (ticket["account"], ticket["subject"]) == (
        "no-reply@example.com", "POSTA CERTIFICATA: SUBJECT")
    [message] = ticket["messages"]
    assert (message["body"], message["attachments"], message["refused_attachments"]) == (
        "text", [], [])
    assert message["pec"]["identifier"] == "CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com"
    # A no-reply sender gets no acknowledgment; the technicians hear of it.
    assert [m.kind for m in outbox(desk)] == [MailKind.NEW_TICKET_NOTICE]


@pytest.mark.parametrize(("kind", "status"), [
    ("accettazione", "delivered"), ("avvenuta-consegna", "delivered"),
    ("non-accettazione", "bounced"), ("errore-consegna", "bounced"),
    ("preavviso-errore-consegna", "bounced"), ("presa-in-carico", "pending"),
    ("rilevazione-virus", "pending"),
])
def test_every_receipt_kind_built_from_the_rules_updates_our_row(
    desk: Gateway, kind: str, status: str,
) -> None:
    deliver(desk, studio_mail())
    ack = outbox(desk)[0]
    raw = receipt(kind, refers_to=ack.message_id, to="assistenza@example.com",
                  recipient=STUDIO, subject="[Ticket#2026-000001] Stampa F24 bloccata",
                  when=SENT + timedelta(minutes=3),
                  error="nessuno" if status != "bounced" else "no-dest",
                  error_detail="" if status != "bounced" else "5.1.1 casella inesistente")
    assert deliver(desk, raw) == "ignored"
    with desk.sessions() as session:
        row = session.get(OutboxMail, ack.id)
        assert row is not None and row.status == status
        if status == "delivered":
            assert row.delivered_at == (SENT + timedelta(minutes=3)).astimezone(UTC)
        if status == "bounced":
            assert "5.1.1 casella inesistente" in (row.delivery_diagnostic or "")
        receipt_row = session.get(InboxMail, 2)
        assert receipt_row is not None and receipt_row.reason == (
            f"PEC {kind} receipt for outbox mail {ack.id}")
        assert session.scalar(select(func.count()).select_from(Ticket)) == 1
    kinds = [m.kind for m in outbox(desk)]
    assert kinds[:2] == [MailKind.ACKNOWLEDGMENT, MailKind.NEW_TICKET_NOTICE]
    assert kinds[2:] == ([MailKind.BOUNCE_NOTICE] if status == "bounced" else [])
