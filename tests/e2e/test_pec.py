"""A customer who writes by PEC, end to end over SMTP: the envelope comes to the
listener, the acknowledgment goes out through the relay, and the provider's real
receipts come back to the listener and certify (or refuse) its delivery."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.directory import add_account
from mailgateway.outbound.commands import list_outbox
from mailgateway.service import Gateway
from mailgateway.views import show_ticket
from tests.e2e.test_cli import run, run_json
from tests.e2e.test_conversation import mails_to, send_outbox
from tests.ingest.test_smtp import RunningListener, send, smtp_settings
from tests.mails import GROUP, build_mail, register_desk
from tests.pec_mails import envelope, readdressed, sample
from tests.smtp_sink import SmtpSink
from tests.smtp_sink import smtp_sink as smtp_sink  # the relay, as a fixture

ROME = timezone(timedelta(hours=1))
STUDIO = "studio.rossi@pec.studiorossi.it"
PROVIDER = "posta-certificata@fakepec.it"
SUPPORT = "assistenza@example.com"


@pytest.fixture
def desk(settings: Settings, smtp_sink: SmtpSink, clock: FixedClock) -> Iterator[Gateway]:
    relay = replace(settings.outbound, transport="smtp", host=smtp_sink.host,
                    port=smtp_sink.port, timeout_seconds=5)
    gateway = Gateway(replace(settings, outbound=relay), clock)
    register_desk(gateway)
    with gateway.sessions.begin() as session:
        add_account(session, clock, name="Studio Rossi (PEC)", email=STUDIO)
    yield gateway
    gateway.close()


@pytest.fixture
def listener(desk: Gateway) -> Iterator[RunningListener]:
    server = RunningListener(smtp_settings(), desk).start()
    yield server
    server.stop()


def acknowledged(desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink) -> str:
    """The studio writes by PEC; the acknowledgment is sent; its Message-ID."""
    inner = build_mail(sender=STUDIO, subject="Stampa F24 bloccata",
                       message_id="4f2a@pec.studiorossi.it",
                       body="Buongiorno,\nil programma non stampa.")
    raw = envelope(inner, sender=STUDIO, to=[SUPPORT], subject="Stampa F24 bloccata",
                   message_id="4f2a@pec.studiorossi.it",
                   when=datetime(2026, 3, 2, 10, 25, tzinfo=ROME))
    send(listener.port, raw, sender="posta-certificata@pec.provider.it")
    assert desk.process_pending() == 1
    send_outbox(desk)
    [ack] = mails_to(smtp_sink, STUDIO)
    assert ack["In-Reply-To"] == "<4f2a@pec.studiorossi.it>"
    [notice] = mails_to(smtp_sink, GROUP)
    text = notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert (f"Arrivato per PEC da {STUDIO}, certificato il 2 marzo 2026 alle ore 10:25 "
            "(Provider PEC S.p.A.).") in text
    return str(ack["Message-ID"]).strip("<>")


def test_receipts_over_smtp_certify_the_acknowledgments_delivery(
    desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink,
) -> None:
    message_id = acknowledged(desk, listener, smtp_sink)
    accepted = datetime(2026, 3, 2, 10, 31, 5, tzinfo=ROME)
    delivered = datetime(2026, 3, 2, 10, 31, 9, tzinfo=ROME)
    send(listener.port, readdressed(sample("accettazione.eml"), message_id, accepted),
         sender=PROVIDER)
    send(listener.port, readdressed(sample("avvenuta-consegna.eml"), message_id, delivered),
         sender=PROVIDER)
    assert desk.process_pending() == 2
    with desk.reads() as session:
        rows = {r["message_id"]: r for r in list_outbox(session, None, None)}
        ticket = show_ticket(session, desk.settings.helpdesk.ticket_tag, "2026-000001")
    ack = rows[message_id]
    assert ack["status"] == "delivered"
    assert ack["delivered_at"] == delivered.astimezone(UTC).isoformat()
    [shown] = [m for m in ticket["outbox"] if m["kind"] == "acknowledgment"]
    assert shown["delivered_at"] == "2026-03-02T09:31:09+00:00"
    assert ticket["messages"][0]["pec"]["certified_sender"] == STUDIO
    assert [e["kind"] for e in ticket["events"]].count("delivered") == 2
    smtp_sink.clear()
    send_outbox(desk)
    assert smtp_sink.deliveries == []  # the receipts were answered by nobody


def test_a_delivery_error_over_smtp_bounces_the_acknowledgment(
    desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink,
) -> None:
    message_id = acknowledged(desk, listener, smtp_sink)
    smtp_sink.clear()
    send(listener.port, readdressed(sample("errore-consegna.eml"), message_id),
         sender=PROVIDER)
    assert desk.process_pending() == 1
    with desk.reads() as session:
        rows = {r["message_id"]: r for r in list_outbox(session, None, None)}
        ticket = show_ticket(session, desk.settings.helpdesk.ticket_tag, "2026-000001")
    assert rows[message_id]["status"] == "bounced"
    [event] = [e for e in ticket["events"] if e["kind"] == "bounced"]
    assert "5.1.1" in event["reason"] and "rec@fakepec.it" in event["reason"]
    send_outbox(desk)
    [notice] = mails_to(smtp_sink, GROUP)  # the group told, once
    assert [d for d in smtp_sink.deliveries if STUDIO in d.rcpt_tos] == []
    assert "rec@fakepec.it" in notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_the_command_line_shows_pec_facts_and_sets_where_answers_go(
    config_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    assert run(capsys, config_file, "db", "upgrade")[0] == 0
    code, out, _ = run(capsys, config_file, "accounts", "add", "--name", "Studio Rossi",
                       "--email", STUDIO, "--answers-to", "Segreteria@StudioRossi.it")
    assert code == 0
    [account] = run_json(capsys, config_file, "accounts", "list")
    assert account["answers_to"] == "segreteria@studiorossi.it"
    code, out, _ = run(capsys, config_file, "accounts", "answers-to", STUDIO)
    assert (code, out.strip()) == (0, f"Answers to {STUDIO}'s PEC mail go to the PEC "
                                      "address it writes from.")
    assert run(capsys, config_file, "accounts", "answers-to", "nobody@x.it")[0] != 0
    listing = tmp_path / "accounts.csv"
    listing.write_text("name,email,answers_to\nStudio Bianchi,bianchi@pec.bianchi.it,"
                       "info@bianchi.it\n", encoding="utf-8")
    assert run(capsys, config_file, "accounts", "import", str(listing))[0] == 0
    answers = {a["email"]: a["answers_to"]
               for a in run_json(capsys, config_file, "accounts", "list")}
    assert answers == {STUDIO: None, "bianchi@pec.bianchi.it": "info@bianchi.it"}
    inner = build_mail(sender=STUDIO, subject="Stampa F24 bloccata", message_id="m@pec.it")
    mail = tmp_path / "pec.eml"
    mail.write_bytes(envelope(inner, sender=STUDIO, to=[SUPPORT], subject="Stampa F24 bloccata",
                              message_id="m@pec.it", when=datetime(2026, 3, 2, 10, 25,
                                                                   tzinfo=ROME)))
    now = ("--now", "2026-03-02T09:30:00Z")
    assert run(capsys, config_file, *now, "ingest", str(mail))[0] == 0
    code, out, _ = run(capsys, config_file, *now, "tickets", "show", "2026-000001")
    assert code == 0
    assert (f"[PEC] certified sender {STUDIO} at 2026-03-02T09:25:00+00:00 by Provider PEC "
            "S.p.A.") in out
    assert f"[mail] acknowledgment to {STUDIO}: pending" in out


def test_an_anomaly_envelope_warns_the_technicians(
    desk: Gateway, listener: RunningListener, smtp_sink: SmtpSink,
) -> None:
    inner = build_mail(sender=STUDIO, subject="Dalla casella ordinaria",
                       message_id="plain@studiorossi.it")
    raw = envelope(inner, sender=STUDIO, to=[SUPPORT], subject="Dalla casella ordinaria",
                   message_id="plain@studiorossi.it",
                   when=datetime(2026, 3, 2, 10, 25, tzinfo=ROME), anomaly=True)
    send(listener.port, raw, sender="posta-certificata@pec.provider.it")
    assert desk.process_pending() == 1
    send_outbox(desk)
    [notice] = mails_to(smtp_sink, GROUP)
    text = notice.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = notice.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Attenzione: anomalia PEC." in text and "anomalia PEC." in html
    assert len(mails_to(smtp_sink, STUDIO)) == 1  # the customer is acknowledged as usual
