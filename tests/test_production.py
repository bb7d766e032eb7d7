"""Running in production: leadership, one host per SQLite file, /metrics and /healthz,
`serve --workers`, `doctor`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from structlog.testing import capture_logs

from mailgateway.clock import FixedClock
from mailgateway.config import DatabaseSettings, Settings, settings_from_mapping
from mailgateway.db.hosts import HostClaim
from mailgateway.db.migrate import upgrade
from mailgateway.db.models import InboxMail, InboxStatus, OutboxMail, OutboxStatus, Ticket
from mailgateway.db.session import create_db_engine
from mailgateway.doctor import run_checks
from mailgateway.errors import ConfigError
from mailgateway.leadership import Leadership
from mailgateway.monitoring import MonitoringServer
from mailgateway.outbound.intent import MailKind
from mailgateway.service import Gateway
from mailgateway.telemetry import TALLY, heartbeat, heartbeats
from mailgateway.workers import WorkerPool
from tests.conftest import write_toml
from tests.dovecot import Dovecot, dovecot_available
from tests.mails import build_mail, failure_report, register_desk
from tests.smtp_sink import SmtpSink, free_port
from tests.smtp_sink import smtp_sink as smtp_sink  # re-exported as a fixture

ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _mail(n: int, sender: str = "mario.rossi@studiorossi.it") -> bytes:
    return (f"From: Mario Rossi <{sender}>\r\nTo: assistenza@example.com\r\n"
            f"Subject: Richiesta {n}\r\nMessage-ID: <req{n}@studiorossi.it>\r\n"
            f"Date: Mon, 02 Mar 2026 10:00:00 +0100\r\n\r\nBuongiorno, problema {n}.\r\n"
            ).encode()


# ---- leadership ---------------------------------------------------------------------------


def test_one_leader_at_a_time_and_another_takes_over(settings: Settings) -> None:
    """Two gateways (two engines) on one database: the job is held by one; once the
    holder lets go, or its connection dies, the other takes it."""
    first, second = (create_db_engine(settings.database) for _ in range(2))
    try:
        a, b = Leadership(first, "imap:x@h:143/INBOX"), Leadership(second, "imap:x@h:143/INBOX")
        other_job = Leadership(second, "scheduler")
        assert a.acquire() and a.held
        assert not b.acquire()
        assert other_job.acquire()  # jobs are independent
        a.release()
        assert not a.held
        assert b.acquire()
        assert not a.acquire()
        first.dispose()  # a's engine gone does not free b's hold
        assert b.held
        b._drop()  # the holder's connection (or process) dies
        assert a.acquire()
        a.release()
        other_job.release()
    finally:
        first.dispose()
        second.dispose()


def test_postgresql_lets_go_of_a_dead_hosts_locks_within_half_a_minute(postgres_url: str) -> None:
    """A gateway host that dies without closing its connections (power lost) would
    keep its locks (the ticket counter's row, the IMAP poller's advisory lock) for
    TCP's default two hours: both sides probe the connection instead, and the URL's
    own choice wins on ours."""
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    chosen = create_db_engine(DatabaseSettings(url=make_url(postgres_url).update_query_dict(
        {"keepalives_idle": "60"}).render_as_string(hide_password=False)))
    try:
        with engine.connect() as connection:
            server = {name: connection.execute(text(f"SHOW {name}")).scalar() for name in (
                "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                "tcp_user_timeout")}
            ours = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        if make_url(postgres_url).host not in (None, ""):  # a Unix socket has no TCP
            assert server == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                              "tcp_keepalives_count": "3", "tcp_user_timeout": "25000"}
        assert (ours["keepalives"], ours["keepalives_idle"], ours["keepalives_count"]) == (
            "1", "10", "3")
        with chosen.connect() as connection:
            ours = connection.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert ours["keepalives_idle"] == "60"
    finally:
        engine.dispose()
        chosen.dispose()


def test_a_desk_with_many_mailboxes_leaves_the_work_its_connections(
    settings: Settings, postgres_url: str
) -> None:
    """Each mailbox's poller holds a connection for its lock for as long as it runs: 25
    of them would take every connection a pool of 10 (+10 overflow) has."""
    mailboxes = [{"host": "127.0.0.1", "username": f"box{n}@example.com", "password": "x"}
                 for n in range(25)]
    many = replace(settings_from_mapping({"imap": mailboxes}), helpdesk=settings.helpdesk,
                   database=DatabaseSettings(url=postgres_url))
    gateway = Gateway(many)
    leaders = [Leadership(gateway.engine, f"imap:box{n}") for n in range(25)]
    try:
        assert all(leader.acquire() for leader in leaders)
        sessions = [gateway.sessions() for _ in range(20)]  # the work's own pool, all of it
        try:
            assert all(s.execute(text("SELECT 1")).scalar() == 1 for s in sessions)
        finally:
            for session in sessions:
                session.close()
    finally:
        for leader in leaders:
            leader.release()
        gateway.close()


# ---- one host per SQLite file -------------------------------------------------------------


def test_a_sqlite_database_in_use_on_another_host_is_refused(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'mg.db'}"))
    try:
        first = HostClaim.take(engine, host="mail1")
        assert first is not None
        assert HostClaim.take(engine, host="mail1") is not None  # the same host: fine
        with pytest.raises(ConfigError, match=r"in use by a gateway on host mail1.*PostgreSQL"):
            HostClaim.take(engine, host="mail2")
        stale = time.time() - 120
        os.utime(first.path, (stale, stale))  # mail1 has not renewed for two minutes
        assert HostClaim.take(engine, host="mail2") is not None
    finally:
        engine.dispose()


# ---- /metrics and /healthz -----------------------------------------------------------------


class _Monitoring:
    """The monitoring server on its own loop in a thread, as serve runs it."""

    def __init__(self, gateway: Gateway) -> None:
        self.server = MonitoringServer("127.0.0.1:0", gateway)
        self._loop = asyncio.new_event_loop()
        self._stopping = asyncio.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self.server.run(self._stopping),))

    def __enter__(self) -> _Monitoring:
        self._thread.start()
        assert self.server.bound.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._loop.close()

    def metrics(self) -> dict[str, str]:
        """`/metrics` as sample name (with labels) to value."""
        status, text = self.get("/metrics")
        assert status == 200, text
        return dict(line.rsplit(" ", 1) for line in text.splitlines()
                    if line and not line.startswith("#"))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server.port}{path}") as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture
def accepting(settings: Settings) -> Iterator[Gateway]:
    """A gateway that opens tickets for senders it does not know."""
    gateway = Gateway(replace(settings, helpdesk=replace(settings.helpdesk,
                                                         unknown_sender="accept")))
    try:
        yield gateway
    finally:
        gateway.close()


def test_metrics_and_health_over_http(accepting: Gateway) -> None:
    gateway = accepting
    before = TALLY.snapshot()
    gateway.receive(_mail(1), transport="smtp")
    gateway.process_pending()
    with gateway.sessions.begin() as session:  # the acknowledgment went out
        sent = session.scalars(select(OutboxMail).where(
            OutboxMail.kind == "acknowledgment")).one()
        sent.status, sent.sent_at = OutboxStatus.SENT.value, gateway.clock.now()
    # An automatic reply and a report on the acknowledgment, both from the null
    # sender: only the report is a bounce.
    gateway.receive(_mail(2).replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:"),
                    transport="lmtp", envelope_from="")
    gateway.receive(failure_report(sent.message_id, "mario.rossi@studiorossi.it",
                                   "User unknown"), transport="lmtp", envelope_from="")
    gateway.process_pending()
    with _Monitoring(gateway) as monitoring:
        lines = monitoring.metrics()
        received = float(lines['mailgateway_mails_received_total{transport="smtp"}'])
        assert received == before.received["smtp"] + 1
        processed = sum(float(v) for k, v in lines.items()
                        if k.startswith("mailgateway_mails_processed_total"))
        assert processed >= sum(before.processed.values()) + 2
        assert float(lines['mailgateway_pipeline_seconds_count']) >= before.pipeline.number + 2
        assert float(lines['mailgateway_outbox_mails{status="bounced"}']) == 1
        assert float(lines["mailgateway_outbox_oldest_unsent_seconds"]) >= 0
        assert float(lines["mailgateway_bounces_received_total"]) == 1
        assert "mailgateway_inbox_quarantined_mails" in lines
        assert "mailgateway_scheduler_pass_seconds_count" in lines

        status, text = monitoring.get("/healthz")
        assert status == 200, text
        assert json.loads(text)["database"] == "ok"

        stuck = heartbeat("test component", stuck_after=0.05)
        stuck.working(True)
        try:
            time.sleep(0.1)
            status, text = monitoring.get("/healthz")
            assert status == 503
            report = json.loads(text)
            assert report["components"]["test component"]["state"] == "stuck"
            status, text = monitoring.get("/metrics")
            assert 'mailgateway_component_stuck{component="test component"} 1.0' in text
        finally:
            stuck.working(False)
        assert monitoring.get("/healthz")[0] == 200
        assert monitoring.get("/nothing")[0] == 404


def test_metrics_show_the_mail_waiting_to_be_processed_and_for_how_long(
    settings: Settings, clock: FixedClock
) -> None:
    """The backlog an operator alerts on: processing behind the listener, or stopped
    everywhere, while every transport goes on taking mail."""
    gateway = Gateway(replace(settings, helpdesk=replace(settings.helpdesk,
                                                         unknown_sender="accept")), clock)
    try:
        with _Monitoring(gateway) as monitoring:
            idle = monitoring.metrics()
            assert float(idle["mailgateway_inbox_waiting_mails"]) == 0
            assert float(idle["mailgateway_inbox_oldest_waiting_seconds"]) == 0

            gateway.receive(_mail(1), transport="smtp")
            clock.advance(seconds=90)
            gateway.receive(_mail(2), transport="imap")
            clock.advance(seconds=30)
            behind = monitoring.metrics()
            assert float(behind["mailgateway_inbox_waiting_mails"]) == 2
            assert float(behind["mailgateway_inbox_oldest_waiting_seconds"]) == 120

            assert gateway.process_pending() == 2
            caught_up = monitoring.metrics()
            assert float(caught_up["mailgateway_inbox_waiting_mails"]) == 0
            assert float(caught_up["mailgateway_inbox_oldest_waiting_seconds"]) == 0
            assert float(caught_up['mailgateway_outbox_mails{status="pending"}']) == 4
            assert float(caught_up["mailgateway_outbox_oldest_unsent_seconds"]) == 0
            clock.advance(seconds=45)  # acknowledgments and notices wait, none sent
            assert float(monitoring.metrics()["mailgateway_outbox_oldest_unsent_seconds"]) == 45
    finally:
        gateway.close()


def test_health_says_503_when_the_database_does_not_answer(settings: Settings) -> None:
    """A load balancer or systemd watchdog asks /healthz: with the database gone the
    gateway can acknowledge nothing, and says why."""
    gone = Gateway(replace(settings, database=DatabaseSettings(
        url="postgresql+psycopg://nobody@127.0.0.1:1/none")))
    try:
        with _Monitoring(gone) as monitoring:
            status, text = monitoring.get("/healthz")
            assert status == 503
            report = json.loads(text)
            assert report["status"] == "unhealthy"
            assert report["database"].startswith("unreachable:")
            assert monitoring.get("/metrics")[0] == 503
    finally:
        gone.close()


# ---- serve --workers -------------------------------------------------------------------------


def _serve(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "mailgateway", "--config", str(config), "serve", *args],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


@pytest.fixture
def serve_config(config_data: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    config_data["helpdesk"]["unknown_sender"] = "accept"
    config_data["smtp"]["port"] = free_port()
    config_data["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    config_data["log"] = {"level": "info", "format": "json"}
    yield config_data


def test_serve_with_workers_processes_the_mail_and_stops_cleanly(
    serve_config: dict[str, Any], tmp_path: Path, settings: Settings
) -> None:
    """The listener's process answers, two worker processes process; /metrics counts
    what the workers did; a SIGTERM stops every process with exit 0. The secret is
    left to be generated (as a first try on one machine does)."""
    del serve_config["helpdesk"]["secret"]
    config = write_toml(serve_config, tmp_path / "serve.toml")
    log = tmp_path / "serve.log"
    process = _serve(config, "--workers", "2", log=log)
    port, metrics = serve_config["smtp"]["port"], serve_config["metrics"]["listen"]
    try:
        wait_until(lambda: b"smtp.listening" in log.read_bytes() or process.poll() is not None,
                   what="the listener")
        with smtplib.SMTP("127.0.0.1", port) as client:
            for n in range(20):
                client.sendmail("mario.rossi@studiorossi.it", ["assistenza@example.com"],
                                _mail(n))
        gateway = Gateway(settings_from_mapping(serve_config))
        try:
            def processed() -> int:
                with gateway.reads() as session:
                    return session.execute(select(func.count()).where(
                        InboxMail.status == InboxStatus.PROCESSED.value)).scalar_one()

            try:
                wait_until(lambda: processed() == 20, what="20 mails processed")
            except AssertionError:
                raise AssertionError(log.read_text()[-5000:]) from None
            with gateway.reads() as session:
                assert session.execute(select(func.count(Ticket.id))).scalar_one() == 20
        finally:
            gateway.close()
        workers = [line for line in log.read_text().splitlines() if "worker_started" in line]
        assert {json.loads(line)["worker"] for line in workers} == {0, 1}

        def counted() -> float:
            with urllib.request.urlopen(f"http://{metrics}/metrics") as answer:
                text = answer.read().decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("mailgateway_mails_processed_total"))

        wait_until(lambda: counted() == 20, what="the workers' counts at the parent")
        with urllib.request.urlopen(f"http://{metrics}/healthz") as answer:
            health = json.loads(answer.read())
        assert {"worker 0", "worker 1", "event loop"} <= set(health["components"])

        # SIGHUP: the file is read again; [log] applies, another change waits for a restart.
        # It is passed on to the workers that are up (on PostgreSQL one may have done
        # all the mail while the other still started; that one reads the file as it starts).
        wait_until(lambda: log.read_bytes().count(b"worker_ready") == 2, what="both workers up")
        serve_config["smtp"]["max_recipients"] = 5
        write_toml(serve_config, config)
        process.send_signal(signal.SIGHUP)
        try:
            wait_until(lambda: log.read_bytes().count(b"configuration_reloaded") == 3,
                       what="the reload, in the parent and passed on to both workers")
        except AssertionError:
            raise AssertionError(log.read_text()[-6000:]) from None
        for reloaded in [json.loads(line) for line in log.read_text().splitlines()
                         if "configuration_reloaded" in line]:
            assert reloaded["needs_restart"] == ["smtp"]
            assert reloaded["applied"] == ["log", "rules", "templates"]
    finally:
        _stop(process, log)
    assert log.read_text().count("stopped cleanly") == 3  # the parent and both workers


def test_a_worker_killed_is_started_again(
    serve_config: dict[str, Any], tmp_path: Path, settings: Settings
) -> None:
    config = write_toml(serve_config, tmp_path / "serve.toml")
    log = tmp_path / "serve.log"
    process = _serve(config, "--workers", "1", "--only", "smtp,processor", log=log)

    def pids() -> list[int]:
        return [json.loads(line)["pid"] for line in log.read_text().splitlines()
                if "worker_started" in line]

    try:
        wait_until(lambda: len(pids()) == 1, what="the worker")
        os.kill(pids()[0], signal.SIGKILL)
        wait_until(lambda: len(pids()) == 2, what="the worker started again")
        with smtplib.SMTP("127.0.0.1", serve_config["smtp"]["port"]) as client:
            client.sendmail("mario.rossi@studiorossi.it", ["assistenza@example.com"], _mail(1))
        gateway = Gateway(settings_from_mapping(serve_config))
        try:
            def tickets() -> int:
                with gateway.reads() as session:
                    return session.execute(select(func.count(Ticket.id))).scalar_one()

            wait_until(lambda: tickets() == 1, what="the mail processed by the new worker")
        finally:
            gateway.close()
    finally:
        _stop(process, log)
    assert "worker_died" in log.read_text()


def test_imap_mail_waits_in_its_folder_for_the_unit_that_processes(
    serve_config: dict[str, Any], tmp_path: Path, dovecot: Dovecot
) -> None:
    """`--only imap` stores and does not process; once a processing unit (with its
    worker) has done each mail, the poller moves it by its fate."""
    del serve_config["metrics"]  # two units on one host: one port each would do too
    serve_config["imap"] = [{"host": "127.0.0.1", "port": dovecot.port,
                             "username": dovecot.username, "password": dovecot.password}]
    config = write_toml(serve_config, tmp_path / "serve.toml")
    no_sender = b"To: assistenza@example.com\r\nSubject: Senza mittente\r\n\r\nCiao\r\n"
    dovecot.append("INBOX", _mail(1))
    dovecot.append("INBOX", no_sender)
    gateway = Gateway(settings_from_mapping(serve_config))
    logs = [tmp_path / "imap.log", tmp_path / "processor.log"]
    units = [_serve(config, "--only", "imap", log=logs[0])]
    try:
        def statuses() -> list[str]:
            with gateway.reads() as session:
                return list(session.scalars(select(InboxMail.status).order_by(InboxMail.id)))

        wait_until(lambda: len(statuses()) == 2, what="both mails stored")
        time.sleep(1.0)
        assert statuses() == ["received", "received"]  # nobody here processes
        assert dovecot.count("INBOX") == 2

        units.append(_serve(config, "--only", "processor", "--workers", "1", log=logs[1]))
        wait_until(lambda: dovecot.count("INBOX") == 0, what="both mails moved")
        assert statuses() == ["processed", "quarantined"]
        assert (dovecot.count("Processed"), dovecot.count("Failed")) == (1, 1)
    finally:
        gateway.close()
        for unit, log in zip(units, logs, strict=False):
            _stop(unit, log)


def test_a_worker_that_dies_at_start_shows_stuck_and_waits_longer_each_time() -> None:
    """A worker that exits before saying a word (its configuration broken, say) is no
    sign of life however often it is started: /healthz shows it stuck, and each pause
    before it is started again is twice the last, not the same short one for ever."""
    failing = (sys.executable, "-c", "import sys; sys.exit(3)")
    pool = WorkerPool(failing, 1, stuck_after=0.3, restart_after=0.1)

    async def run(logs: list[dict[str, Any]]) -> None:
        stopping = asyncio.Event()
        running = asyncio.create_task(pool.run(stopping))
        heart = next(h for h in heartbeats() if h.name == "worker 0")
        deadline = time.monotonic() + 30
        while sum(e["event"] == "worker_died" for e in logs) < 3 or not heart.stuck():
            assert time.monotonic() < deadline, "the dead worker never showed as stuck"
            await asyncio.sleep(0.05)
        stopping.set()
        await running
        assert not heart.stuck()  # stopped on purpose: nothing is asked of it

    with capture_logs() as logs:
        asyncio.run(run(logs))
    died = [e for e in logs if e["event"] == "worker_died"]
    assert [e["restart_in_seconds"] for e in died[:3]] == [0.2, 0.4, 0.8]
    assert all(e["returncode"] == 3 for e in died)


# ---- doctor --------------------------------------------------------------------------------


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    if not dovecot_available():
        from tests.conftest import skip_or_fail

        skip_or_fail("Dovecot (dovecot, doveadm) is not installed or cannot run here")
    with Dovecot(username="assistenza@example.com") as server:
        with server.client() as client:
            for folder in ("Processed", "Failed"):
                client.create_folder(folder)
        yield server


def _doctor(settings: Settings, clock: FixedClock | None = None) -> tuple[int, list[str]]:
    lines: list[str] = []
    return run_checks(settings, "test.toml", lines.append, clock), lines


def test_doctor_passes_on_a_working_setup_and_names_each_fault(
    settings: Settings, smtp_sink: SmtpSink, dovecot: Dovecot, tmp_path: Path
) -> None:
    engine = create_db_engine(settings.database)
    upgrade(engine)
    engine.dispose()
    mailbox = {"host": "127.0.0.1", "port": dovecot.port, "username": dovecot.username,
               "password": dovecot.password}
    working = replace(
        settings_from_mapping({
            "imap": [mailbox],
            "outbound": {"transport": "smtp", "host": smtp_sink.host, "port": smtp_sink.port,
                         "maildir": settings.outbound.maildir},
        }),
        helpdesk=replace(settings.helpdesk, secret="a-long-random-secret"),
        database=settings.database, rules=settings.rules, groups=settings.groups)
    code, lines = _doctor(working)
    assert code == 0, lines
    assert lines[-1] == "all checks passed"
    assert any(line.startswith("ok    relay: ") and "EHLO" in line for line in lines)
    assert any(line.startswith("ok    imap[0]") for line in lines)
    assert smtp_sink.deliveries == []  # nothing was sent

    rules = Path(settings.rules.path)
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "broken.toml").write_text("[[rule]\nname = ", encoding="utf-8")
    template = rules / "templates" / "it" / f"{next(iter(MailKind)).value}.txt.j2"
    template.parent.mkdir(parents=True)
    template.write_text("Gentile {{ customer.name }\n", encoding="utf-8")
    closed_port = free_port()
    broken = settings_from_mapping({
        "imap": [mailbox | {"password": "wrong"},
                 mailbox | {"failed_folder": "Non esiste"}],
        "outbound": {"transport": "smtp", "host": "127.0.0.1", "port": closed_port,
                     "timeout_seconds": 2},
    })
    broken = replace(broken, database=settings.database, rules=settings.rules,
                     helpdesk=working.helpdesk)
    code, lines = _doctor(broken)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert lines[-1] == f"{len(failed)} check(s) failed"
    assert any(f"relay: 127.0.0.1:{closed_port}" in line and "outbound.host" in line
               for line in failed)
    assert any(line.startswith("FAIL  imap[0]") and "login refused" in line for line in failed)
    assert any(line.startswith("FAIL  imap[1]") and "Non esiste missing" in line
               for line in failed)
    assert any(line.startswith("FAIL  rules:") and "broken.toml" in line for line in failed)
    assert any(line.startswith("FAIL  templates:") and template.name in line
               for line in failed), failed
    assert any(line.startswith("ok    database schema") for line in lines)


def test_doctor_names_an_unreachable_database_and_an_old_schema(
    settings: Settings, tmp_path: Path
) -> None:
    """A SQLite file not made yet is named and left unmade (serve makes it); an empty
    one is at no migration."""
    file = tmp_path / "database" / "new.db"
    fresh = replace(settings, database=DatabaseSettings(url=f"sqlite:///{file}"))
    code, lines = _doctor(fresh)
    assert code == 1
    assert any(line.startswith("FAIL  database:") and "does not exist yet" in line
               and "db upgrade" in line for line in lines), lines
    assert any(line.startswith("FAIL  rules:") and "database first" in line
               for line in lines), lines
    assert not file.parent.exists()
    file.parent.mkdir()
    file.touch()
    code, lines = _doctor(fresh)
    assert code == 1
    assert any(line.startswith("FAIL  database schema") and "at migration none" in line
               and "db upgrade" in line for line in lines), lines
    gone = replace(settings, database=DatabaseSettings(
        url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    code, lines = _doctor(gone)
    assert code == 1
    assert any(line.startswith("FAIL  database:") and "database.url" in line for line in lines)


def test_doctor_names_mail_no_processor_or_dispatcher_has_taken(
    settings: Settings, clock: FixedClock
) -> None:
    """"No ticket appears", "no answer comes": doctor says which component runs
    nowhere, once mail has waited for it longer than a running one would let it."""
    gateway = Gateway(replace(settings, helpdesk=replace(settings.helpdesk,
                                                         unknown_sender="accept")), clock)

    def said(name: str) -> str:
        lines = _doctor(settings, clock)[1]
        return next(line for line in lines if line.split(":")[0].split()[-1] == name)

    try:
        assert said("processing") == "ok    processing: no stored mail waiting"
        assert said("sending") == "ok    sending: no mail overdue to be sent"
        gateway.receive(_mail(1), transport="smtp")
        clock.advance(minutes=2)
        assert said("processing") == (
            "ok    processing: 1 stored mail(s) waiting, the oldest for 2 min")
        clock.advance(hours=2, minutes=3)
        processing = said("processing")
        assert processing.startswith("FAIL  processing: 1 stored mail(s) not processed, the "
                                     "oldest for 2 h 5 min: is a processor running?")
        assert "--only processor" in processing

        assert gateway.process_pending() == 1  # an acknowledgment and a notice, due now
        assert said("processing") == "ok    processing: no stored mail waiting"
        clock.advance(minutes=9)
        assert said("sending") == "ok    sending: no mail overdue to be sent"
        clock.advance(minutes=2)
        sending = said("sending")
        assert sending.startswith("FAIL  sending: 2 mail(s) due to be sent and not sent, the "
                                  "first due 11 min ago: is a dispatcher running, and keeping up?")
        assert "--only dispatcher" in sending
    finally:
        gateway.close()


def _doctor_as_another_user(settings: Settings) -> list[str]:
    """Doctor's lines as a user who owns none of the files: as `nobody` in a forked
    child when the tests run as root (root may write anywhere), else as this user."""
    if os.geteuid() != 0:
        return _doctor(settings)[1]
    _doctor(settings)  # the child imports nothing: the folders of the packages may be closed
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's report is read below
        try:
            os.setgid(65534)
            os.setuid(65534)
            lines = _doctor(settings)[1]
        except BaseException as exc:
            lines = [f"crashed: {exc!r}"]
        os.write(writing, json.dumps(lines).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as report:
        lines = json.loads(report.read())
    os.waitpid(child, 0)
    return lines


def test_doctor_names_the_files_serve_could_not_write_and_the_folders_closed_to_it(
    settings: Settings, tmp_path: Path
) -> None:
    """Doctor run as a user who owns none of the files: a folder it cannot enter, a
    database it cannot write, a template folder it cannot read (serve would use the
    packaged templates without a word) are each named, and doctor does not crash."""
    base = Path(tempfile.mkdtemp(prefix="mailgateway-doctor-"))
    base.chmod(0o755)
    closed, kept = base / "closed", base / "kept"
    try:
        (closed / "var").mkdir(parents=True)
        for folder in ("var", "rules/templates"):
            (kept / folder).mkdir(parents=True)
        upgrade(engine := create_db_engine(DatabaseSettings(url=f"sqlite:///{kept / 'm.db'}")))
        engine.dispose()

        def site(root: Path) -> Settings:
            return replace(
                settings, database=DatabaseSettings(url=f"sqlite:///{root / 'db' / 'm.db'}"),
                outbound=replace(settings.outbound, maildir=str(root / "var" / "sent")),
                rules=replace(settings.rules, path=str(root / "rules")))

        closed.chmod(0o000)
        lines = _doctor_as_another_user(site(closed))
        assert lines[-1] == "4 check(s) failed", lines  # and the rules are not checked
        for name, path in (("database", closed / "db" / "m.db"),
                           ("relay", closed / "var" / "sent"),
                           ("templates", closed / "rules" / "templates")):
            assert f"FAIL  {name}: {path} is closed to this user: run doctor as the user " \
                "serve runs as, and give that user the folder" in lines, lines

        (kept / "db").mkdir()
        (kept / "m.db").rename(kept / "db" / "m.db")
        (kept / "rules" / "templates").chmod(0o000)
        for path in (kept / "db" / "m.db", kept / "db", kept / "var", kept):
            path.chmod(0o555 if path.is_dir() else 0o444)
        lines = _doctor_as_another_user(site(kept))
        assert any(line.startswith(f"FAIL  database: {kept / 'db' / 'm.db'} is not writable "
                                   "by this user") for line in lines), lines
        assert f"FAIL  templates: {kept / 'rules' / 'templates'} is closed to this user: run " \
            "doctor as the user serve runs as, and give that user the folder" in lines, lines
        assert not any(line.startswith("crashed") for line in lines), lines
    finally:
        for path in (closed, kept, kept / "db", kept / "rules" / "templates"):
            if path.exists():
                path.chmod(0o755)
        shutil.rmtree(base)


def test_doctor_asks_for_the_secret_serve_would_refuse_to_start_without(
    settings: Settings, tmp_path: Path
) -> None:
    """On loopback a generated secret will do, and doctor says which file holds it
    without making it; listening beyond loopback, a configured one is needed, as
    `serve` will say when it refuses to start."""
    unset = replace(settings, helpdesk=replace(settings.helpdesk, secret="",
                                               data_dir=str(tmp_path / "var")))
    _, lines = _doctor(unset)
    assert any(line.startswith("ok    configuration:") and "secret is not set" in line
               for line in lines), lines
    public = replace(unset, smtp=replace(unset.smtp, host="0.0.0.0"))
    code, lines = _doctor(public)
    assert code == 1
    assert any(line.startswith("FAIL  configuration:") and "helpdesk.secret must be set"
               in line for line in lines), lines
    assert not (tmp_path / "var" / "secret").exists()
    config = tmp_path / "loopback.toml"
    config.write_text(f"[helpdesk]\ndata_dir = {json.dumps(str(tmp_path / 'cli'))}\n",
                      encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(config), "doctor"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "ok    configuration:" in result.stdout, result.stdout
    assert not (tmp_path / "cli" / "secret").exists()


def test_doctor_from_the_command_line(tmp_path: Path) -> None:
    """A configuration that does not load is one failed check, exit 1."""
    config = tmp_path / "bad.toml"
    config.write_text("[helpdesk]\naddress = 'nope'\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(config), "doctor"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  configuration:")


def test_a_restart_of_postgresql_costs_no_mail(
    settings: Settings, clock: FixedClock, postgres_url: str
) -> None:
    """The engine does not ping before each transaction: the connections the server
    dropped are found by the statements that meet them, and the work is done again.
    PostgreSQL in either run: a SQLite file has no connection for a server to drop."""
    gateway = Gateway(replace(settings, database=DatabaseSettings(url=postgres_url)), clock)
    try:
        _restart_costs_no_mail(gateway)
    finally:
        gateway.close()


def _restart_costs_no_mail(gateway: Gateway) -> None:
    register_desk(gateway)
    gateway.receive(build_mail(message_id="before@client.test"), transport="smtp")
    assert gateway.process_pending() == 1
    with gateway.engine.connect() as admin:  # what a restart does to every session
        admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    gateway.receive(build_mail(message_id="after@client.test", subject="Altro errore"),
                    transport="smtp")
    assert gateway.process_pending() == 1
    with gateway.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 2

