"""How fast the dispatcher empties the outbox into an SMTP relay: mails/s.

The outbox is filled with `n` queued mails, then one `dispatch_once` renders
and sends them all, batch after batch, through the real `SmtpTransport` (a few SMTP
sessions kept open) to an aiosmtpd sink, committing each row as sent. The
sink runs in a separate process so that its work does not share the
dispatcher's interpreter lock, as a real relay would not. The same sink is
then timed alone (smtplib, no database, same number of sessions): aiosmtpd
is slower than a real relay, and on a shared machine both figures move, so
the ratio is the steadier reading.

The `dispatcher` measure of `python -m benchmarks` runs it on a throwaway site
per backend (`benchmarks.transport_measures`).
"""

from __future__ import annotations

import multiprocessing
import smtplib
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from mailgateway.clock import SystemClock
from mailgateway.config import Settings
from mailgateway.db.migrate import upgrade
from mailgateway.db.models import OutboxMail, OutboxStatus
from mailgateway.db.session import create_db_engine, session_factory
from mailgateway.outbound.compose import compose_queued
from mailgateway.outbound.dispatch import dispatch_once, sending_connections
from mailgateway.outbound.intent import MailIntent, MailKind, new_message_id, outbox_document
from mailgateway.outbound.transports import SmtpTransport

BODY = (
    "Buongiorno,\n\nper risolvere l'errore 98,20 su MOCO aggiorni la procedura alla versione "
    "più recente e riavvii il servizio di stampa. Ci faccia sapere se il problema persiste.\n"
) * 4


def _sink_main(ready: Connection, stop: Connection) -> None:
    """The relay: accept everything, count what arrived, report the count when told to stop."""
    import socket

    from aiosmtpd.controller import Controller

    class Counter:
        received = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            Counter.received += 1
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        Counter(), hostname="127.0.0.1", port=port, server_hostname="relay.test"
    )
    controller.start()
    ready.send(port)
    stop.recv()
    controller.stop()
    ready.send(Counter.received)


def _relay_ceiling(port: int, raw: bytes, count: int, connections: int) -> float:
    """What the sink takes with no database at all: smtplib alone over the same
    number of sessions, so a figure from a busy machine can be read relatively."""

    def send(share: int) -> None:
        client = smtplib.SMTP("127.0.0.1", port, local_hostname="example.com")
        try:
            for _ in range(share):
                client.sendmail("assistenza@example.com", ["cliente@studiobench.it"], raw)
        finally:
            client.quit()

    shares = [count // connections] * connections
    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(shares) / (time.perf_counter() - started)


def _fill(settings: Settings, n: int) -> bytes:
    """`n` pending answers as the pipeline queues them (intents, rendered by the
    dispatcher as it sends); returns one of them rendered, for the relay-alone run."""
    clock = SystemClock()
    intent = MailIntent(
        kind=MailKind.ANSWER,
        to=("cliente@studiobench.it",),
        language="it",
        context={
            "number": "2026-000001",
            "subject": "Errore 98,20 su MOCO",
            "body": BODY,
            "author": "Luca Verdi",
        },
    )
    document = outbox_document(intent, "2026-000001")
    now = clock.now()
    engine = create_db_engine(settings.database)
    try:
        with session_factory(engine).begin() as session:
            rows = [
                {
                    "created_at": now,
                    "kind": intent.kind.value,
                    "ticket_id": None,
                    "automatic": False,
                    "mail_from": settings.helpdesk.address,
                    "recipients": list(intent.to),
                    "message_id": new_message_id(settings),
                    "intent": document,
                    "raw": None,
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for _ in range(n)
            ]
            session.execute(insert(OutboxMail), rows)
    finally:
        engine.dispose()
    return compose_queued(settings, clock, document, rows[0]["message_id"])


def bench_dispatch(settings: Settings, n: int = 2000) -> dict[str, Any]:
    """Fill the outbox of `settings`' database with `n` mails and time one dispatch pass.

    The database must hold no pending mail of its own: they would be sent to the sink.
    """
    engine = create_db_engine(settings.database)
    try:
        upgrade(engine)
        sessions = session_factory(engine)
        with sessions() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(OutboxMail)
                .where(OutboxMail.status == OutboxStatus.PENDING)
            )
        if pending:
            raise RuntimeError(
                f"the outbox already holds {pending} pending mails; "
                "benchmark on a throwaway database"
            )
        raw = _fill(settings, n)

        context = multiprocessing.get_context("spawn")
        ready_parent, ready_child = context.Pipe()
        stop_parent, stop_child = context.Pipe()
        sink = context.Process(target=_sink_main, args=(ready_child, stop_child), daemon=True)
        sink.start()
        try:
            port = ready_parent.recv()
            outbound = replace(settings.outbound, transport="smtp", host="127.0.0.1", port=port)
            relay = replace(settings, outbound=outbound)
            transport = SmtpTransport(outbound, local_hostname=settings.helpdesk.domains[0])
            started = time.perf_counter()
            report = dispatch_once(sessions, relay, SystemClock(), transport)
            elapsed = time.perf_counter() - started
            connections = sending_connections(outbound)
            ceiling = _relay_ceiling(port, raw, min(n, 1000), connections)
        finally:
            stop_parent.send(True)
            received = ready_parent.recv() if sink.is_alive() else None
            sink.join(timeout=10)
        with sessions() as session:
            sent = session.scalar(
                select(func.count())
                .select_from(OutboxMail)
                .where(OutboxMail.status == OutboxStatus.SENT)
            )
    finally:
        engine.dispose()
    if report.sent != n or sent != n or received != n + min(n, 1000) // connections * connections:
        raise RuntimeError(
            f"expected {n} mails sent, got report={report}, rows={sent}, relay received {received}"
        )
    return {
        "database": make_url(settings.database.url).get_backend_name(),
        "mails": n,
        "batch_size": settings.outbound.batch_size,
        "connections": connections,
        "seconds": round(elapsed, 3),
        "mails_per_s": round(n / elapsed, 1),
        "relay_alone_mails_per_s": round(ceiling, 1),
    }
