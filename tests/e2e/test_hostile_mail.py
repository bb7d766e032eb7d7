"""2,000 hostile mails through the real listener and processor, while a customer writes.

Seeded (the same mails every run) and bounded to about a minute. Every mail is
stored, refused with an SMTP error, or quarantined with a reason; nothing
crashes; and the customer's ordinary mails keep getting their 250 within a
second at the 99th percentile.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, InboxStatus
from mailgateway.ingest import Received
from mailgateway.server import Processor
from mailgateway.service import Gateway
from tests.hostile import hostile_mails
from tests.ingest.test_smtp import HOST, SUPPORT, RunningListener, wait_until
from tests.mails import CUSTOMER, build_mail, deliver, register_desk

SEED = 20261203
COUNT = 2_000
CLIENTS = 4


def _send_all(port: int, mails: Iterator[bytes], lock: threading.Lock,
              outcomes: list[tuple[bytes, int | str]]) -> None:
    """One client: send mails from the shared iterator until it is empty; record the
    answer to each (250, another SMTP code, or the error that ended the session)."""
    client: smtplib.SMTP | None = None
    while True:
        with lock:
            raw = next(mails, None)
        if raw is None:
            break
        try:
            if client is None:
                client = smtplib.SMTP(HOST, port, timeout=30)
            client.sendmail(CUSTOMER, [SUPPORT], raw)
            outcome: int | str = 250
        except smtplib.SMTPResponseException as exc:
            outcome = exc.smtp_code
        except smtplib.SMTPRecipientsRefused as exc:
            outcome = next(iter(exc.recipients.values()))[0]
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            outcome, client = type(exc).__name__, None
        outcomes.append((raw, outcome))
        if isinstance(outcome, int) and outcome >= 400 and client is not None:
            try:
                client.rset()
            except (smtplib.SMTPException, OSError):
                client = None
    if client is not None:
        client.close()


def _customer(port: int, stop: threading.Event, latencies: list[float]) -> None:
    """An ordinary customer writing every 200 ms, timing each 250."""
    number = 0
    while not stop.is_set():
        number += 1
        raw = build_mail(sender=CUSTOMER, subject=f"Richiesta normale {number}")
        started = time.perf_counter()
        with smtplib.SMTP(HOST, port, timeout=30) as client:
            client.sendmail(CUSTOMER, [SUPPORT], raw)
        latencies.append(time.perf_counter() - started)
        stop.wait(0.2)


class _Counting:
    """The gateway as the listener's receiver, noting the inbox row of each commit."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.stored: list[int] = []

    def receive(self, raw: bytes, **kwargs: Any) -> Received:
        received = self._gateway.receive(raw, **kwargs)
        self.stored.append(received.inbox_id)
        return received

    def process(self, inbox_id: int) -> str:
        return self._gateway.process(inbox_id)

    def accepts_recipient(self, address: str) -> bool:
        return self._gateway.accepts_recipient(address)

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        return self._gateway.refusal(raw, envelope_from)


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    deliver(gateway, build_mail())  # ticket 2026-000001, which some hostile mails name
    return gateway


@pytest.mark.timeout(240)
def test_hostile_mail_stores_refuses_or_quarantines_and_never_crashes(
    desk: Gateway, settings: Settings
) -> None:
    processor = Processor(desk, idle_seconds=0.2)
    smtp = replace(settings.smtp, max_sessions_per_client=CLIENTS + 4)
    receiver = _Counting(desk)
    server = RunningListener(smtp, receiver, processor.wake, beside=[processor]).start()
    mails, lock = hostile_mails(SEED, COUNT), threading.Lock()
    outcomes: list[tuple[bytes, int | str]] = []
    latencies: list[float] = []
    stop = threading.Event()
    customer = threading.Thread(target=_customer, args=(server.port, stop, latencies))
    senders = [threading.Thread(target=_send_all, args=(server.port, mails, lock, outcomes))
               for _ in range(CLIENTS)]
    try:
        customer.start()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=150)
        stop.set()
        customer.join(timeout=30)
        assert server.listener.serving

        def all_handled() -> bool:
            with desk.sessions() as session:
                return session.scalar(select(InboxMail.id).where(
                    InboxMail.status == InboxStatus.RECEIVED.value).limit(1)) is None

        wait_until(all_handled, timeout=120, what="the processor to handle every stored mail")
    finally:
        stop.set()
        server.stop()

    answers = Counter(outcome for _, outcome in outcomes)
    assert len(outcomes) == COUNT
    assert all(isinstance(code, int) for code in answers), answers  # no session broke
    assert all(code == 250 or 400 <= code < 600 for code in answers), answers
    # Each 250 follows one commit, and each commit answers 250 (the customer's too).
    assert answers[250] + len(latencies) == len(receiver.stored)
    with desk.sessions() as session:
        rows = {i: status for i, status in session.execute(select(InboxMail.id, InboxMail.status))}
        reasons = session.scalars(select(InboxMail.reason).where(
            InboxMail.status == InboxStatus.QUARANTINED.value)).all()
    assert {rows[i] for i in receiver.stored} <= {"processed", "ignored", "quarantined"}
    assert all(reasons)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) >= 20 and p99 < 1.0, f"p99 {p99:.3f} s over {len(latencies)} mails"
