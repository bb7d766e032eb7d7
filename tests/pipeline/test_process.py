"""The pipeline end to end on the real database: tickets, replies, dedup, policies."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from mailgateway.config import Settings
from mailgateway.db.models import Account, InboxMail, InboxRaw, Message, OutboxMail, Ticket
from mailgateway.outbound.intent import QueuedMail
from mailgateway.service import Gateway
from mailgateway.tickets import format_tag
from mailgateway.views import list_inbox, show_ticket
from tests.mails import (
    CUSTOMER,
    PERSON,
    TECHNICIAN,
    build_mail,
    deliver,
    register_desk,
    staff_reply_address,
)

TAG = "[Ticket#{number}]"


def ticket(gateway: Gateway, number: str = "2026-000001") -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, TAG, number)


def count(gateway: Gateway, model: type[Any]) -> int:
    with gateway.sessions() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    return gateway


def open_first_ticket(gateway: Gateway, **kwargs: Any) -> dict[str, Any]:
    assert deliver(gateway, build_mail(message_id="first@client.test", **kwargs)) == "processed"
    return ticket(gateway)


def test_request_from_person_opens_ticket_and_refuses_attachment(desk: Gateway) -> None:
    raw = build_mail(
        subject="Lynfa: stampa F24 non funziona più",
        body="Buongiorno, perché la stampa dell'F24 è bloccata? Città, qualità, già.",
        attachments=[("schermata.png", b"\x89PNG fake image", "image/png")],
        cte="quoted-printable",
    )
    assert deliver(desk, raw) == "processed"
    data = ticket(desk)
    assert data["status"] == "APERTO"
    assert data["account"] == CUSTOMER
    assert data["person"] == PERSON
    assert data["subject"] == "Lynfa: stampa F24 non funziona più"
    assert data["tag"] == "[Ticket#2026-000001]"
    assert (data["request_type"], data["impact"]) == ("tecnica", "difficolta")
    [message] = data["messages"]
    assert "perché la stampa dell'F24 è bloccata? Città, qualità, già." in message["body"]
    assert message["direction"] == "in" and message["attachments"] == []
    assert message["refused_attachments"] == ["schermata.png"]
    assert data["due_at"] == "2026-03-03T09:30:00+00:00"
    assert [e["kind"] for e in data["events"]] == ["created"]


def test_same_bytes_twice_have_one_effect(desk: Gateway) -> None:
    raw = build_mail()
    first = desk.receive(raw, transport="smtp")
    second = desk.receive(raw, transport="imap")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.inbox_id == second.inbox_id
    desk.process(first.inbox_id)
    desk.process(second.inbox_id)
    assert deliver(desk, raw) == "processed"
    assert (count(desk, Ticket), count(desk, Message), count(desk, InboxMail)) == (1, 1, 1)


def test_trace_headers_do_not_make_a_second_mail(desk: Gateway) -> None:
    raw = build_mail()
    relayed = b"Received: from mx.example.net by imap.example.com; Mon, 2 Mar 2026\r\n" + raw
    deliver(desk, raw)
    deliver(desk, relayed)
    assert count(desk, InboxMail) == 1


@pytest.mark.parametrize(
    "subject",
    [
        "R: [Ticket#2026-000001] Errore 98,20 su MOCO",
        "RIF: I: Re: [Ticket#2026-000001] Errore",
        "re: [ticket#2026-000001] errore",
        "AW: WG: [ Ticket # 2026 - 000001 ] Errore",
    ],
)
def test_reply_with_tag_joins_ticket(desk: Gateway, subject: str) -> None:
    open_first_ticket(desk)
    deliver(desk, build_mail(subject=subject, body="Ecco altre informazioni."))
    data = ticket(desk)
    assert count(desk, Ticket) == 1
    assert [m["body"] for m in data["messages"]][-1] == "Ecco altre informazioni."


def test_reply_by_references_only_keeps_attachment(desk: Gateway) -> None:
    open_first_ticket(desk)
    payload = b"%PDF-1.4 errore log " * 100
    raw = build_mail(
        subject="Re: ancora",
        body="Vi allego il log.\n\nIl giorno lun 2 mar 2026 Assistenza ha scritto:\n> vecchio",
        references=["unrelated@x.test", "first@client.test"],
        attachments=[("C:\\Users\\mario\\Desktop\\..\\log\u0007.pdf", payload, "application/pdf")],
    )
    assert deliver(desk, raw) == "processed"
    data = ticket(desk)
    reply = data["messages"][-1]
    assert reply["body"] == "Vi allego il log."
    [attachment] = reply["attachments"]
    assert attachment["filename"] == "log.pdf"
    assert attachment["size"] == len(payload)
    assert attachment["sha256"] == hashlib.sha256(payload).hexdigest()
    stored = (
        desk.settings.data_dir / "attachments" / attachment["sha256"][:2] / attachment["sha256"]
    )
    assert stored.read_bytes() == payload


def test_a_file_that_cannot_be_written_leaves_the_reply_quarantined(desk: Gateway) -> None:
    """Files are written in the background; the commit waits for them, so a reply never
    points at a file that is not on disk. Here the file's directory is taken by a file."""
    open_first_ticket(desk)
    payload = b"%PDF-1.4 non scrivibile " * 50
    digest = hashlib.sha256(payload).hexdigest()
    blocked = desk.settings.data_dir / "attachments" / digest[:2]
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"not a directory")
    raw = build_mail(subject="Re: ancora", body="Il log.", references=["first@client.test"],
                     attachments=[("log.pdf", payload, "application/pdf")])

    assert deliver(desk, raw) == "quarantined"
    assert len(ticket(desk)["messages"]) == 1
    with desk.sessions() as session:
        reason = session.execute(select(InboxMail.reason)
                                 .where(InboxMail.status == "quarantined")).scalar_one()
    assert reason is not None and "Error" in reason

    blocked.unlink()
    with desk.sessions() as session:
        quarantined = session.execute(select(InboxMail.id)
                                      .where(InboxMail.status == "quarantined")).scalar_one()
    assert desk.retry(quarantined) == "processed"
    assert (blocked / digest).read_bytes() == payload


def test_reply_over_attachment_limit_is_refused_by_name(desk: Gateway, settings: Settings) -> None:
    small = Gateway(
        replace(settings, helpdesk=replace(settings.helpdesk, max_attachment_bytes=10)), desk.clock
    )
    open_first_ticket(small)
    deliver(
        small,
        build_mail(
            subject="Re: [Ticket#2026-000001]",
            body="allegato",
            attachments=[("grande.zip", b"x" * 11, "application/zip")],
        ),
    )
    reply = ticket(small)["messages"][-1]
    assert reply["attachments"] == [] and reply["refused_attachments"] == ["grande.zip"]
    small.close()


def test_customer_reply_moves_risposto_to_in_gestione(desk: Gateway) -> None:
    open_first_ticket(desk)
    staff_token = staff_reply_address("2026-000001")
    deliver(
        desk,
        build_mail(
            sender=TECHNICIAN,
            to=[staff_token],
            subject="Re: [Ticket#2026-000001] Errore",
            body="Provi ad aggiornare alla versione 12.\n\n> vecchio",
        ),
    )
    data = ticket(desk)
    assert data["status"] == "RISPOSTO"
    assert data["assignee"] == TECHNICIAN
    assert data["messages"][-1]["direction"] == "out"
    deliver(desk, build_mail(subject="R: [Ticket#2026-000001] Errore", body="Non funziona."))
    data = ticket(desk)
    assert data["status"] == "IN_GESTIONE"
    assert [(e["from"], e["to"]) for e in data["events"]] == [
        (None, "APERTO"),
        ("APERTO", "RISPOSTO"),
        ("RISPOSTO", "IN_GESTIONE"),
    ]


def test_forged_technician_mail_changes_nothing(desk: Gateway) -> None:
    open_first_ticket(desk)
    status = deliver(
        desk,
        build_mail(sender=TECHNICIAN, subject="[Ticket#2026-000001]", body="#chiudi\nRisolto."),
    )
    assert status == "quarantined"
    assert ticket(desk)["status"] == "APERTO"
    with desk.sessions() as session:
        [row] = [r for r in list_inbox(session) if r["status"] == "quarantined"]
    assert "forged" in row["reason"]


def test_technician_commands(desk: Gateway) -> None:
    open_first_ticket(desk)
    token = staff_reply_address("2026-000001")
    deliver(
        desk,
        build_mail(
            sender=TECHNICIAN,
            to=[token],
            subject="x",
            body="#prendi\n#tipo commerciale\n#impatto bloccato\n"
            "#articolo Multi / Lynfa Studio (Cod. 2)",
        ),
    )
    data = ticket(desk)
    assert (data["status"], data["request_type"], data["impact"], data["product"]) == (
        "IN_GESTIONE",
        "commerciale",
        "bloccato",
        "Multi / Lynfa Studio (Cod. 2)",
    )
    deliver(
        desk,
        build_mail(
            sender=TECHNICIAN,
            to=[token],
            subject="y",
            body="#nota\nIl cliente ha una versione vecchia.",
        ),
    )
    data = ticket(desk)
    assert data["messages"][-1]["internal"] is True
    assert data["status"] == "IN_GESTIONE"
    deliver(desk, build_mail(sender=TECHNICIAN, to=[token], subject="z", body="#chiudi"))
    assert ticket(desk)["status"] == "CHIUSO"


def test_unknown_sender_rejected_by_default(desk: Gateway) -> None:
    assert deliver(desk, build_mail(sender="stranger@nowhere.test")) == "ignored"
    assert count(desk, Ticket) == 0
    with desk.sessions() as session:
        [row] = list_inbox(session)
    assert row["status"] == "ignored" and "unknown sender" in row["reason"]


def test_unknown_sender_accepted_under_unverified_account(settings: Settings, clock: Any) -> None:
    accepting = Gateway(
        replace(settings, helpdesk=replace(settings.helpdesk, unknown_sender="accept")), clock
    )
    assert (
        deliver(accepting, build_mail(sender="Nuovo Cliente <nuovo@cliente.test>")) == "processed"
    )
    data = ticket(accepting)
    assert data["account"] == "nuovo@cliente.test" and data["verified_account"] is False
    with accepting.sessions() as session:
        account = session.execute(select(Account)).scalar_one()
        assert account.verified is False
    accepting.close()


def close_first_ticket(gateway: Gateway) -> None:
    open_first_ticket(gateway)
    token = staff_reply_address("2026-000001")
    deliver(gateway, build_mail(sender=TECHNICIAN, to=[token], subject="x", body="#chiudi"))


def test_mail_to_closed_ticket_is_refused(desk: Gateway) -> None:
    close_first_ticket(desk)
    assert deliver(desk, build_mail(subject="Re: [Ticket#2026-000001]", body="ancora")) == "ignored"
    data = ticket(desk)
    assert data["status"] == "CHIUSO" and len(data["messages"]) == 1
    assert data["events"][-1]["kind"] == "refused_mail"


def test_mail_to_closed_ticket_opens_linked_one(settings: Settings, clock: Any) -> None:
    gateway = Gateway(
        replace(settings, helpdesk=replace(settings.helpdesk, closed_reply="new_ticket")), clock
    )
    register_desk(gateway)
    close_first_ticket(gateway)
    deliver(gateway, build_mail(subject="Re: [Ticket#2026-000001] Errore", body="di nuovo"))
    second = ticket(gateway, "2026-000002")
    assert second["linked_ticket"] == "2026-000001" and second["status"] == "APERTO"
    assert second["subject"] == "Errore"
    gateway.close()


def test_failure_quarantines_and_retry_reprocesses(settings: Settings, clock: Any) -> None:
    def broken(store: Any, intent: Any, ticket: Any) -> QueuedMail | None:
        raise RuntimeError("template store unavailable")

    gateway = Gateway(settings, clock, mailer=broken)
    register_desk(gateway)
    assert deliver(gateway, build_mail()) == "quarantined"
    assert count(gateway, Ticket) == 0
    with gateway.sessions() as session:
        [row] = list_inbox(session)
    assert row["reason"] == "RuntimeError: template store unavailable"
    gateway.close()
    healthy = Gateway(settings, clock)
    assert healthy.retry(row["id"]) == "processed"
    assert count(healthy, Ticket) == 1
    healthy.close()


def test_form_fields_set_ticket_fields(desk: Gateway) -> None:
    body = (
        "Articolo: Multi / Lynfa Studio (Cod. 2)\nTipo di richiesta: Assistenza commerciale\n"
        "Impatto: Sono bloccato\n\nVorrei acquistare il modulo F24."
    )
    open_first_ticket(desk, body=body)
    data = ticket(desk)
    assert (data["product"], data["request_type"], data["impact"]) == (
        "Multi / Lynfa Studio (Cod. 2)",
        "commerciale",
        "bloccato",
    )
    assert data["messages"][0]["body"] == "Vorrei acquistare il modulo F24."
    assert data["rules"] == ["form-fields"]


def test_collaborator_in_cc_becomes_watcher(desk: Gateway) -> None:
    open_first_ticket(desk, sender=CUSTOMER, cc=[PERSON, "estraneo@altro.test"])
    assert ticket(desk)["watchers"] == [PERSON]


def test_ticket_numbers_unique_under_concurrency(desk: Gateway) -> None:
    mails = [build_mail(subject=f"Richiesta {i}", body=f"testo {i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda raw: deliver(desk, raw), mails))
    assert statuses == ["processed"] * 24
    with desk.sessions() as session:
        numbers = list(session.execute(select(Ticket.number)).scalars())
    assert sorted(numbers) == [f"2026-{i:06d}" for i in range(1, 25)]


def test_tag_format_is_configurable() -> None:
    assert format_tag("[Ticket#{number}]", "2026-000007") == "[Ticket#2026-000007]"


def test_null_envelope_sender_is_never_answered(desk: Gateway) -> None:
    received = desk.receive(build_mail(sender="stranger@nowhere.test"), transport="smtp",
                            envelope_from="")
    assert desk.process(received.inbox_id) == "ignored"
    assert count(desk, OutboxMail) == 0


def test_big_attachment_is_kept_whole(desk: Gateway) -> None:
    open_first_ticket(desk)
    payload = bytes(range(256)) * 12_000  # 3 MB, base64 runs far past the parser's limit
    raw = build_mail(subject="Re: [Ticket#2026-000001]", body="archivio",
                     attachments=[("archivio.zip", payload, "application/zip")])
    received = desk.receive(raw, transport="pipe")
    assert desk.process(received.inbox_id) == "processed"
    [attachment] = ticket(desk)["messages"][-1]["attachments"]
    assert attachment["sha256"] == hashlib.sha256(payload).hexdigest()
    with desk.sessions() as session:
        stored = session.execute(select(InboxRaw.raw)).scalars().all()
    assert raw in stored


@pytest.mark.parametrize("results, acts", [
    ("mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com", True),
    ("mx.example.com; dkim=fail header.d=example.com; dmarc=fail header.from=example.com", False),
    ("evil.test; dmarc=pass header.from=example.com", False),  # not a trusted MTA
    ("mx.example.com; dkim=pass header.d=other.test", False),  # another domain's signature
    ("mx.example.com; (((garbage", False),
])
def test_technician_vouched_by_trusted_mta(settings: Settings, clock: Any, results: str,
                                           acts: bool) -> None:
    trusting = Gateway(replace(settings, helpdesk=replace(
        settings.helpdesk, trusted_authserv_ids=("mx.example.com",))), clock)
    register_desk(trusting)
    open_first_ticket(trusting)
    received = trusting.receive(build_mail(
        sender=TECHNICIAN, subject="Re: [Ticket#2026-000001]", body="#chiudi",
        headers={"Authentication-Results": results}), transport="lmtp",
        trust_authentication_results=True)
    status = trusting.process(received.inbox_id)
    assert (status, ticket(trusting)["status"]) == (
        ("processed", "CHIUSO") if acts else ("quarantined", "APERTO"))
    trusting.close()


def test_an_address_too_long_to_answer_is_no_sender(desk: Gateway) -> None:
    """Over 254 characters no server takes the address (RFC 5321): the next header that
    names a sender is used, and with none the mail is quarantined with the reason."""
    overlong = "x" * 250 + "@studiorossi.it"
    assert deliver(desk, build_mail(sender=overlong, headers={"Reply-To": PERSON})) == "processed"
    assert ticket(desk)["person"] == PERSON

    assert deliver(desk, build_mail(sender=overlong, subject="Di nuovo")) == "quarantined"
    with desk.sessions() as session:
        [row] = [r for r in list_inbox(session) if r["status"] == "quarantined"]
    assert row["reason"].startswith("no valid sender address")
    assert "254" in row["reason"]


def _refusals(gateway: Gateway) -> list[OutboxMail]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                    .where(OutboxMail.kind == "unknown_sender")
                                    .order_by(OutboxMail.id)))


def test_no_backscatter_a_stranger_is_answered_only_at_its_envelope_address(
    desk: Gateway,
) -> None:
    """From is anyone's to write: the refusal goes to it only when the envelope sender
    (here the Return-Path its MTA wrote) is the same address, and never quotes the
    stranger's subject."""
    spam = "Compra ora: http://spam.test"
    deliver(desk, build_mail(sender="victim@third.test", subject=spam,
                             headers={"Return-Path": "<spammer@evil.test>"}))
    deliver(desk, build_mail(sender="victim@third.test", subject=spam))  # no envelope at all
    assert _refusals(desk) == []
    deliver(desk, build_mail(sender="nuovo@studioverdi.it", subject=spam,
                             headers={"Return-Path": "<Nuovo@StudioVerdi.it>"}))
    [refusal] = _refusals(desk)
    assert refusal.recipients == ["nuovo@studioverdi.it"]
    assert "spam.test" not in str(refusal.intent) and "Compra" not in str(refusal.intent)
    with desk.sessions() as session:
        assert [r["status"] for r in list_inbox(session)] == ["ignored"] * 3


def test_no_refusal_to_our_own_group_addresses(desk: Gateway) -> None:
    deliver(desk, build_mail(sender="tecnici@example.com",
                             headers={"Return-Path": "<tecnici@example.com>"}))
    assert _refusals(desk) == []


def test_refusals_to_strangers_have_an_hourly_cap(settings: Settings, clock: Any) -> None:
    capped = Gateway(replace(settings, outbound=replace(
        settings.outbound, stranger_answers_per_hour=3)), clock)
    register_desk(capped)
    for n in range(6):
        stranger = f"s{n}@altrove.test"
        deliver(capped, build_mail(sender=stranger, headers={"Return-Path": f"<{stranger}>"}))
    assert len(_refusals(capped)) == 3
    clock.advance(hours=1)
    deliver(capped, build_mail(sender="tardi@altrove.test",
                               headers={"Return-Path": "<tardi@altrove.test>"}))
    assert len(_refusals(capped)) == 4
    capped.close()


def test_a_group_without_an_address_gets_one_notice_per_member(
    config_data: dict[str, Any], clock: Any
) -> None:
    from mailgateway.config import settings_from_mapping
    from mailgateway.directory import add_staff

    config_data["groups"] = {}
    gateway = Gateway(settings_from_mapping(config_data), clock)
    try:
        register_desk(gateway)
        with gateway.sessions.begin() as session:
            add_staff(session, clock, name="Marta Gialli", email="marta@example.com",
                      group="tecnica")
        deliver(gateway, build_mail())
        with gateway.sessions() as session:
            notices = session.scalars(select(OutboxMail.recipients).where(
                OutboxMail.kind == "new_ticket_notice")).all()
        assert sorted(notices) == [["luca@example.com"], ["marta@example.com"]]
    finally:
        gateway.close()
