"""How fast the SMTP listener acknowledges mail: accepted mails/s and time-to-250.

The real listener runs in this process in front of the real `Gateway` (and,
unless told otherwise, the processor that turns mail into tickets, since in
production both share the machine and the database). The clients run in a
separate process so that their work does not share the server's interpreter
lock: each of them holds one smtplib connection and times every `sendmail`.

The `smtp-listener` measure of `python -m benchmarks` runs it on a throwaway
site per backend (`benchmarks.transport_measures`). The mail is one short
request from one registered sender, numbered; the IMAP measure appends the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from benchmarks.core import median, percentile
from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, InboxStatus
from mailgateway.directory import add_account
from mailgateway.errors import UserError
from mailgateway.ingest.smtp import SmtpListener
from mailgateway.server import Processor
from mailgateway.service import Gateway
from mailgateway.workers import WorkerPool

PROCESSING_PATIENCE_S = 600.0
SENDER = "bench@studiobench.it"
SUPPORT = "assistenza@example.com"
BODY = (
    "Buongiorno,\n\nquando apro MOCO e vado su MPRI compare l'errore 98,20 e il programma si "
    "chiude. Abbiamo già provato a riavviare il computer.\n\nGrazie,\nStudio Bench\n"
) * 6


def request_mail(index: int) -> bytes:
    """Request number `index` from the benchmark's sender: short, plain text, a fresh Message-ID."""
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = SUPPORT
    message["Subject"] = f"Richiesta {index}: errore 98,20 su MOCO"
    message["Message-ID"] = make_msgid(domain="studiobench.it")
    message.set_content(BODY)
    return message.as_bytes(policy=SMTP_POLICY)


def _client(
    port: int, mails: list[bytes], interval: float = 0.0, at: float = 0.0,
) -> tuple[float, float, list[float]]:
    """One connection sending its share; returns (start, end, seconds to each 250).
    With `interval`, mail k is due `at + k * interval` (monotonic): a steady rate, sent
    at once when behind, as an MTA's queue would."""
    import smtplib

    latencies: list[float] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo()
        start = time.monotonic()
        for k, raw in enumerate(mails):
            if interval:
                time.sleep(max(0.0, at + k * interval - time.monotonic()))
            before = time.perf_counter()
            smtp.sendmail(SENDER, [SUPPORT], raw)
            latencies.append(time.perf_counter() - before)
        end = time.monotonic()
    return start, end, latencies


def _clients(
    port: int, n: int, clients: int, rate: float | None = None,
) -> list[tuple[float, float, list[float]]]:
    """Run in the client process: `clients` parallel connections, n mails in all; with
    `rate`, n mails at `rate` mails/s in all, each connection its even share."""
    # Written before the clock starts: building 60,000 mails takes a minute and a
    # half, which a steady rate would otherwise catch up on in one burst.
    shares = [[request_mail(k) for k in range(n)[i::clients]] for i in range(clients)]
    interval = clients / rate if rate else 0.0
    at = time.monotonic() + 0.5
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(_client, [port] * clients, shares, [interval] * clients,
                             [at + i * interval / clients for i in range(clients)]))


def worker_command(config: Path) -> tuple[str, ...]:
    """How `serve --workers` starts each of its worker processes."""
    return (sys.executable, "-m", "mailgateway", "--config", str(config),
            "serve", "--only", "processor", "--workers", "0")


class _Server:
    """The listener and the processor (or `serve --workers`' worker processes) on their
    own event loop, as `serve` runs them."""

    def __init__(
        self, settings: Settings, gateway: Gateway, process: bool,
        workers: int = 0, config: Path | None = None,
    ) -> None:
        self.processor: Processor | WorkerPool | None = None
        if process and workers:
            assert config is not None, "worker processes read the site's configuration"
            self.processor = WorkerPool(worker_command(config), workers)
        elif process:
            self.processor = Processor(gateway, idle_seconds=1.0)
            gateway.warm_up()  # as `serve` does
        wake = self.processor.wake if self.processor else None
        self.listener = SmtpListener(settings.smtp, gateway, on_stored=wake)
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bench-server")
        self._done: Future[None] | None = None

    def _main(self) -> None:
        async def serve() -> None:
            stopping = self._stopping = asyncio.Event()
            runs = [self.listener.run(stopping)]
            if self.processor is not None:
                runs.append(self.processor.run(stopping))
            self._started.set()
            await asyncio.gather(*runs)

        try:
            self._loop.run_until_complete(serve())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def __enter__(self) -> _Server:
        done = self._done = self._pool.submit(self._main)
        deadline = time.monotonic() + 60
        pool = self.processor if isinstance(self.processor, WorkerPool) else None
        while not self.listener.serving or (pool is not None and not pool.ready()):
            if done.done():
                done.result()
            if time.monotonic() > deadline:
                raise RuntimeError("the listener or the workers did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stopping is not None and self._done is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._done.result(60)
        self._pool.shutdown()


def _waiting(gateway: Gateway) -> int:
    with gateway.sessions() as session:
        query = select(func.count()).where(InboxMail.status == InboxStatus.RECEIVED.value)
        return int(session.execute(query).scalar_one())


class _Backlog:
    """Samples the mails waiting for processing every `every` seconds; keeps the largest."""

    def __init__(self, gateway: Gateway, every: float = 1.0) -> None:
        self.largest = 0
        self._gateway, self._every = gateway, every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(self._every):
            self.largest = max(self.largest, _waiting(self._gateway))

    def __enter__(self) -> _Backlog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def bench_smtp(
    settings: Settings, n: int, clients: int = 8, process: bool = True, *,
    workers: int = 0, config: Path | None = None, rate: float | None = None,
    patience: float = PROCESSING_PATIENCE_S,
) -> dict[str, Any]:
    """Send n mails on `clients` parallel connections to a real listener and gateway.

    The database in `settings` must be migrated (and is best empty). Returns accepted
    mails/s and time-to-250 percentiles (ms); with `process`, also how long
    the processor took to turn every mail into a ticket. `workers` > 0 processes in
    that many worker processes (`serve --workers`), which read `config`; `rate` sends
    at that steady pace (mails/s) instead of as fast as the listener answers, and
    reports the largest backlog seen. Processing is waited for `patience` seconds after
    the last 250 at most; what is left then is reported as left unprocessed.
    """
    settings = replace(settings, smtp=replace(settings.smtp, host="127.0.0.1", port=0))
    gateway = Gateway(settings)
    try:
        with contextlib.suppress(UserError), gateway.sessions.begin() as session:
            add_account(session, gateway.clock, name="Studio Bench", email=SENDER,
                        vat="01234567890")
        spawn = multiprocessing.get_context("spawn")
        server = _Server(settings, gateway, process, workers, config)
        with spawn.Pool(1) as client_process, server, _Backlog(gateway) as backlog:
            cpu_before = time.process_time()
            sending = client_process.apply_async(
                _clients, (server.listener.port, n, clients, rate))
            # A client process that dies (say, on an import error) loses the task
            # without a word: wait a bounded time rather than forever.
            results = sending.get(timeout=60 + n / (rate or 5) * 2)
            cpu_used = time.process_time() - cpu_before
            sent_at = time.monotonic()
            waiting = _waiting(gateway) if process else 0
            while waiting and time.monotonic() - sent_at < patience:
                time.sleep(0.05)
                waiting = _waiting(gateway)
            processed_at = time.monotonic()
    finally:
        gateway.close()
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    latencies = [latency for r in results for latency in r[2]]
    report: dict[str, Any] = {
        "database": make_url(settings.database.url).get_backend_name(),
        "mails": len(latencies),
        "clients": clients,
        "seconds": round(end - start, 3),
        "mails_per_s": round(len(latencies) / (end - start), 1),
        "p50_ms": round(median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        # CPU of this process (listener, gateway, processor) per mail while sending:
        # unlike the times above, it hardly depends on what else the machine runs.
        "server_cpu_ms_per_mail": round(cpu_used / len(latencies) * 1000, 3),
    }
    if process:
        report["processed_per_s"] = round(len(latencies) / (processed_at - start), 1)
        report["processing_lag_s"] = round(processed_at - sent_at, 2)
        report["left_unprocessed"] = waiting
        report["largest_backlog"] = max(backlog.largest, waiting)
    report["workers"] = workers
    return report
