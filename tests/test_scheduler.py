"""The scheduler: the reminder at 5 days, the auto-close at 7, the overdue signal,
with time moved by the injected clock (no sleeping)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from mailgateway.clock import FixedClock
from mailgateway.config import Settings, SlaSettings
from mailgateway.db.models import Account, Event, OutboxMail, Ticket, TicketStatus
from mailgateway.scheduler import Due, run_pass, what_is_due
from mailgateway.service import Gateway
from mailgateway.sla import first_response_due
from mailgateway.views import show_ticket
from tests.mails import (
    GROUP,
    PERSON,
    TECHNICIAN,
    build_mail,
    deliver,
    register_desk,
    staff_reply_address,
)

TAG = "[Ticket#{number}]"
ROME = "Europe/Rome"


def _ticket(gateway: Gateway, number: str = "2026-000001") -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, TAG, number)


def _outbox(gateway: Gateway, kind: str) -> list[OutboxMail]:
    with gateway.sessions() as session:
        return list(session.scalars(select(OutboxMail).options(undefer(OutboxMail.intent))
                                    .where(OutboxMail.kind == kind).order_by(OutboxMail.id)))


def _answer(gateway: Gateway, text: str = "Reinstalli il modulo MOCO.") -> None:
    assert deliver(gateway, build_mail(
        sender=TECHNICIAN, to=[staff_reply_address("2026-000001", GROUP)],
        subject="Re: [Ticket#2026-000001] Errore", body=text)) == "processed"


@pytest.fixture
def answered(gateway: Gateway, clock: FixedClock) -> Gateway:
    """Ticket 1, opened and answered by a technician at the clock's start: RISPOSTO."""
    register_desk(gateway)
    deliver(gateway, build_mail(message_id="request@client.test"))
    _answer(gateway)
    assert _ticket(gateway)["status"] == "RISPOSTO"
    return gateway


def _pass(gateway: Gateway, clock: FixedClock) -> list[tuple[str, Due]]:
    return [(h.number, h.due) for h in run_pass(gateway.engine, gateway.settings, clock)]


def test_reminder_at_five_days_then_closed_at_seven(answered: Gateway, clock: FixedClock) -> None:
    clock.advance(days=4, hours=23)
    assert _pass(answered, clock) == []
    clock.advance(hours=1)
    assert _pass(answered, clock) == [("2026-000001", Due.REMINDER)]
    assert _pass(answered, clock) == []  # once per RISPOSTO period
    [reminder] = _outbox(answered, "reminder")
    assert reminder.recipients == [PERSON]
    [answer] = _outbox(answered, "answer")
    # Threaded under the technician's answer it reminds of, in the same conversation.
    assert reminder.intent is not None
    assert reminder.intent["in_reply_to"] == answer.message_id
    assert reminder.intent["references"][0] == "request@client.test"
    closes = reminder.intent["context"]["closes_at"]
    assert closes == {"$datetime": "2026-03-09T09:30:00+00:00"}

    clock.advance(days=2)
    assert _pass(answered, clock) == [("2026-000001", Due.AUTOCLOSE)]
    assert _pass(answered, clock) == []
    data = _ticket(answered)
    assert data["status"] == "CHIUSO"
    [closing] = [e for e in data["events"] if e["kind"] == "autoclosed"]
    assert (closing["actor"], closing["reason"], closing["from"], closing["to"]) == (
        "scheduler", "autoclosed", "RISPOSTO", "CHIUSO")
    [notice] = _outbox(answered, "autoclose")
    assert notice.recipients == [PERSON]
    assert len(_outbox(answered, "reminder")) == 1


def test_a_reply_and_a_new_answer_start_another_seven_days(
    answered: Gateway, clock: FixedClock
) -> None:
    clock.advance(days=5)
    assert _pass(answered, clock) == [("2026-000001", Due.REMINDER)]
    clock.advance(days=1)  # day 6: the customer writes back, then the technician answers
    deliver(answered, build_mail(subject="R: [Ticket#2026-000001] Errore", body="Non va."))
    assert _ticket(answered)["status"] == "IN_GESTIONE"
    assert _pass(answered, clock) == []
    _answer(answered, "Provi ora.")
    clock.advance(days=2)  # day 8: seven days from the first answer, two from the last
    assert _pass(answered, clock) == []
    clock.advance(days=3)  # five days from the last answer: a new reminder
    assert _pass(answered, clock) == [("2026-000001", Due.REMINDER)]
    clock.advance(days=2)
    assert _pass(answered, clock) == [("2026-000001", Due.AUTOCLOSE)]
    assert len(_outbox(answered, "reminder")) == 2


def test_an_unanswered_request_is_signalled_to_its_group_once(
    gateway: Gateway, clock: FixedClock
) -> None:
    register_desk(gateway)
    deliver(gateway, build_mail())  # Monday 09:30 UTC: due Tuesday 09:30
    clock.advance(hours=23, minutes=59)
    assert _pass(gateway, clock) == []
    clock.advance(minutes=1)
    assert _pass(gateway, clock) == [("2026-000001", Due.OVERDUE)]
    assert _pass(gateway, clock) == []
    [signal_] = _outbox(gateway, "overdue")
    assert signal_.recipients == [GROUP]
    data = _ticket(gateway)
    assert [e["kind"] for e in data["events"]].count("overdue") == 1


def test_a_group_without_an_address_is_signalled_through_its_members(
    settings: Settings, clock: FixedClock, config_data: dict[str, Any]
) -> None:
    from mailgateway.config import settings_from_mapping

    config_data["groups"] = {}
    gateway = Gateway(settings_from_mapping(config_data), clock)
    try:
        register_desk(gateway)  # Luca is in group "tecnica", which has no address here
        deliver(gateway, build_mail())
        clock.advance(days=1)
        assert _pass(gateway, clock) == [("2026-000001", Due.OVERDUE)]
        [signal_] = _outbox(gateway, "overdue")
        assert signal_.recipients == [TECHNICIAN]  # never the helpdesk's own address
    finally:
        gateway.close()


@pytest.mark.parametrize("created, due", [
    # Friday 17:00 in Rome: 24 hours later is Saturday, so Monday's opening.
    ("2026-03-06T17:00", "2026-03-09T09:00"),
    # Thursday 23 April 17:00: Friday 24 is open; 24 hours later lands on time.
    ("2026-04-23T17:00", "2026-04-24T17:00"),
    # Friday 24 April 17:00: the weekend, with 25 April on it, then Monday 27.
    ("2026-04-24T17:00", "2026-04-27T09:00"),
    # Friday 3 April 2026 17:00: the weekend, then Easter Monday (6 April): Tuesday.
    ("2026-04-03T17:00", "2026-04-07T09:00"),
    # 24 April 2025 (Thursday) 10:00: Friday 25 April is the holiday itself.
    ("2025-04-24T10:00", "2025-04-28T09:00"),
])
def test_first_response_due_skips_weekends_and_italian_holidays(created: str, due: str) -> None:
    from zoneinfo import ZoneInfo

    rome = ZoneInfo(ROME)
    at = datetime.fromisoformat(created).replace(tzinfo=rome)
    expected = datetime.fromisoformat(due).replace(tzinfo=rome)
    assert first_response_due(at.astimezone(UTC), SlaSettings()) == expected.astimezone(UTC)


def test_what_is_due_is_a_pure_function_of_the_ticket_and_now(settings: Settings) -> None:
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    ticket = Ticket(status="RISPOSTO", answered_at=now - timedelta(days=5),
                    reminded_at=None, due_at=None, overdue_signalled_at=None)
    assert what_is_due(ticket, now, settings.scheduler) is Due.REMINDER
    ticket.reminded_at = now
    assert what_is_due(ticket, now, settings.scheduler) is None
    assert what_is_due(ticket, now + timedelta(days=2), settings.scheduler) is Due.AUTOCLOSE
    unanswered = Ticket(status="APERTO", answered_at=None, overdue_signalled_at=None,
                        due_at=now - timedelta(minutes=1))
    assert what_is_due(unanswered, now, settings.scheduler) is Due.OVERDUE
    unanswered.status = "CHIUSO"
    assert what_is_due(unanswered, now, settings.scheduler) is None


def _many_risposto(gateway: Gateway, count: int, answered_at: datetime) -> None:
    """`count` tickets of one account answered at `answered_at`, written directly."""
    with gateway.sessions.begin() as session:
        account = session.scalars(select(Account)).first()
        assert account is not None
        session.add_all(Ticket(
            number=f"2026-{900_000 + n:06d}", status=TicketStatus.RISPOSTO.value,
            subject=f"Richiesta {n}", request_type="tecnica", impact="difficolta",
            group="tecnica", account=account, language="it", rules=[], watchers=[],
            created_at=answered_at, updated_at=answered_at, answered_at=answered_at,
            due_at=answered_at) for n in range(count))


def _one_each(gateway: Gateway, kind: str) -> Counter[int]:
    with gateway.sessions() as session:
        return Counter(session.scalars(
            select(OutboxMail.ticket_id).where(OutboxMail.kind == kind)))


def test_two_passes_at_once_send_each_mail_once(
    gateway: Gateway, clock: FixedClock
) -> None:
    register_desk(gateway)
    _many_risposto(gateway, 300, clock.now())
    clock.advance(days=5)
    results: list[list[tuple[str, Due]]] = []
    passes = [threading.Thread(target=lambda: results.append(_pass(gateway, clock)))
              for _ in range(2)]
    for each in passes:
        each.start()
    for each in passes:
        each.join()
    assert sum(len(r) for r in results) == 300
    reminders = _one_each(gateway, "reminder")
    assert len(reminders) == 300 and set(reminders.values()) == {1}


def test_a_pass_killed_midway_leaves_whole_tickets_and_the_next_finishes(
    gateway: Gateway, clock: FixedClock, config_file: Path
) -> None:
    register_desk(gateway)
    _many_risposto(gateway, 600, clock.now())
    at = (clock.now() + timedelta(days=7)).isoformat()
    command = [sys.executable, "-m", "mailgateway", "--config", str(config_file), "--now", at,
               "scheduler", "--once"]
    root = Path(__file__).resolve().parents[1]
    killed = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not _one_each(gateway, "autoclose"):
        assert killed.poll() is None and time.monotonic() < deadline, "the pass never began"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    halfway = sum(_one_each(gateway, "autoclose").values())
    subprocess.run(command, cwd=root, check=True, capture_output=True)
    notices = _one_each(gateway, "autoclose")
    assert len(notices) == 600 and set(notices.values()) == {1}
    with gateway.sessions() as session:
        closings = Counter(session.scalars(
            select(Event.ticket_id).where(Event.kind == "autoclosed")))
        open_left = session.scalar(select(func.count()).select_from(Ticket).where(
            Ticket.status != TicketStatus.CHIUSO.value))
    assert set(closings.values()) == {1} and len(closings) == 600
    assert open_left == 0
    assert 0 < halfway <= 600


def test_scheduler_once_on_the_command_line(
    answered: Gateway, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from mailgateway.cli import main

    at = "2026-03-07T10:00:00+00:00"
    assert main(["--config", str(config_file), "--now", at, "scheduler", "--once",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"at": at, "handled": [{"ticket": "2026-000001", "action": "reminder"}]}
    assert main(["--config", str(config_file), "--now", at, "scheduler", "--once"]) == 0
    assert "0 reminder, 0 autoclose, 0 overdue" in capsys.readouterr().out


def test_tickets_list_overdue(gateway: Gateway, config_file: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mailgateway.cli import main

    register_desk(gateway)
    deliver(gateway, build_mail(subject="Primo"))
    deliver(gateway, build_mail(subject="Secondo"))
    deliver(gateway, build_mail(sender=TECHNICIAN, to=[staff_reply_address("2026-000002", GROUP)],
                                subject="Re: [Ticket#2026-000002]", body="Fatto."))
    listing = ["--config", str(config_file), "--now", "2026-03-03T10:00:00Z", "tickets", "list",
               "--overdue", "--json"]
    assert main(listing) == 0
    assert [t["number"] for t in json.loads(capsys.readouterr().out)] == ["2026-000001"]
    listing[3] = "2026-03-03T09:00:00Z"  # before the due time: nothing overdue yet
    assert main(listing) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_serve_runs_the_scheduler_and_stops_it_cleanly(
    gateway: Gateway, config_data: dict[str, Any], tmp_path: Path
) -> None:
    """`serve` handles a ticket time made due, and SIGTERM ends it with exit 0."""
    from tests.conftest import write_toml
    from tests.ingest.test_smtp import Serve, free_port, wait_until

    register_desk(gateway)
    _many_risposto(gateway, 3, datetime.now(UTC) - timedelta(days=8))
    port = free_port()
    config_data["smtp"] = {**config_data["smtp"], "port": port}
    config_data["scheduler"] = {"interval_seconds": 1}
    server = Serve(write_toml(config_data, tmp_path / "serve.toml"), port,
                   tmp_path / "serve.log").start()
    try:
        wait_until(lambda: len(_one_each(gateway, "autoclose")) == 3, timeout=30,
                   what="the scheduler to close the three tickets")
        assert server.signal(signal.SIGTERM) == 0, server.tail()
    finally:
        server.kill()
    assert set(_one_each(gateway, "autoclose").values()) == {1}
