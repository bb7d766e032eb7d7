"""How fast the IMAP poller turns a mailbox into tickets: backlog drain and IDLE latency.

A throw-away Dovecot (tests/dovecot.py) holds the mailbox; the real poller
feeds the real `Gateway`, so every figure includes the pipeline and the
database commit that makes the ticket exist.

- drain: `n` mails appended before the poller starts, then one `run_once`;
  mails per second until the folder is empty and every ticket exists. Then
  the same with the processing handed over to `serve --workers` processes,
  as `serve` runs a poller when it has workers.
- latency: with the poller in IDLE, mails appended one by one; seconds from
  the APPEND to the end of `process` (the ticket is committed).
- server floor: the same with no poller, until a bare client hears of the
  mail, re-entering IDLE after each one as the poller does. Dovecot batches
  new-mail notices for 500 ms (NOTIFY_DELAY_MSECS), so no such IDLE client
  of Dovecot goes below it; the poller's share is the rest.

The `imap-poller` measure of `python -m benchmarks` runs it on a throwaway
site per backend (`benchmarks.transport_measures`), with the mail the SMTP
measure sends.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from benchmarks.core import median, percentile
from benchmarks.smtp_bench import SENDER, SUPPORT, request_mail, worker_command
from mailgateway.config import ImapSettings, Settings
from mailgateway.db.models import Ticket
from mailgateway.directory import add_account
from mailgateway.ingest import Received
from mailgateway.ingest.imap import ImapPoller
from mailgateway.service import Gateway
from mailgateway.workers import WorkerPool
from tests.dovecot import Dovecot, dovecot_available


class _Timed:
    """The gateway, plus the instant each `process` returned: when the ticket exists."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.done = threading.Event()
        self.finished_at = 0.0

    def expect(self) -> None:
        self.done.clear()

    def finished(self, timeout: float) -> float | None:
        """The instant the next ticket existed, or None if not within `timeout`."""
        return self.finished_at if self.done.wait(timeout) else None

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        trust_authentication_results: bool = False,
    ) -> Received:
        return self.gateway.receive(
            raw, transport=transport, envelope_from=envelope_from, envelope_to=envelope_to,
            trust_authentication_results=trust_authentication_results,
        )

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        return self.gateway.refusal(raw, envelope_from)

    def process(self, inbox_id: int) -> str:
        status = self.gateway.process(inbox_id)
        self.finished_at = time.perf_counter()
        self.done.set()
        return status

    def accepts_recipient(self, address: str) -> bool:
        return self.gateway.accepts_recipient(address)


def _server_floor(server: Dovecot, samples: int) -> list[float]:
    """APPEND → new-mail notice on a bare idling client, with no poller running."""
    jitter = random.Random(11)
    client: IMAPClient = server.connect()
    try:
        client.select_folder("INBOX")
        client.idle()
        floors: list[float] = []
        for index in range(samples):
            time.sleep(jitter.uniform(0.05, 0.25))
            started = time.perf_counter()
            server.append("INBOX", request_mail(200_000 + index))
            deadline = started + 30
            while time.perf_counter() < deadline:
                responses = client.idle_check(timeout=0.5)
                if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                    floors.append(time.perf_counter() - started)
                    break
            # Leave and re-enter IDLE, as the poller does around each drain.
            client.idle_done()
            client.idle()
        client.idle_done()
        client.delete_messages(client.search("ALL"))
        client.expunge()
    finally:
        client.logout()
    return floors


def _tickets(gateway: Gateway) -> int:
    with gateway.sessions() as session:
        return int(session.execute(select(func.count(Ticket.id))).scalar_one())


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class _TicketCount:
    """Tickets made in other processes: the count looked at every 5 ms."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._before = 0

    def expect(self) -> None:
        self._before = _tickets(self.gateway)

    def finished(self, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if _tickets(self.gateway) > self._before:
                return time.perf_counter()
            time.sleep(0.005)
        return None


class _Running:
    """The poller's blocking loop in a thread, stopped on exit."""

    def __init__(self, poller: ImapPoller) -> None:
        self.poller = poller
        self._thread = threading.Thread(target=poller.serve_forever, daemon=True)

    def __enter__(self) -> _Running:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.poller.stop()
        self._thread.join(10)


class _Workers:
    """`serve --workers`' worker processes, their pool on an event loop of its own."""

    def __init__(self, config: Path, count: int) -> None:
        self.pool = WorkerPool(worker_command(config), count)
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            await self.pool.run(self._stopping)

        asyncio.run(run())

    def __enter__(self) -> _Workers:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.pool.ready():
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the worker processes did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(60)


def _drain(server: Dovecot, poller: ImapPoller, gateway: Gateway, first: int, n: int) -> float:
    """Seconds for one pass of `poller` to turn `n` appended mails into tickets."""
    before = _tickets(gateway)
    server.append_many("INBOX", (request_mail(first + i) for i in range(n)))
    server.close_client()
    started = time.perf_counter()
    handled = poller.run_once()
    seconds = time.perf_counter() - started
    if handled != n or _tickets(gateway) - before != n or server.count("INBOX"):
        raise RuntimeError(f"drain handled {handled} of {n} mails")
    return seconds


def _latencies(
    server: Dovecot, poller: ImapPoller, ticket: _Timed | _TicketCount, samples: int, first: int,
) -> list[float]:
    """APPEND → ticket committed, for each mail appended while the poller idles."""
    jitter = random.Random(7)
    latencies: list[float] = []
    with _Running(poller):
        # Warm-up: the first mail proves the poller is connected and idling.
        ticket.expect()
        server.append("INBOX", request_mail(first - 1))
        if ticket.finished(30) is None:
            raise RuntimeError("the poller did not handle the warm-up mail")
        for index in range(samples):
            time.sleep(jitter.uniform(0.05, 0.25))  # do not phase-lock with any timer
            ticket.expect()
            started = time.perf_counter()
            server.append("INBOX", request_mail(first + index))
            finished = ticket.finished(30)
            if finished is None:
                raise RuntimeError(f"sample {index}: no ticket after 30 s")
            latencies.append(finished - started)
    return latencies


def bench_imap(
    settings: Settings, n: int = 1000, samples: int = 100, floor_samples: int | None = None,
    workers: int = 0, config: Path | None = None,
) -> dict[str, Any]:
    """Drain a backlog of `n` mails, then time `samples` mails appended while idle.

    The database in `settings` must be empty and migrated. Returns the drain
    rate (mails/s) and APPEND-to-ticket percentiles (ms) with Dovecot's own
    notification floor beside them, from `floor_samples` mails (default: as
    many as `samples`, at most 50; 0 skips it, as it does not depend on the
    gateway's database). `workers` > 0 drains another `n` with the processing
    handed over to that many worker processes, which read `config`.
    """
    if not dovecot_available():
        raise RuntimeError("Dovecot (dovecot, doveadm) is not installed or cannot run here")
    gateway = Gateway(settings)
    try:
        with gateway.sessions.begin() as session:
            add_account(session, gateway.clock, name="Studio Bench", email=SENDER,
                        vat="01234567890")
        with Dovecot(username=SUPPORT) as server:
            mailbox = ImapSettings(
                host="127.0.0.1",
                port=server.port,
                username=server.username,
                password=server.password,
            )
            drain = _drain(server, ImapPoller(mailbox, gateway), gateway, 0, n)
            handed_over, handed_over_latencies = None, []
            if workers:
                assert config is not None, "worker processes read the site's configuration"
                with _Workers(config, workers) as processes:
                    poller = ImapPoller(mailbox, gateway, hand_over=processes.pool.wake)
                    handed_over = _drain(server, poller, gateway, 300_000, n)
                    handed_over_latencies = _latencies(
                        server, poller, _TicketCount(gateway), samples, 400_000)

            timed = _Timed(gateway)
            latencies = _latencies(server, ImapPoller(mailbox, timed), timed, samples, 100_000)
            floor_count = min(samples, 50) if floor_samples is None else floor_samples
            floors = _server_floor(server, floor_count) if floor_count else []
    finally:
        gateway.close()
    report: dict[str, Any] = {
        "database": make_url(settings.database.url).get_backend_name(),
        "drain_mails": n,
        "drain_seconds": round(drain, 2),
        "drain_mails_per_s": round(n / drain, 1),
        "workers": workers,
        "latency_samples": len(latencies),
        "latency_p50_ms": _ms(median(latencies)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "latency_max_ms": _ms(max(latencies)),
    }
    if handed_over is not None:
        report["drain_workers_mails_per_s"] = round(n / handed_over, 1)
        report["latency_workers_p50_ms"] = _ms(median(handed_over_latencies))
        report["latency_workers_p99_ms"] = _ms(percentile(handed_over_latencies, 99))
    if floors:
        # What Dovecot alone costs: it batches new-mail notices for 500 ms.
        report["dovecot_notice_p50_ms"] = _ms(median(floors))
        report["dovecot_notice_p99_ms"] = _ms(percentile(floors, 99))
    return report
