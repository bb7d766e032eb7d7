"""Three `serve` processes on one database, two of them killed with SIGKILL and started
again while mail arrives over SMTP and IMAP: nothing lost, nothing doubled.

`MAILGATEWAY_SOAK_MAILS` sets how many mails (default 300: a minute or two; the
figures in README's "Deployment" come from 3,000).
"""

from __future__ import annotations

import email
import json
import os
import random
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.config import settings_from_mapping
from mailgateway.db.models import InboxMail, InboxStatus, OutboxMail, OutboxStatus, Ticket
from mailgateway.service import Gateway
from tests.conftest import skip_or_fail, write_toml
from tests.dovecot import Dovecot, dovecot_available
from tests.ingest.test_smtp import wait_until
from tests.smtp_sink import SmtpSink, free_port
from tests.smtp_sink import smtp_sink as smtp_sink  # re-exported as a fixture

ROOT = Path(__file__).resolve().parents[2]
MAILS = int(os.environ.get("MAILGATEWAY_SOAK_MAILS", "300"))
IMAP_SHARE = 5  # one mail in five arrives over IMAP


def _mail(n: int) -> bytes:
    """A new request from a sender of its own (so each is acknowledged, not rate-limited)."""
    return (f"From: Cliente {n} <cliente{n}@studio{n % 40}.it>\r\n"
            f"To: assistenza@example.com\r\nSubject: Richiesta {n}\r\n"
            f"Message-ID: <soak{n}@studio.it>\r\nDate: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
            f"\r\nBuongiorno, problema numero {n}.\r\n").encode()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    if not dovecot_available():
        skip_or_fail("Dovecot (dovecot, doveadm) is not installed or cannot run here")
    with Dovecot(username="assistenza@example.com") as server:
        yield server


class Gateways:
    """The three `serve` processes: each its listener port and data directory, one
    database, one IMAP mailbox, one relay."""

    def __init__(self, config_data: dict[str, Any], tmp_path: Path, dovecot: Dovecot,
                 relay: SmtpSink) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.configs: list[Path] = []
        self.logs = [tmp_path / f"serve{k}.log" for k in range(3)]
        for k, port in enumerate(self.ports):
            data = json.loads(json.dumps(config_data))
            data["helpdesk"] |= {"unknown_sender": "accept", "data_dir": str(tmp_path / f"v{k}")}
            data["smtp"] = {"host": "127.0.0.1", "port": port}
            data["outbound"] = {"transport": "smtp", "host": relay.host, "port": relay.port,
                                "poll_seconds": 0.5, "auto_answer_limit": 1000}
            data["imap"] = [{"host": "127.0.0.1", "port": dovecot.port,
                             "username": dovecot.username, "password": dovecot.password}]
            data["log"] = {"level": "info", "format": "json"}
            self.configs.append(write_toml(data, tmp_path / f"serve{k}.toml"))
        self.workers = ["1", "0", "0"]
        self.processes: list[subprocess.Popen[bytes]] = [self.start(k) for k in range(3)]
        self.kills = 0

    def start(self, k: int) -> subprocess.Popen[bytes]:
        with self.logs[k].open("ab") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "mailgateway", "--config", str(self.configs[k]),
                 "serve", "--workers", self.workers[k]],
                cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)

    def kill_and_restart(self, k: int) -> None:
        self.processes[k].send_signal(signal.SIGKILL)
        self.processes[k].wait()
        self.kills += 1
        time.sleep(0.5)
        self.processes[k] = self.start(k)

    def listening(self) -> bool:
        for port in self.ports:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    client.noop()
            except (OSError, smtplib.SMTPException):
                return False
        return True

    def stop(self) -> list[int | None]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


def test_three_gateways_two_killed_lose_and_double_nothing(
    config_data: dict[str, Any], tmp_path: Path, dovecot: Dovecot, smtp_sink: SmtpSink,
) -> None:
    rng = random.Random(20)
    by_imap = [n for n in range(MAILS) if n % IMAP_SHARE == 0]
    by_smtp = [n for n in range(MAILS) if n % IMAP_SHARE]
    gateways = Gateways(config_data, tmp_path, dovecot, smtp_sink)
    acked: set[int] = set()
    lock = threading.Lock()
    started = time.monotonic()

    def send(numbers: list[int]) -> None:
        """As an MTA does: a mail without its 250 is offered again, to another listener."""
        for n in numbers:
            for attempt in range(1000):
                port = gateways.ports[(n + attempt) % 3]
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                        client.sendmail(f"cliente{n}@studio{n % 40}.it",
                                        ["assistenza@example.com"], _mail(n))
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)
                    continue
                with lock:
                    acked.add(n)
                break

    sessions: list[int] = []
    watching = threading.Event()

    def watch_imap() -> None:
        while not watching.wait(0.25):
            sessions.append(dovecot.sessions())

    try:
        wait_until(gateways.listening, timeout=60, what="the three listeners")
        dovecot.append_many("INBOX", (_mail(n) for n in by_imap))
        dovecot.close_client()
        watcher = threading.Thread(target=watch_imap)
        watcher.start()
        senders = [threading.Thread(target=send, args=(by_smtp[i::4],)) for i in range(4)]
        for thread in senders:
            thread.start()
        # Two gateways killed, each twice, at random moments of the load.
        moments = sorted(rng.uniform(0.1, 0.9) for _ in range(4))
        for victim, moment in zip((0, 1, 0, 1), moments, strict=True):
            while len(acked) < moment * len(by_smtp) and any(t.is_alive() for t in senders):
                time.sleep(0.05)
            gateways.kill_and_restart(victim)
        for thread in senders:
            thread.join(600)
        accepted_in = time.monotonic() - started

        settings = settings_from_mapping(config_data)
        gateway = Gateway(settings)
        try:
            def settled() -> bool:
                with gateway.reads() as session:
                    waiting = session.scalar(select(InboxMail.id).where(
                        InboxMail.status == InboxStatus.RECEIVED.value).limit(1))
                    unsent = session.scalar(select(OutboxMail.id).where(
                        OutboxMail.status == OutboxStatus.PENDING).limit(1))
                    stored = len(session.scalars(select(InboxMail.id)).all())
                return (waiting is None and unsent is None and stored >= MAILS
                        and dovecot.count("INBOX") == 0)

            deadline = time.monotonic() + 300
            while not settled():
                assert time.monotonic() < deadline, "the gateways did not finish the work"
                time.sleep(0.5)
            settled_in = time.monotonic() - started
            with gateway.reads() as session:
                inbox = session.execute(select(InboxMail.message_id, InboxMail.status,
                                               InboxMail.ticket_id)).all()
                numbers = sorted(session.scalars(select(Ticket.number)).all())
                outbox = session.execute(select(OutboxMail.message_id,
                                                OutboxMail.status)).all()
        finally:
            gateway.close()
        watching.set()
        watcher.join()
        # A gateway restarted late in the load may still be starting when the work is
        # done; a SIGTERM before it serves would end it by the signal, not cleanly.
        wait_until(gateways.listening, timeout=60, what="the three listeners")
    finally:
        codes = gateways.stop()
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in gateways.logs]

    # Every mail that got its 250, or left the IMAP folder, is one ticket.
    assert acked == set(by_smtp)
    stored = Counter(row.message_id for row in inbox)
    assert stored == Counter(f"soak{n}@studio.it" for n in range(MAILS))
    assert {row.status for row in inbox} == {InboxStatus.PROCESSED.value}
    assert len({row.ticket_id for row in inbox}) == MAILS
    # Ticket numbers: no gap, no duplicate.
    year = numbers[0][:4]
    assert numbers == [f"{year}-{k:06d}" for k in range(1, MAILS + 1)]
    # Every outbox row sent; a mail goes out twice only if its gateway died between the
    # relay's 250 and the commit that marks it sent (at most one per kill and sending thread).
    assert {row.status for row in outbox} == {OutboxStatus.SENT}
    delivered = Counter(email.message_from_bytes(d.raw)["Message-ID"].strip("<>")
                        for d in smtp_sink.deliveries)
    assert set(delivered) == {row.message_id for row in outbox}
    doubled = sum(count - 1 for count in delivered.values())
    assert doubled <= gateways.kills * 4  # outbound.connections sending threads
    # The mailbox was polled by one gateway at a time.
    assert max(sessions) <= 1
    print(f"\nsoak: {MAILS} mails ({len(by_smtp)} SMTP, {len(by_imap)} IMAP), "
          f"{gateways.kills} SIGKILLs; accepted in {accepted_in:.1f} s, all processed and "
          f"sent in {settled_in:.1f} s; {len(outbox)} outbox rows, {doubled} sent twice; "
          f"at most {max(sessions)} IMAP session at a time")
