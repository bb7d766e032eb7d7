"""How fast the IMAP poller turns a mailbox into tickets: backlog drain and IDLE latency.

A throw-away Dovecot (tests/dovecot.py) holds the mailbox; the real poller
feeds the real `Gateway`, so every figure includes the pipeline and the
database commit that makes the ticket exist.

- drain: `n` mails appended before the poller starts, then one `run_once`;
  mails per second until the folder is empty and every ticket exists.
- latency: with the poller in IDLE, mails appended one by one; seconds from
  the APPEND to the end of `process` (the ticket is committed).
- server floor: the same with no poller, until a bare client hears of the
  mail, re-entering IDLE after each one as the poller does. Dovecot batches
  new-mail notices for 500 ms (NOTIFY_DELAY_MSECS), so no such IDLE client
  of Dovecot goes below it; the poller's share is the rest.

    python -m benchmarks.imap_bench [--n 1000] [--samples 100] [--database-url URL] [--json]

Without --database-url the gateway uses a fresh SQLite file. A PostgreSQL URL
names the server: a throwaway database is created on it and dropped after.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from benchmarks.smtp_bench import throwaway_database
from mailgateway.config import ImapSettings, Settings, settings_from_mapping
from mailgateway.db.models import Ticket
from mailgateway.directory import add_account
from mailgateway.ingest import Received
from mailgateway.ingest.imap import ImapPoller
from mailgateway.log import configure_logging
from mailgateway.service import Gateway
from tests.dovecot import Dovecot, dovecot_available

SENDER = "bench@studiobench.it"
SUPPORT = "assistenza@example.com"
BODY = (
    "Buongiorno,\n\nquando apro MOCO e vado su MPRI compare l'errore 98,20 e il programma si "
    "chiude. Abbiamo già provato a riavviare il computer.\n\nGrazie,\nStudio Bench\n"
) * 6


def _mail(index: int) -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = SUPPORT
    message["Subject"] = f"Richiesta {index}: errore 98,20 su MOCO"
    message["Message-ID"] = make_msgid(domain="studiobench.it")
    message.set_content(BODY)
    return message.as_bytes(policy=SMTP_POLICY)


class _Timed:
    """The gateway, plus the instant each `process` returned: when the ticket exists."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.done = threading.Event()
        self.finished_at = 0.0

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
    ) -> Received:
        return self.gateway.receive(
            raw, transport=transport, envelope_from=envelope_from, envelope_to=envelope_to
        )

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
            server.append("INBOX", _mail(200_000 + index))
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


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


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


def _latencies(server: Dovecot, poller: ImapPoller, timed: _Timed, samples: int) -> list[float]:
    """APPEND → ticket committed, for each mail appended while the poller idles."""
    jitter = random.Random(7)
    latencies: list[float] = []
    with _Running(poller):
        # Warm-up: the first mail proves the poller is connected and idling.
        timed.done.clear()
        server.append("INBOX", _mail(-1))
        if not timed.done.wait(30):
            raise RuntimeError("the poller did not handle the warm-up mail")
        for index in range(samples):
            time.sleep(jitter.uniform(0.05, 0.25))  # do not phase-lock with any timer
            timed.done.clear()
            started = time.perf_counter()
            server.append("INBOX", _mail(100_000 + index))
            if not timed.done.wait(30):
                raise RuntimeError(f"sample {index}: no ticket after 30 s")
            latencies.append(timed.finished_at - started)
    return latencies


def bench_imap(settings: Settings, n: int = 1000, samples: int = 100) -> dict[str, Any]:
    """Drain a backlog of `n` mails, then time `samples` mails appended while idle.

    The database in `settings` must be empty and migrated. Returns the drain
    rate (mails/s) and APPEND-to-ticket percentiles (ms) with Dovecot's own
    notification floor beside them.
    """
    if not dovecot_available():
        raise RuntimeError("Dovecot (dovecot, doveadm) is not installed or cannot run here")
    gateway = Gateway(settings)
    try:
        with gateway.sessions.begin() as session:
            add_account(session, gateway.clock, name="Studio Bench", email=SENDER, vat="1")
        with Dovecot(username=SUPPORT) as server:
            mailbox = ImapSettings(
                host="127.0.0.1",
                port=server.port,
                username=server.username,
                password=server.password,
            )
            server.append_many("INBOX", (_mail(i) for i in range(n)))
            server.close_client()
            started = time.perf_counter()
            handled = ImapPoller(mailbox, gateway).run_once()
            drain = time.perf_counter() - started
            if handled != n or _tickets(gateway) != n or server.count("INBOX"):
                raise RuntimeError(f"drain handled {handled} of {n} mails")

            timed = _Timed(gateway)
            latencies = _latencies(server, ImapPoller(mailbox, timed), timed, samples)
            floors = _server_floor(server, min(samples, 50))
    finally:
        gateway.close()
    report: dict[str, Any] = {
        "database": make_url(settings.database.url).get_backend_name(),
        "drain_mails": n,
        "drain_seconds": round(drain, 2),
        "drain_mails_per_s": round(n / drain, 1),
        "latency_samples": len(latencies),
        "latency_p50_ms": _ms(statistics.median(latencies)),
        "latency_p99_ms": _ms(_percentile(latencies, 0.99)),
        "latency_max_ms": _ms(max(latencies)),
    }
    if floors:
        # What Dovecot alone costs: it batches new-mail notices for 500 ms.
        report["dovecot_notice_p50_ms"] = _ms(statistics.median(floors))
        report["dovecot_notice_p99_ms"] = _ms(_percentile(floors, 0.99))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="backlog to drain (default 1000)")
    parser.add_argument(
        "--samples", type=int, default=100, help="mails timed one by one while idle (default 100)"
    )
    parser.add_argument("--database-url", help="sqlite:///… or postgresql+psycopg://… (server)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="mg-bench-") as workdir,
        throwaway_database(args.database_url, Path(workdir)) as url,
    ):
        settings = settings_from_mapping(
            {
                "helpdesk": {"data_dir": str(Path(workdir) / "var")},
                "database": {"url": url},
                "outbound": {"maildir": str(Path(workdir) / "sent")},
                "rules": {"path": str(Path(workdir) / "rules")},
                "log": {"level": "warning"},
            }
        )
        configure_logging(settings.log)
        report = bench_imap(settings, args.n, args.samples)
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
