"""The IMAP poller against a real Dovecot: backlog, IDLE, kicks, crashes, folders, TLS.

No IMAP mocks: every test talks to a throw-away Dovecot (tests/dovecot.py), and
failures are produced the way they happen in production (an admin's
`doveadm kick`, a folder recreated under us, a process dying between the
commit and the move).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.utils import make_msgid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from structlog.testing import capture_logs

from mailgateway.config import ImapSettings
from mailgateway.db.models import InboxMail, Ticket
from mailgateway.errors import ConfigError, TemporaryError
from mailgateway.ingest import Received, Receiver
from mailgateway.ingest.imap import (
    ImapConnectionError,
    ImapFolderError,
    ImapLoginError,
    ImapPoller,
    StoreError,
)
from mailgateway.service import Gateway
from mailgateway.telemetry import TALLY
from tests.dovecot import BASE_CAPABILITIES, REQUIRE_ENV, Dovecot, dovecot_available
from tests.mails import CUSTOMER, TECHNICIAN, build_mail, deliver, register_desk

# These tests read the poller's info lines; a test before may have set a higher level.
pytestmark = pytest.mark.usefixtures("every_log_level")

SUPPORT = "assistenza@example.com"


# ---- helpers ----------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll `condition` with short waits; returns the seconds it took, fails on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.02)
    return time.monotonic() - started


def make_mail(subject: str) -> bytes:
    """A new request from Studio Rossi's registered main address."""
    return build_mail(sender=CUSTOMER, subject=subject, message_id=make_msgid()[1:-1])


class Desk:
    """The real gateway with a registered desk, and the reads the tests check effects with."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        register_desk(gateway)

    def ticket_subjects(self) -> list[str]:
        with self.gateway.sessions() as session:
            return sorted(session.scalars(select(Ticket.subject)))

    def tickets(self) -> int:
        with self.gateway.sessions() as session:
            return int(session.scalar(select(func.count(Ticket.id))) or 0)

    def inbox(self) -> list[InboxMail]:
        with self.gateway.sessions() as session:
            return list(session.scalars(select(InboxMail).order_by(InboxMail.id)))

    def open_ticket(self, subject: str) -> str:
        """Open a ticket directly (as another transport would); returns its number."""
        deliver(self.gateway, make_mail(subject))
        with self.gateway.sessions() as session:
            number = session.scalar(select(Ticket.number).where(Ticket.subject == subject))
        assert number is not None
        return number


@dataclass
class Wrapped:
    """A `Receiver` that delegates to another and lets a test intervene around each call."""

    inner: Receiver
    before_receive: Callable[[int], None] = lambda n: None
    before_process: Callable[[int], None] = lambda n: None
    after_process: Callable[[int], None] = lambda n: None
    receives: int = 0
    processes: int = 0
    fate_reads: int = 0
    outcomes: list[str] = field(default_factory=list)

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        trust_authentication_results: bool = False,
    ) -> Received:
        self.receives += 1
        self.before_receive(self.receives)
        return self.inner.receive(
            raw, transport=transport, envelope_from=envelope_from, envelope_to=envelope_to,
            trust_authentication_results=trust_authentication_results,
        )

    def process(self, inbox_id: int) -> str:
        self.processes += 1
        self.before_process(self.processes)
        status = self.inner.process(inbox_id)
        self.outcomes.append(status)
        self.after_process(self.processes)
        return status

    def statuses(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        self.fate_reads += 1
        return self.inner.statuses(inbox_ids)

    def accepts_recipient(self, address: str) -> bool:
        return self.inner.accepts_recipient(address)

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        return self.inner.refusal(raw, envelope_from)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


class RunningPoller:
    """`ImapPoller.run` on its own event loop in a thread, as `serve` would run it."""

    def __init__(self, poller: ImapPoller) -> None:
        self.poller = poller
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._ready.set()
            await self.poller.run(self._stopping)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> RunningPoller:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self, timeout: float = 5.0) -> float:
        """Set `stopping` and wait for `run` to return; returns how long that took."""
        started = time.monotonic()
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ran out and closed meanwhile
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the poller did not stop"
        return time.monotonic() - started

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


# ---- fixtures ---------------------------------------------------------------------------


def _require_dovecot() -> None:
    if not dovecot_available():
        reason = "Dovecot (dovecot, doveadm) is not installed or cannot run here"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1")
        pytest.skip(reason)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    _require_dovecot()
    with Dovecot(username=SUPPORT) as server:
        yield server


@pytest.fixture
def desk(gateway: Gateway) -> Desk:
    return Desk(gateway)


def imap_settings(server: Dovecot, **changes: object) -> ImapSettings:
    settings = ImapSettings(
        host="127.0.0.1",
        port=server.port,
        username=server.username,
        password=server.password,
        poll_seconds=1,
        idle_seconds=30,
        batch_size=7,
        timeout_seconds=10,
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


def make_poller(server: Dovecot, receiver: Receiver | Desk, **changes: object) -> ImapPoller:
    """A poller with short reconnect waits; a `Desk` stands for its real gateway."""
    if isinstance(receiver, Desk):
        receiver = receiver.gateway
    return ImapPoller(
        imap_settings(server, **changes),
        receiver,
        reconnect_initial_seconds=0.05,
        reconnect_max_seconds=0.5,
    )


# ---- tests ------------------------------------------------------------------------------


def test_backlog_of_50_becomes_50_tickets_and_leaves_inbox(dovecot: Dovecot, desk: Desk) -> None:
    dovecot.append_many("INBOX", [make_mail(f"Richiesta {n}") for n in range(50)])

    handled = make_poller(dovecot, desk).run_once()  # batches of 7

    assert handled == 50
    assert desk.ticket_subjects() == sorted(f"Richiesta {n}" for n in range(50))
    assert dovecot.count("INBOX") == 0
    assert dovecot.count("Processed") == 50
    rows = desk.inbox()
    assert len(rows) == 50
    assert {(r.transport, tuple(r.envelope_to), r.status) for r in rows} == {
        ("imap", (SUPPORT,), "processed")
    }
    assert make_poller(dovecot, desk).run_once() == 0


def test_mail_appended_while_idle_is_a_ticket_within_2s(dovecot: Dovecot, desk: Desk) -> None:
    dovecot.append("INBOX", make_mail("Prima"))
    with RunningPoller(make_poller(dovecot, desk)):
        wait_until(lambda: dovecot.count("Processed") == 1, what="the first mail")
        for n in range(2, 5):
            dovecot.append("INBOX", make_mail(f"Mentre aspetta {n}"))
            took = wait_until(
                partial(lambda want: desk.tickets() == want, n),
                timeout=2.0,
                what="the mail appended while idle",
            )
            assert took < 2.0
    assert dovecot.count("INBOX") == 0


def test_stopping_interrupts_idle_promptly(dovecot: Dovecot, desk: Desk) -> None:
    """…and /metrics' `mailgateway_imap_connected` follows the connection."""
    poller = make_poller(dovecot, desk)
    with RunningPoller(poller) as running:
        dovecot.append("INBOX", make_mail("Uno"))
        wait_until(lambda: dovecot.count("Processed") == 1)
        assert TALLY.snapshot().imap_connected[poller.mailbox] is True
        assert running.stop() < 2.0
    assert running.error is None
    assert TALLY.snapshot().imap_connected[poller.mailbox] is False


def test_kick_reconnects_without_losing_or_doubling(dovecot: Dovecot, desk: Desk) -> None:
    with RunningPoller(make_poller(dovecot, desk)) as running:
        dovecot.append_many("INBOX", [make_mail(f"Prima {n}") for n in range(5)])
        wait_until(lambda: dovecot.count("Processed") == 5, what="the first five")
        with capture_logs() as logs:
            assert dovecot.kick()
            dovecot.append_many("INBOX", [make_mail(f"Dopo {n}") for n in range(5)])
            wait_until(lambda: dovecot.count("Processed") == 10, what="mail after the kick")
            wait_until(lambda: any(e["event"] == "imap recovered" for e in logs))
        assert running.alive
    assert desk.tickets() == 10
    assert len(desk.inbox()) == 10
    assert dovecot.count("INBOX") == 0
    assert dovecot.count("Processed") == 10  # no mail moved twice
    events = [entry["event"] for entry in logs]
    assert events.count("imap connection lost, reconnecting") == 1, events
    assert "imap recovered" in events


def test_kick_between_commit_and_move_has_no_second_effect(dovecot: Dovecot, desk: Desk) -> None:
    def kick_on_third(n: int) -> None:
        if n == 3:
            dovecot.kick()  # the batch's MOVE, after the sixth mail, then fails
            dovecot.wait_disconnected()

    receiver = Wrapped(desk.gateway, after_process=kick_on_third)
    dovecot.append_many("INBOX", [make_mail(f"Lotto {n}") for n in range(6)])
    with RunningPoller(make_poller(dovecot, receiver, batch_size=50)):
        wait_until(lambda: dovecot.count("Processed") == 6, what="all six moved")
    assert dovecot.count("INBOX") == 0
    assert desk.tickets() == 6
    assert len(desk.inbox()) == 6
    assert receiver.receives == 6  # remembered UIDs were not fetched and stored again
    assert receiver.processes == 12  # processed again after the reconnect: no effect
    assert set(receiver.outcomes) == {"processed"}


@pytest.mark.parametrize("point", ["before_process", "after_process"])
def test_crash_between_commit_and_move_then_restart(
    point: str, dovecot: Dovecot, desk: Desk
) -> None:
    def crash(n: int) -> None:
        raise Crash

    dovecot.append("INBOX", make_mail("Dopo il crash"))
    with pytest.raises(Crash):
        make_poller(dovecot, Wrapped(desk.gateway, **{point: crash})).run_once()  # type: ignore[arg-type]
    assert dovecot.count("INBOX") == 1  # committed, not moved
    assert len(desk.inbox()) == 1

    with capture_logs() as logs:
        assert make_poller(dovecot, desk).run_once() == 1  # the restarted process
    [handled] = [e for e in logs if e["event"] == "imap mail handled"]
    assert handled["status"] == "processed"
    assert "duplicate mail" in [e["event"] for e in logs]  # stored once, found again

    assert desk.ticket_subjects() == ["Dopo il crash"]
    [row] = desk.inbox()
    assert row.status == "processed"
    assert dovecot.count("INBOX") == 0
    assert dovecot.count("Processed") == 1


def test_crash_inside_run_reaches_the_caller(dovecot: Dovecot, desk: Desk) -> None:
    def crash(n: int) -> None:
        raise Crash

    dovecot.append("INBOX", make_mail("Crash nel server"))
    poller = make_poller(dovecot, Wrapped(desk.gateway, after_process=crash))
    with RunningPoller(poller) as running:
        wait_until(lambda: not running.alive, what="run to end with the crash")
    assert isinstance(running.error, Crash)
    assert dovecot.count("INBOX") == 1


def test_quarantined_mail_goes_to_failed(dovecot: Dovecot, desk: Desk) -> None:
    number = desk.open_ticket("Stampa bloccata")
    # A technician's address without a reply token: a forged command, quarantined.
    forged = build_mail(sender=TECHNICIAN, subject=f"[Ticket#{number}]", body="#chiudi\nRisolto.")
    dovecot.append("INBOX", forged)
    dovecot.append("INBOX", make_mail("Buona"))

    assert make_poller(dovecot, desk).run_once() == 2

    assert dovecot.count("Failed") == 1
    assert dovecot.count("Processed") == 1
    assert dovecot.count("INBOX") == 0
    statuses = {r.subject: r.status for r in desk.inbox() if r.transport == "imap"}
    assert statuses == {f"[Ticket#{number}]": "quarantined", "Buona": "processed"}


class ProcessingElsewhere:
    """Processing on a thread of its own, as in a worker process: woken with a stored
    mail's id, it processes every mail waiting."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.woken: list[int] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def wake(self, inbox_id: int) -> None:
        self.woken.append(inbox_id)
        self._wake.set()

    def _main(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(0.1):
                self._wake.clear()
                self.gateway.process_pending()

    def __enter__(self) -> ProcessingElsewhere:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_mail_handed_over_is_moved_by_the_fate_its_processors_gave_it(
    dovecot: Dovecot, desk: Desk
) -> None:
    """With processing elsewhere (`serve --workers`), the poller only stores, wakes the
    processors and moves each mail once its fate is in the database."""
    number = desk.open_ticket("Stampa bloccata")
    forged = build_mail(sender=TECHNICIAN, subject=f"[Ticket#{number}]", body="#chiudi\nRisolto.")
    dovecot.append("INBOX", forged)
    dovecot.append("INBOX", make_mail("Buona"))
    receiver = Wrapped(desk.gateway)

    with ProcessingElsewhere(desk.gateway) as processors:
        poller = ImapPoller(imap_settings(dovecot), receiver, hand_over=processors.wake)
        assert poller.run_once() == 2

    assert receiver.processes == 0  # not by the poller
    imap_rows = [r for r in desk.inbox() if r.transport == "imap"]
    assert sorted(processors.woken) == [r.id for r in imap_rows]
    assert {r.subject: r.status for r in imap_rows} == {
        f"[Ticket#{number}]": "quarantined", "Buona": "processed"}
    assert (dovecot.count("Failed"), dovecot.count("Processed"), dovecot.count("INBOX")) == (
        1, 1, 0)


def test_mail_no_processor_has_taken_stays_in_the_folder_until_one_has(
    dovecot: Dovecot, desk: Desk
) -> None:
    """A mail stored but not yet processed (the workers busy, or down) is not moved: a
    crash then would leave nothing to show it was not done. It is stored once, and the
    poller goes back to IDLE, so new mail still comes in at once (not after a wait for
    the first one's fate); a later look moves both once they are processed."""
    receiver = Wrapped(desk.gateway)
    woken: list[int] = []
    poller = ImapPoller(imap_settings(dovecot), receiver, hand_over=woken.append)
    dovecot.append("INBOX", make_mail("In attesa"))
    with capture_logs() as logs, RunningPoller(poller):
        wait_until(lambda: len(desk.inbox()) == 1, what="the mail stored")
        dovecot.append("INBOX", make_mail("Arrivata dopo"))
        wait_until(lambda: len(desk.inbox()) == 2, timeout=6,
                   what="the next mail stored while the first waits for a processor")
        assert [r.status for r in desk.inbox()] == ["received", "received"]
        assert dovecot.count("INBOX") == 2
        assert receiver.receives == 2  # the first remembered, not fetched and stored again
        assert set(woken) == {r.id for r in desk.inbox()}

        assert desk.gateway.process_pending() == 2
        wait_until(lambda: dovecot.count("Processed") == 2, what="the moves once processed")
    assert dovecot.count("INBOX") == 0
    assert desk.tickets() == 2
    events = [e["event"] for e in logs]
    assert "imap mail still being processed, left in the folder" in events
    assert events.count("imap mail handled") == 2


def test_mail_left_waiting_is_said_when_it_starts_waiting_not_at_every_look(
    dovecot: Dovecot, desk: Desk
) -> None:
    """With no processor running anywhere the mail waits for ever, and the poller looks
    at it every few seconds: the log says so once for each mail that starts waiting
    (then once a minute), where it used to repeat it at every look."""
    receiver = Wrapped(desk.gateway)
    poller = ImapPoller(imap_settings(dovecot), receiver, hand_over=lambda inbox_id: None,
                        fate_wait_seconds=0.05, fate_recheck_seconds=0.1,
                        idle_check_seconds=0.1)
    dovecot.append("INBOX", make_mail("In attesa"))
    with capture_logs() as logs, RunningPoller(poller):
        wait_until(lambda: receiver.fate_reads >= 10, what="several looks at the waiting mail")
        dovecot.append("INBOX", make_mail("Arrivata dopo"))
        wait_until(lambda: len(desk.inbox()) == 2, what="the next mail stored")
        looked = receiver.fate_reads
        wait_until(lambda: receiver.fate_reads >= looked + 10, what="more looks at both")
    said = [e for e in logs if e["event"] == "imap mail still being processed, left in the folder"]
    assert [e["waiting"] for e in said] == [1, 2]
    assert dovecot.count("INBOX") == 2
    assert [r.status for r in desk.inbox()] == ["received", "received"]


def test_mail_that_keeps_waiting_is_said_again_at_the_set_interval(
    dovecot: Dovecot, desk: Desk
) -> None:
    """A wait with no end is said again now and then (a minute in production), so that
    a log read an hour later still shows it, without a line at every look."""
    receiver = Wrapped(desk.gateway)
    poller = ImapPoller(imap_settings(dovecot), receiver, hand_over=lambda inbox_id: None,
                        fate_wait_seconds=0.05, fate_recheck_seconds=0.1,
                        idle_check_seconds=0.1, waiting_said_every_seconds=0.6)
    dovecot.append("INBOX", make_mail("In attesa"))
    with capture_logs() as logs, RunningPoller(poller):
        wait_until(lambda: len(desk.inbox()) == 1, what="the mail stored")
        started = time.monotonic()
        event = "imap mail still being processed, left in the folder"
        wait_until(lambda: sum(e["event"] == event for e in logs) == 3, timeout=10,
                   what="the wait said three times")
        elapsed = time.monotonic() - started
        looks = receiver.fate_reads
    said = [e for e in logs if e["event"] == event]
    assert elapsed >= 2 * 0.6 - 0.1  # not sooner than the interval lets it
    assert looks >= 2 * len(said)  # and not at every look
    assert all(e["waiting"] == 1 for e in said)


def test_missing_folders_are_created(dovecot: Dovecot, desk: Desk) -> None:
    dovecot.append("Support", make_mail("In una cartella"))
    assert "Archivio" not in dovecot.folders()
    poller = make_poller(
        dovecot, desk, folder="Support", processed_folder="Archivio", failed_folder="Scartati"
    )
    assert poller.run_once() == 1
    assert {"Support", "Archivio", "Scartati"} <= set(dovecot.folders())
    assert dovecot.count("Archivio") == 1


def test_folder_that_cannot_be_created_is_named_in_the_error(dovecot: Dovecot, desk: Desk) -> None:
    name = "x" * 300
    with pytest.raises(ImapFolderError, match=f"IMAP folder '{name}' does not exist"):
        make_poller(dovecot, desk, failed_folder=name).run_once()


def test_uidvalidity_change_forgets_remembered_uids(dovecot: Dovecot, desk: Desk) -> None:
    """A UID remembered as "stored, not yet moved" must not be trusted once the folder
    is renumbered: the new UID 1 is another mail and has to be stored itself."""
    first, second = make_mail("Prima della ricreazione"), make_mail("Dopo la ricreazione")
    before = 0

    def renumber_on_first(n: int) -> None:
        # Runs in the poller's thread between commit and move, so the poller cannot
        # reconnect before the folder is renumbered.
        nonlocal before
        if n == 1:
            before = dovecot.uidvalidity("Support")
            dovecot.kick()  # the move of the first mail fails: its UID stays remembered
            dovecot.wait_disconnected()
            dovecot.recreate("Support")
            dovecot.append("Support", second)  # UID 1 again, under a new UIDVALIDITY

    dovecot.append("Support", first)
    receiver = Wrapped(desk.gateway, after_process=renumber_on_first)
    with capture_logs() as logs, RunningPoller(make_poller(dovecot, receiver, folder="Support")):
        wait_until(lambda: desk.tickets() == 2, what="the mail under the new UIDVALIDITY")
        wait_until(lambda: dovecot.count("Support") == 0, what="the folder drained")
    assert dovecot.uidvalidity("Support") != before
    assert desk.ticket_subjects() == ["Dopo la ricreazione", "Prima della ricreazione"]
    [changed] = [e for e in logs if e["event"] == "imap uidvalidity changed, rescanning"]
    assert changed["forgotten"] == 1


@pytest.mark.parametrize("uidplus", [True, False])
def test_server_without_move_uses_copy_and_expunge(uidplus: bool, desk: Desk) -> None:
    capabilities = BASE_CAPABILITIES + " IDLE"
    if not uidplus:
        capabilities = capabilities.replace(" UIDPLUS", "")
    _require_dovecot()
    with Dovecot(username=SUPPORT, capabilities=capabilities) as server:
        with server.client() as client:
            assert b"MOVE" not in client.capabilities()
        server.append_many("INBOX", [make_mail(f"Senza MOVE {n}") for n in range(10)])
        assert make_poller(server, desk).run_once() == 10
        assert server.count("INBOX") == 0
        assert server.count("Processed") == 10
        with server.client() as client:
            client.select_folder("INBOX")
            assert client.search("ALL") == []  # expunged, not just flagged
    assert desk.tickets() == 10


def test_server_without_idle_is_polled(desk: Desk) -> None:
    _require_dovecot()
    with Dovecot(username=SUPPORT, capabilities=BASE_CAPABILITIES + " MOVE") as server:
        with capture_logs() as logs, RunningPoller(make_poller(server, desk, poll_seconds=1)):
            wait_until(lambda: any(e["event"] == "imap connected" for e in logs))
            server.append("INBOX", make_mail("Polling"))
            took = wait_until(lambda: desk.tickets() == 1, timeout=3.0)
        assert took < 3.0
        assert server.count("Processed") == 1
    assert [e["mode"] for e in logs if e["event"] == "imap connected"] == ["poll"]


def test_temporary_error_leaves_mail_and_retries(dovecot: Dovecot, desk: Desk) -> None:
    def refuse_twice(n: int) -> None:
        if n <= 2:
            raise TemporaryError("database is busy")

    receiver = Wrapped(desk.gateway, before_receive=refuse_twice)
    dovecot.append("INBOX", make_mail("Database occupato"))
    with pytest.raises(StoreError, match="database is busy"):
        make_poller(dovecot, receiver).run_once()
    assert dovecot.count("INBOX") == 1
    assert desk.inbox() == []

    with capture_logs() as logs, RunningPoller(make_poller(dovecot, receiver)):
        wait_until(lambda: dovecot.count("Processed") == 1, what="the retried mail")
    assert desk.ticket_subjects() == ["Database occupato"]
    events = [e["event"] for e in logs]
    assert events.count("imap could not store mail, leaving it in the mailbox") == 1, events


def test_wrong_password_is_reported_once_and_retried_slowly(dovecot: Dovecot, desk: Desk) -> None:
    with pytest.raises(ImapLoginError, match=SUPPORT):
        make_poller(dovecot, desk, password="sbagliata").run_once()

    poller = ImapPoller(
        imap_settings(dovecot, password="sbagliata"),
        desk.gateway,
        reconnect_initial_seconds=0.01,
        reconnect_max_seconds=0.3,
    )
    with capture_logs() as logs, RunningPoller(poller):
        time.sleep(1.0)
        assert TALLY.snapshot().imap_connected[poller.mailbox] is False
    refused = [e for e in logs if e["event"] == "imap login refused"]
    assert len(refused) == 1, logs
    assert refused[0]["log_level"] == "error"
    assert SUPPORT in refused[0]["error"]
    assert refused[0]["retry_in"] == 0.3  # the policy's cap, not its first step
    attempts = dovecot.log().count("auth failed")
    assert 2 <= attempts <= 6, attempts  # the run_once above, then every 0.3 s: no busy loop


def test_stop_cuts_a_delayed_login_short(desk: Desk) -> None:
    """Servers answer a refused login late (and later after each failure); SIGTERM
    must not wait for that answer."""
    _require_dovecot()
    with Dovecot(username=SUPPORT, auth_failure_delay="5s") as server:
        poller = make_poller(server, desk, password="sbagliata")
        with RunningPoller(poller) as running:
            time.sleep(0.5)  # well inside the 5 s the server holds the refused login
            assert running.stop() < 1.5
        assert running.error is None


def test_password_from_environment(
    dovecot: Dovecot, desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_TEST_IMAP_PASSWORD", dovecot.password)
    dovecot.append("INBOX", make_mail("Password da env"))
    poller = make_poller(dovecot, desk, password="", password_env="MG_TEST_IMAP_PASSWORD")
    assert poller.run_once() == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password": "", "password_env": "MG_TEST_UNSET_PASSWORD"}, "MG_TEST_UNSET_PASSWORD"),
        ({"tls": True, "starttls": True}, "imap.tls and imap.starttls"),
        ({"processed_folder": "INBOX"}, "must differ from imap.folder"),
        ({"poll_seconds": 0}, "imap.poll_seconds"),
        ({"idle_seconds": 3600}, "imap.idle_seconds"),
    ],
)
def test_unusable_settings_are_refused_at_start(
    changes: dict[str, object], message: str, dovecot: Dovecot, desk: Desk
) -> None:
    with pytest.raises(ConfigError, match=message):
        make_poller(dovecot, desk, **changes)


@pytest.mark.parametrize("mode", ["tls", "starttls"])
def test_tls_and_starttls(mode: str, desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_dovecot()
    with Dovecot(username=SUPPORT, tls=True) as server:
        # The operator's way to trust a private CA: the standard OpenSSL variable.
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cert_path))
        server.append("INBOX", make_mail(f"Via {mode}"))
        if mode == "tls":
            poller = make_poller(server, desk, tls=True, port=server.tls_port)
        else:
            poller = make_poller(server, desk, starttls=True)
        assert poller.run_once() == 1
        assert "TLS" in server.log()
        with RunningPoller(poller):  # IDLE over TLS: notices may wait in the TLS buffer
            wait_until(lambda: server.count("Processed") == 1)
            server.append("INBOX", make_mail(f"Mentre aspetta via {mode}"))
            wait_until(lambda: desk.tickets() == 2, timeout=2.0, what="the mail over TLS")
    assert desk.ticket_subjects() == [f"Mentre aspetta via {mode}", f"Via {mode}"]


def test_untrusted_certificate_is_refused(desk: Desk) -> None:
    _require_dovecot()
    with Dovecot(username=SUPPORT, tls=True) as server:
        server.append("INBOX", make_mail("Certificato ignoto"))
        poller = make_poller(server, desk, tls=True, port=server.tls_port)
        with pytest.raises(ImapConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            poller.run_once()
        assert server.count("INBOX") == 1


def test_sigterm_to_serve_exits_0(
    dovecot: Dovecot,
    desk: Desk,
    config_data: dict[str, Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """`mailgateway serve` with an [[imap]] mailbox handles the mail, then stops cleanly
    on SIGTERM (exit 0) while idling, within a few seconds."""
    config_data["imap"] = [
        {
            "host": "127.0.0.1",
            "port": dovecot.port,
            "username": dovecot.username,
            "password_env": "MG_TEST_IMAP_PASSWORD",
        }
    ]
    config_data["log"] = {"level": "info"}
    config_file: Path = request.getfixturevalue("config_file")
    dovecot.append("INBOX", make_mail("Via serve"))
    env = {**os.environ, "MG_TEST_IMAP_PASSWORD": dovecot.password}
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailgateway", "--config", str(config_file), "serve"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: dovecot.count("Processed") == 1 or process.poll() is not None,
            timeout=30,
            what="serve to handle the mail",
        )
        assert process.poll() is None, log.read_text(errors="replace")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output_text = log.read_text(errors="replace")
    assert process.returncode == 0, output_text
    assert stopped_in < 10, output_text
    assert desk.ticket_subjects() == ["Via serve"]
    assert "imap poller stopped" in output_text
