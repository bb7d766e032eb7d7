"""`/metrics` for Prometheus and `/healthz` for load balancers and systemd watchers.

Served on `[metrics] listen` by a small HTTP server on a thread of its own,
so a busy event loop still answers (and `/healthz` can say that it is
stuck). Counts of what this process did come from `telemetry.TALLY`; what
the whole desk looks like (the mail waiting to be processed, the outbox's
depth and oldest unsent mail, the quarantine, bounces received) is read from
the database at each scrape, a few indexed aggregates, so every gateway
sharing the database reports the same figures for those.

`/healthz` answers 200 with a JSON body when the database answers and no
component is stuck (`telemetry.Heartbeat`), 503 otherwise, naming what is
wrong.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from mailgateway.db.models import InboxMail, InboxStatus, OutboxMail, OutboxStatus
from mailgateway.errors import ConfigError
from mailgateway.service import Gateway
from mailgateway.telemetry import TALLY, Histogram, heartbeats

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulated(),
                                 sum_value=histogram.total)


class GatewayCollector(Collector):
    """Everything `/metrics` shows, gathered at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        tally = TALLY.snapshot()
        received = CounterMetricFamily(
            "mailgateway_mails_received", "Mails stored by this process, by transport.",
            labels=["transport"])
        for transport, count in sorted(tally.received.items()):
            received.add_metric([transport], count)
        yield received
        processed = CounterMetricFamily(
            "mailgateway_mails_processed",
            "Mails through the pipeline by this gateway, by fate.", labels=["fate"])
        for fate, count in sorted(tally.processed.items()):
            processed.add_metric([fate], count)
        yield processed
        yield _histogram("mailgateway_pipeline_seconds",
                         "Time to process one stored mail (parse, decide, apply).",
                         tally.pipeline)
        yield _histogram("mailgateway_scheduler_pass_seconds",
                         "Duration of this gateway's scheduler passes.", tally.scheduler)
        imap = GaugeMetricFamily("mailgateway_imap_connected",
                                 "1 while the poller is connected to the mailbox.",
                                 labels=["mailbox"])
        for mailbox, connected in sorted(tally.imap_connected.items()):
            imap.add_metric([mailbox], int(connected))
        yield imap
        silent = GaugeMetricFamily(
            "mailgateway_component_stuck", "1 when a component is busy and silent too long.",
            labels=["component"])
        for heart in heartbeats():
            silent.add_metric([heart.name], int(heart.stuck()))
        yield silent
        yield from self._from_database()

    def _from_database(self) -> Iterator[Metric]:
        now = self._gateway.clock.now()
        with self._gateway.reads() as session:
            waiting, oldest_waiting = processing_backlog(session)
            by_status = dict(session.execute(
                select(OutboxMail.status, func.count()).group_by(OutboxMail.status)).all())
            oldest = session.execute(
                select(func.min(OutboxMail.created_at))
                .where(OutboxMail.status == OutboxStatus.PENDING)).scalar()
            quarantined = session.execute(
                select(func.count()).where(
                    InboxMail.status == InboxStatus.QUARANTINED.value)).scalar_one()
            bounces = session.execute(
                select(func.count()).where(OutboxMail.bounced_at.is_not(None))).scalar_one()
        # Processing falling behind, or not running anywhere, shows here first: every
        # transport goes on taking mail while the backlog grows.
        yield GaugeMetricFamily("mailgateway_inbox_waiting_mails",
                                "Stored mails not yet processed: the processing backlog.",
                                value=waiting)
        yield GaugeMetricFamily(
            "mailgateway_inbox_oldest_waiting_seconds",
            "Age of the oldest stored mail not yet processed (0: none).",
            value=age_seconds(now, oldest_waiting))
        depth = GaugeMetricFamily("mailgateway_outbox_mails", "Outbox rows by status.",
                                  labels=["status"])
        for status in OutboxStatus:
            depth.add_metric([status.value], by_status.get(status.value, 0))
        yield depth
        yield GaugeMetricFamily(
            "mailgateway_outbox_oldest_unsent_seconds",
            "Age of the oldest mail waiting to be sent (0: none).",
            value=age_seconds(now, oldest))
        yield GaugeMetricFamily("mailgateway_inbox_quarantined_mails",
                                "Received mails in quarantine, waiting for a person.",
                                value=quarantined)
        # Counted from the outbox, not from null-sender mail: that is also every
        # automatic reply (RFC 3834), and a report about mail not ours is no bounce.
        yield CounterMetricFamily("mailgateway_bounces_received",
                                  "Sent mails a delivery report said bounced.",
                                  value=bounces)


def processing_backlog(session: Session) -> tuple[int, datetime | None]:
    """Stored mail not yet processed: how much, and when the oldest came."""
    waiting, oldest = session.execute(
        select(func.count(), func.min(InboxMail.received_at))
        .where(InboxMail.status == InboxStatus.RECEIVED.value)).one()
    return waiting, oldest


def age_seconds(now: datetime, then: datetime | None) -> float:
    """Seconds since `then`, 0 when there is none (SQLite gives back naive UTC)."""
    if then is None:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def health(gateway: Gateway) -> tuple[bool, dict[str, Any]]:
    """(healthy, what `/healthz` says)."""
    report: dict[str, Any] = {"database": "ok", "components": {}}
    healthy = True
    try:
        with gateway.reads() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        healthy = False
        report["database"] = f"unreachable: {str(exc).splitlines()[0]}"
    for heart in heartbeats():
        stuck = heart.stuck()
        healthy = healthy and not stuck
        report["components"][heart.name] = {
            "state": "stuck" if stuck else ("busy" if heart.busy else "idle"),
            "last_heartbeat_seconds_ago": round(heart.silent_for(), 1)}
    report["status"] = "ok" if healthy else "unhealthy"
    return healthy, report


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"metrics.listen must be HOST:PORT, not {listen!r}.")
    return host.strip("[]"), int(port)


class MonitoringServer:
    """The HTTP server of `/metrics` and `/healthz`, a component of `serve`."""

    def __init__(self, listen: str, gateway: Gateway) -> None:
        self._address = _address(listen)
        self._gateway = gateway
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway))
        self.port = self._address[1]
        self.bound = threading.Event()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry, gateway = self.registry, self._gateway

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    try:
                        self._answer(200, CONTENT_TYPE, generate_latest(registry))
                    except Exception as exc:
                        log.warning("metrics_failed", error=str(exc).splitlines()[0])
                        self._answer(503, "text/plain", b"database unreachable\n")
                elif path == "/healthz":
                    healthy, report = health(gateway)
                    body = json.dumps(report, indent=1).encode()
                    self._answer(200 if healthy else 503, "application/json", body)
                else:
                    self._answer(404, "text/plain", b"/metrics or /healthz\n")

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        return Handler

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            server = ThreadingHTTPServer(self._address, self._handler())
        except OSError as exc:
            raise ConfigError(f"metrics.listen {self._address[0]}:{self._address[1]} cannot "
                              f"be listened on: {exc.strerror or exc}.") from None
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        self.bound.set()
        log.info("metrics_listening", host=self._address[0], port=self.port)
        try:
            await stopping.wait()
        finally:
            await asyncio.to_thread(server.shutdown)
            server.server_close()
