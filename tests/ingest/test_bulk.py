"""Bulk import: a batch is one transaction with no savepoints, redone mail by mail
when one of its mails fails. What the batch makes must be what one-by-one
processing would make."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings, settings_from_mapping
from mailgateway.db.models import Event, InboxMail, OutboxMail, Ticket
from mailgateway.errors import ConfigError
from mailgateway.ingest.batch import receive_batch
from mailgateway.ingest.bulk import import_archive
from mailgateway.pipeline.prepare import finding_settings, prepare_mail
from mailgateway.service import Gateway, Outcome
from mailgateway.views import show_ticket
from tests.mails import (
    CUSTOMER,
    PERSON,
    TECHNICIAN,
    build_mail,
    failing_mailer,
    inbox_fates,
    register_desk,
    staff_reply_address,
)

TAG = "[Ticket#{number}]"


def batch(gateway: Gateway, mails: Sequence[bytes]) -> list[Outcome]:
    settings = finding_settings(gateway.settings)
    return receive_batch(gateway, [prepare_mail(raw, settings) for raw in mails], "import")


def ticket(gateway: Gateway, number: str) -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, TAG, number)


def staff_reply_to(settings: Settings, number: str) -> str:
    return staff_reply_address(number, secret=settings.helpdesk.secret)


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    return gateway


def test_a_batch_threads_and_moves_tickets_opened_earlier_in_it(
    desk: Gateway, settings: Settings
) -> None:
    mails = [
        build_mail(message_id="first@client.test", subject="Errore su MOCO"),
        build_mail(sender=CUSTOMER, subject="Stampa F24 bloccata"),
        build_mail(subject="R: [Ticket#2026-000001] Errore su MOCO",
                   body="Aggiungo: succede da ieri."),
        build_mail(sender=TECHNICIAN, to=(staff_reply_to(settings, "2026-000001"),),
                   subject="R: [Ticket#2026-000001] Errore su MOCO",
                   body="#prendi\nReinstallate il modulo MOCO, poi riprovate."),
        build_mail(subject="Re: Errore su MOCO", body="Fatto, ora funziona.",
                   in_reply_to="first@client.test", references=["first@client.test"]),
    ]
    outcomes = batch(desk, mails)

    assert [o.decision for o in outcomes] == [
        "OpenTicket", "OpenTicket", "CustomerReply", "StaffReply", "CustomerReply"]
    first, second = ticket(desk, "2026-000001"), ticket(desk, "2026-000002")
    # Customer reply, technician's answer (RISPOSTO), customer reply again: IN_GESTIONE.
    assert first["status"] == "IN_GESTIONE"
    assert [m["direction"] for m in first["messages"]] == ["in", "in", "out", "in"]
    assert second["status"] == "APERTO"
    assert inbox_fates(desk) == [("processed", "2026-000001"), ("processed", "2026-000002"),
                                 ("processed", "2026-000001"), ("processed", "2026-000001"),
                                 ("processed", "2026-000001")]
    with desk.sessions() as session:
        kinds = session.execute(select(OutboxMail.kind).order_by(OutboxMail.id)).scalars().all()
    assert kinds.count("answer") == 1
    assert kinds.count("acknowledgment") == 2


def test_the_same_mail_twice_in_a_batch_has_one_effect(desk: Gateway) -> None:
    raw = build_mail(message_id="twice@client.test")
    assert [o.status for o in batch(desk, [raw, raw])] == ["processed", "duplicate"]
    assert [o.status for o in batch(desk, [raw])] == ["duplicate"]
    assert inbox_fates(desk) == [("processed", "2026-000001")]


def test_a_failing_mail_is_quarantined_alone_and_the_batch_goes_on(
    settings: Settings, clock: FixedClock
) -> None:
    gateway = Gateway(settings, clock, mailer=failing_mailer(settings, clock))
    try:
        register_desk(gateway)
        mails = [
            build_mail(subject="Primo"),
            # Fails after its ticket was given an id and a number: both roll back with
            # its savepoint. The number is given to the next ticket, the id never is.
            build_mail(subject="Secondo", body="BOOM", message_id="second@client.test"),
            build_mail(subject="Terzo", message_id="third@client.test"),
            build_mail(subject="R: [Ticket#2026-000002] Terzo", body="Ancora io."),
            # References the failed mail only: no ticket knows it, whatever the batch
            # remembered of it before it rolled back.
            build_mail(subject="Re: Secondo", references=["second@client.test"]),
        ]
        outcomes = batch(gateway, mails)

        assert [o.status for o in outcomes] == [
            "processed", "quarantined", "processed", "processed", "processed"]
        assert inbox_fates(gateway) == [
            ("processed", "2026-000001"), ("quarantined", None),
            ("processed", "2026-000002"), ("processed", "2026-000002"),
            ("processed", "2026-000003")]
        with gateway.sessions() as session:
            reason = session.execute(
                select(InboxMail.reason).where(InboxMail.status == "quarantined")).scalar_one()
            subjects = session.execute(select(Ticket.subject).order_by(Ticket.id)).scalars().all()
            acknowledged = session.execute(
                select(OutboxMail.ticket_id).where(OutboxMail.kind == "acknowledgment")
            ).scalars().all()
            opened = session.execute(
                select(Event.ticket_id).where(Event.kind == "created")).scalars().all()
            ticket_ids = session.execute(select(Ticket.id).order_by(Ticket.id)).scalars().all()
        assert reason == "RuntimeError: the template engine exploded"
        assert subjects == ["Primo", "Terzo", "Secondo"]
        assert len(acknowledged) == 3
        # The failed mail's event went with its savepoint.
        assert sorted(opened) == ticket_ids
        [opening, reply] = ticket(gateway, "2026-000002")["messages"]
        assert "MPRI" in opening["body"]
        assert reply["body"] == "Ancora io."
    finally:
        gateway.close()


def test_import_of_an_archive_bigger_than_a_batch(
    desk: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over one batch, parsing runs in worker processes; every mail gets its ticket.
    The progress bar (shown on a terminal) goes to stderr and leaves nothing behind."""
    mbox = tmp_path / "archive.mbox"
    with mbox.open("wb") as stream:
        for index in range(230):
            raw = build_mail(sender=PERSON if index % 2 else CUSTOMER,
                             subject=f"Richiesta {index}", message_id=f"m{index}@client.test")
            stream.write(b"From archive@example.com Mon Mar  2 10:00:00 2026\n" + raw + b"\n")
    report = import_archive(desk, str(mbox), progress=True)

    assert report.outcomes["new_ticket"] == 230
    assert report.failed == 0
    assert report.summary().startswith("230 mails in ")
    assert "importing" in capsys.readouterr().err
    with desk.sessions() as session:
        numbers = session.execute(select(Ticket.number).order_by(Ticket.id)).scalars().all()
    assert numbers == [f"2026-{n:06d}" for n in range(1, 231)]


def test_a_calendar_the_configuration_breaks_stops_the_import_before_any_mail(
    config_data: dict[str, Any], clock: FixedClock, tmp_path: Path
) -> None:
    """Opening a ticket needs the office calendar: a bad one is said once, up front,
    rather than quarantining every mail of the archive."""
    config_data["sla"] = {"business_hours": "always"}
    with pytest.raises(ConfigError, match="business_hours"):  # refused when loaded…
        settings_from_mapping(config_data)
    del config_data["sla"]
    settings = settings_from_mapping(config_data)
    # …and by the import, for settings made some other way.
    broken = replace(settings, sla=replace(settings.sla, business_hours="always"))
    gateway = Gateway(broken, clock)
    try:
        register_desk(gateway)
        archive = tmp_path / "archive"
        archive.mkdir()
        (archive / "1.eml").write_bytes(build_mail(sender=CUSTOMER, subject="Richiesta"))
        with pytest.raises(ConfigError, match="business_hours"):
            import_archive(gateway, str(archive))
        with gateway.sessions() as session:
            assert session.execute(select(InboxMail.id)).first() is None
    finally:
        gateway.close()


def test_tickets_opened_one_transaction_at_a_time_get_consecutive_ids(desk: Gateway) -> None:
    """A ticket's id is known before its row is written; a transaction that opens one
    ticket takes one id (PostgreSQL: from the sequence), and the ids go on from the
    largest written."""
    for subject in ("Primo", "Secondo", "Terzo"):
        received = desk.receive(build_mail(subject=subject), transport="smtp")
        assert desk.process(received.inbox_id) == "processed"
    batch(desk, [build_mail(subject="Quarto"), build_mail(subject="Quinto")])
    with desk.sessions() as session:
        ids = session.execute(select(Ticket.id).order_by(Ticket.id)).scalars().all()
    assert ids == list(range(ids[0], ids[0] + 5))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_a_killed_import_leaves_no_worker_behind(
    desk: Gateway, config_file: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    for index in range(1500):
        (archive / f"{index:05}.eml").write_bytes(
            build_mail(sender=CUSTOMER, subject=f"Richiesta {index}", body="x" * 2000))
    command = [sys.executable, "-m", "mailgateway", "--config", str(config_file), "import",
               str(archive)]
    importing = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (workers := _children(importing.pid)):
            assert importing.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.02)
        importing.kill()
        importing.wait()
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{w}").exists() and "Z" not in _state(w) for w in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived the import"
            time.sleep(0.05)
    finally:
        if importing.poll() is None:
            importing.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
