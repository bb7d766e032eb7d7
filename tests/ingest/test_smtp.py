"""The SMTP/LMTP listener over real sockets: smtplib, swaks and raw clients against it.

End-to-end tests run the listener with the real `Gateway` (and the server's
processor) and look for tickets in the database. The listener's own duties
(commit before 250, draining on stop, limits) are pinned with a small
in-memory receiver that can hold or fail a commit on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from mailgateway.config import Settings, SmtpSettings
from mailgateway.db.models import InboxMail, InboxStatus, Ticket
from mailgateway.errors import ConfigError, TemporaryError
from mailgateway.ingest import Received, Receiver
from mailgateway.ingest.smtp import SmtpListener
from mailgateway.pipeline.prepare import raw_message_id
from mailgateway.server import Processor
from mailgateway.service import Gateway
from tests.conftest import skip_or_fail, write_toml
from tests.mails import CUSTOMER, PERSON, build_mail, register_desk

HOST = "127.0.0.1"
SUPPORT = "assistenza@example.com"
REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `condition` with short waits; fail naming `what` when it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def make_mail(subject: str, body: str = "Buongiorno,\nil programma non stampa.\n") -> bytes:
    return build_mail(sender=CUSTOMER, subject=subject, body=body)


# --- harness ----------------------------------------------------------------------------------


@dataclass
class Stored:
    raw: bytes
    transport: str
    envelope_from: str | None
    envelope_to: tuple[str, ...]


class RecordingReceiver:
    """A `Receiver` that keeps mails in memory, deduplicates by content, and can
    hold a commit (to look at the listener meanwhile) or fail it."""

    def __init__(self) -> None:
        self.mails: list[Stored] = []
        self.fail_next = 0
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self._by_hash: dict[str, int] = {}
        self._lock = threading.Lock()

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        trust_authentication_results: bool = False,
    ) -> Received:
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(10)
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise TemporaryError("database is locked")
            digest = hashlib.sha256(raw).hexdigest()
            if digest in self._by_hash:
                return Received(self._by_hash[digest], duplicate=True)
            self.mails.append(Stored(raw, transport, envelope_from, tuple(envelope_to)))
            self._by_hash[digest] = len(self.mails)
            return Received(len(self.mails), duplicate=False)

    def process(self, inbox_id: int) -> str:
        return "processed"

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        return None

    def accepts_recipient(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() == "example.com"


class Component(Protocol):
    async def run(self, stopping: asyncio.Event) -> None: ...


class RunningListener:
    """The listener (and optionally the processor) on its own event loop in a thread,
    the way `serve` runs them."""

    def __init__(
        self,
        settings: SmtpSettings,
        receiver: Receiver,
        on_stored: Callable[[int], None] | None = None,
        beside: Sequence[Component] = (),
    ) -> None:
        self.listener = SmtpListener(settings, receiver, on_stored)
        self._beside = beside
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="smtp-listener")
        self._outcome: Future[None] | None = None
        self.returned = threading.Event()

    def _main(self) -> None:
        async def serve() -> None:
            stopping = self._stopping = asyncio.Event()
            others = asyncio.gather(*(c.run(stopping) for c in self._beside))
            await self.listener.run(stopping)
            self.returned.set()
            await others

        try:
            self._loop.run_until_complete(serve())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    @property
    def port(self) -> int:
        return self.listener.port

    def start(self) -> RunningListener:
        outcome = self._outcome = self._pool.submit(self._main)
        wait_until(lambda: self.listener.serving or outcome.done(), what="the listener to bind")
        if outcome.done():
            outcome.result()  # raises what stopped it
        return self

    def request_stop(self) -> None:
        wait_until(lambda: self._stopping is not None, what="the stop event")
        assert self._stopping is not None
        with contextlib.suppress(RuntimeError):  # the loop already ran out and closed
            self._loop.call_soon_threadsafe(self._stopping.set)

    def stop(self, timeout: float = 20.0) -> None:
        assert self._outcome is not None
        if not self._outcome.done():
            self.request_stop()
        self._outcome.result(timeout)  # re-raises anything the listener raised
        self._pool.shutdown()

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(HOST, self.port, timeout=10)


def smtp_settings(**overrides: Any) -> SmtpSettings:
    return replace(SmtpSettings(host=HOST, port=0, shutdown_grace_seconds=5), **overrides)


def send(port: int, raw: bytes, to: Sequence[str] = (SUPPORT,), sender: str = CUSTOMER) -> None:
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        client.sendmail(sender, list(to), raw)


def send_recording(port: int, outcome: list[object], raw: bytes) -> None:
    """Send one mail from a thread; record "sent" or the client's error."""
    try:
        send(port, raw)
        outcome.append("sent")
    except (smtplib.SMTPException, OSError) as exc:
        outcome.append(exc)


def converse(stream: io.BufferedRWPair, commands: Sequence[bytes]) -> list[bytes]:
    """Send raw command lines; return the last line of each reply."""
    last: list[bytes] = []
    for command in commands:
        stream.write(command + b"\r\n")
        stream.flush()
        line = stream.readline()
        while line[3:4] == b"-":
            line = stream.readline()
        last.append(line)
    return last


def raw_session(port: int) -> tuple[socket.socket, io.BufferedRWPair]:
    sock = socket.create_connection((HOST, port), timeout=10)
    stream = sock.makefile("rwb")
    assert stream.readline().startswith(b"220")
    return sock, stream


def count(gateway: Gateway, model: type[Ticket] | type[InboxMail]) -> int:
    with gateway.sessions() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def all_processed(gateway: Gateway) -> bool:
    with gateway.sessions() as session:
        waiting = select(func.count()).where(InboxMail.status == InboxStatus.RECEIVED.value)
        return session.execute(waiting).scalar_one() == 0


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver()


@pytest.fixture
def running(receiver: RecordingReceiver) -> Iterator[RunningListener]:
    server = RunningListener(smtp_settings(), receiver).start()
    yield server
    server.stop()


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    return gateway


@pytest.fixture
def served(desk: Gateway, settings: Settings) -> Iterator[RunningListener]:
    """The listener in front of the real gateway, with the processor it wakes."""
    processor = Processor(desk, idle_seconds=0.5)
    limits = replace(settings.smtp, max_message_bytes=50_000, max_recipients=3)
    server = RunningListener(limits, desk, processor.wake, beside=[processor]).start()
    yield server
    server.stop()


# --- end to end: mail becomes tickets -----------------------------------------------------------


def test_200_mails_on_8_parallel_connections_all_become_tickets(
    served: RunningListener, desk: Gateway
) -> None:
    mails = [make_mail(f"Richiesta {i}: MOCO non stampa") for i in range(200)]

    def client(share: list[bytes]) -> int:
        with served.smtp() as smtp:
            for raw in share:
                assert smtp.sendmail(CUSTOMER, [SUPPORT], raw) == {}
        return len(share)

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(client, [mails[i::8] for i in range(8)])) == 200

    assert count(desk, InboxMail) == 200  # every 250 was a commit
    wait_until(lambda: all_processed(desk), timeout=120, what="the processor to finish")
    assert count(desk, Ticket) == 200
    with desk.sessions() as session:
        rows = session.execute(select(InboxMail.transport, InboxMail.status)).all()
        subjects = set(session.execute(select(Ticket.subject)).scalars())
    assert {tuple(r) for r in rows} == {("smtp", InboxStatus.PROCESSED.value)}
    assert subjects == {f"Richiesta {i}: MOCO non stampa" for i in range(200)}


def test_the_same_mail_twice_is_one_ticket(served: RunningListener, desk: Gateway) -> None:
    raw = make_mail("Inviata due volte")
    send(served.port, raw)
    send(served.port, raw)  # a duplicate is stored already: still a 250
    wait_until(lambda: all_processed(desk) and count(desk, Ticket) == 1, what="one ticket")
    assert count(desk, InboxMail) == 1


def test_foreign_recipient_gets_550_never_relayed(served: RunningListener, desk: Gateway) -> None:
    with served.smtp() as smtp:
        smtp.ehlo()
        smtp.mail(CUSTOMER)
        code, text = smtp.rcpt("someone@elsewhere.org")
        assert code == 550 and b"5.1.1" in text
        smtp.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(CUSTOMER, ["victim@elsewhere.org"], make_mail("relay?"))
        # Ours among foreign ones: only ours are accepted.
        refused = smtp.sendmail(CUSTOMER, [SUPPORT, "x@elsewhere.org"], make_mail("Misto"))
        assert list(refused) == ["x@elsewhere.org"] and refused["x@elsewhere.org"][0] == 550
    with desk.sessions() as session:
        assert session.execute(select(InboxMail.envelope_to)).scalars().all() == [[SUPPORT]]


def test_size_is_advertised_and_an_oversized_mail_gets_552(
    served: RunningListener, desk: Gateway
) -> None:
    big = make_mail("Grande", body="riga di testo\n" * 5000)
    with served.smtp() as smtp:
        smtp.ehlo()
        assert smtp.has_extn("size") and int(smtp.esmtp_features["size"]) == 50_000
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:  # SIZE= on MAIL FROM
            smtp.sendmail(CUSTOMER, [SUPPORT], big)
        assert declared.value.smtp_code == 552
    with served.smtp() as smtp:
        smtp.ehlo()
        smtp.mail(CUSTOMER)  # no SIZE declared: refused after DATA
        smtp.rcpt(SUPPORT)
        assert smtp.data(big)[0] == 552
        assert smtp.sendmail(CUSTOMER, [SUPPORT], make_mail("Piccolo")) == {}
    assert count(desk, InboxMail) == 1


def test_too_many_recipients_gets_452(served: RunningListener, desk: Gateway) -> None:
    with served.smtp() as smtp:
        smtp.ehlo()
        smtp.mail(CUSTOMER)
        replies = [smtp.rcpt(f"r{i}@example.com") for i in range(4)]
        assert [code for code, _ in replies] == [250, 250, 250, 452]
        assert b"4.5.3" in replies[3][1]
        assert smtp.data(make_mail("Tanti destinatari"))[0] == 250
    with desk.sessions() as session:
        assert len(session.execute(select(InboxMail.envelope_to)).scalar_one()) == 3


def test_database_failure_gets_451_and_the_retry_becomes_a_ticket(
    served: RunningListener, desk: Gateway
) -> None:
    raw = make_mail("Il database era giù")

    def down(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "WITH")):
            raise OperationalError(statement, None, ConnectionError("the database is down"))

    event.listen(desk.engine, "before_cursor_execute", down)
    with served.smtp() as smtp:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            smtp.sendmail(CUSTOMER, [SUPPORT], raw)
        assert failed.value.smtp_code == 451 and b"4.3.0" in failed.value.smtp_error
        event.remove(desk.engine, "before_cursor_execute", down)  # the database is back
        assert smtp.sendmail(CUSTOMER, [SUPPORT], raw) == {}  # the sender's retry
    wait_until(lambda: all_processed(desk) and count(desk, Ticket) == 1, what="the ticket")
    assert count(desk, InboxMail) == 1


def test_lmtp_answers_once_per_recipient(desk: Gateway, settings: Settings) -> None:
    server = RunningListener(replace(settings.smtp, lmtp=True), desk).start()
    try:
        with smtplib.LMTP(HOST, server.port, timeout=10) as lmtp:
            assert lmtp.docmd("EHLO", "mta.example.com")[0] == 500  # LMTP has LHLO only
            assert lmtp.ehlo("mta.example.com")[0] == 250  # smtplib.LMTP sends LHLO
            assert lmtp.has_extn("size")
            assert lmtp.mail(CUSTOMER)[0] == 250
            recipients = [SUPPORT, "tecnici@example.com", "altro@elsewhere.org"]
            assert [lmtp.rcpt(r)[0] for r in recipients] == [250, 250, 550]
            code, first = lmtp.data(make_mail("Via LMTP"))
            assert code == 250 and SUPPORT.encode() in first
            code, second = lmtp.getreply()  # RFC 2033: one reply per accepted recipient
            assert code == 250 and b"tecnici@example.com" in second
            assert lmtp.noop()[0] == 250  # nothing left over in the stream
    finally:
        server.stop()
    with desk.sessions() as session:
        row = session.execute(select(InboxMail)).scalar_one()
        assert (row.transport, row.envelope_to) == ("lmtp", [SUPPORT, "tecnici@example.com"])
    assert desk.process_pending() == 1 and count(desk, Ticket) == 1


def test_lmtp_store_failure_answers_451_per_recipient(receiver: RecordingReceiver) -> None:
    receiver.fail_next = 1
    server = RunningListener(smtp_settings(lmtp=True), receiver).start()
    try:
        sock, stream = raw_session(server.port)
        with sock, stream:
            script = [b"LHLO mta", b"MAIL FROM:<a@b.it>", b"RCPT TO:<a@example.com>"]
            script += [b"RCPT TO:<b@example.com>", b"DATA"]
            assert [r[:3] for r in converse(stream, script)] == [b"250"] * 4 + [b"354"]
            stream.write(make_mail("x") + b".\r\n")
            stream.flush()
            assert stream.readline().startswith(b"451 4.3.0")
            assert stream.readline().startswith(b"451 4.3.0")
    finally:
        server.stop()
    assert receiver.mails == []


def test_swaks_as_an_independent_client(
    served: RunningListener, desk: Gateway, tmp_path: Path
) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        skip_or_fail("swaks is not installed (apt-get install swaks)")
        return
    mail = tmp_path / "mail.eml"
    mail.write_bytes(build_mail(sender=PERSON, subject="Da swaks: MPRI si chiude"))
    command = [swaks, "--server", f"{HOST}:{served.port}", "--to", SUPPORT, "--from", PERSON]
    command += ["--data", f"@{mail}", "--timeout", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0" in result.stdout
    wait_until(lambda: count(desk, Ticket) == 1, what="the ticket")
    with desk.sessions() as session:
        assert session.execute(select(Ticket.subject)).scalar_one() == "Da swaks: MPRI si chiude"


# --- the listener's own duties ------------------------------------------------------------------


def test_250_only_after_the_commit_and_the_processor_woken_after(
    receiver: RecordingReceiver,
) -> None:
    woken: list[int] = []
    receiver.hold = threading.Event()
    server = RunningListener(smtp_settings(), receiver, on_stored=woken.append).start()
    outcome: list[object] = []
    thread = threading.Thread(target=send_recording, args=(server.port, outcome, b"x"))
    try:
        thread.start()
        wait_until(receiver.entered.is_set, what="the commit to start")
        time.sleep(0.2)
        assert outcome == [] and woken == [], "acknowledged before the commit finished"
        receiver.hold.set()
        thread.join(10)
        assert outcome == ["sent"]
        wait_until(lambda: woken == [1], what="on_stored")
    finally:
        receiver.hold.set()
        server.stop()


def test_null_sender_of_bounces_is_accepted(
    running: RunningListener, receiver: RecordingReceiver
) -> None:
    with running.smtp() as smtp:
        smtp.ehlo()
        assert smtp.mail("<>")[0] == 250
        assert smtp.rcpt(SUPPORT)[0] == 250
        assert smtp.data(make_mail("Undelivered Mail Returned to Sender"))[0] == 250
    assert receiver.mails[0].envelope_from == ""


def test_long_body_lines_are_accepted_but_absurd_ones_get_500(
    running: RunningListener, receiver: RecordingReceiver
) -> None:
    send(running.port, make_mail("html", body="<p>" + "x" * 5000 + "</p>\n"))
    with running.smtp() as smtp:
        smtp.ehlo()
        smtp.mail(CUSTOMER)
        smtp.rcpt(SUPPORT)
        assert smtp.data(b"Subject: x\r\n\r\n" + b"y" * 70_000 + b"\r\n")[0] == 500
        assert smtp.sendmail(CUSTOMER, [SUPPORT], make_mail("dopo")) == {}
    assert len(receiver.mails) == 2


def test_a_receiver_bug_gets_451_and_the_listener_survives() -> None:
    class Broken(RecordingReceiver):
        def receive(self, raw: bytes, **kwargs: Any) -> Received:
            raise RuntimeError("unexpected")

    server = RunningListener(smtp_settings(), Broken()).start()
    try:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            send(server.port, make_mail("bug"))
        assert failed.value.smtp_code == 451
        with server.smtp() as smtp:
            assert smtp.noop()[0] == 250
    finally:
        server.stop()


def test_a_failing_on_stored_does_not_reach_the_client(receiver: RecordingReceiver) -> None:
    def explode(inbox_id: int) -> None:
        raise RuntimeError("processor gone")

    server = RunningListener(smtp_settings(), receiver, on_stored=explode).start()
    try:
        send(server.port, make_mail("uno"))
        send(server.port, make_mail("due"))
    finally:
        server.stop()
    assert len(receiver.mails) == 2


def test_garbage_commands_get_errors_and_the_listener_survives(
    served: RunningListener, desk: Gateway
) -> None:
    sock, stream = raw_session(served.port)
    with sock, stream:
        replies = converse(
            stream,
            [
                b"",
                b"\xff\xfe\x00binary",
                b"EHLO " + b"x" * 4000,  # an overlong command line
                b"MAIL FROM:<not closed",
                b"RCPT TO:<a@example.com>",  # before MAIL
                b"DATA",  # before RCPT
                b"HELO client",
                b"MAIL FROM:<a@b.it> BOGUS=1",
                b"RCPT TO:<@@@>",
            ],
        )
        assert [r[:1] for r in replies] == [b"5"] * 6 + [b"2", b"5", b"5"]
        assert replies[2].startswith(b"500")
    sock, stream = raw_session(served.port)
    with sock, stream:
        replies = converse(stream, [b"FOO", b"BAR", b"BAZ", b"QUX", b"ZAP"])
        assert replies[-1].startswith(b"502")  # too many unknown commands: goodbye
        assert stream.readline() == b""
    send(served.port, make_mail("Dopo la spazzatura"))
    wait_until(lambda: count(desk, Ticket) == 1, what="the ticket")


def test_abrupt_disconnects_store_nothing_and_the_listener_survives(
    served: RunningListener, desk: Gateway
) -> None:
    script = [b"EHLO x", b"MAIL FROM:<a@b.it>", b"RCPT TO:<assistenza@example.com>", b"DATA"]
    for steps in range(len(script) + 1):
        sock, stream = raw_session(served.port)
        converse(stream, script[:steps])
        if steps == len(script):
            stream.write(b"Subject: half\r\n\r\nhalf a mail without the final dot")
            stream.flush()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        stream.close()
        sock.close()  # with SO_LINGER 0: a reset, not a polite close
    send(served.port, make_mail("Dopo le disconnessioni"))
    wait_until(lambda: count(desk, Ticket) == 1, what="the ticket")
    assert count(desk, InboxMail) == 1


def test_sessions_over_the_limit_get_421(receiver: RecordingReceiver) -> None:
    server = RunningListener(smtp_settings(max_sessions=2), receiver).start()
    try:
        first, second = server.smtp(), server.smtp()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            server.smtp()
        assert refused.value.smtp_code == 421
        first.quit()

        def a_third_session_works() -> bool:
            try:
                with server.smtp() as smtp:
                    return smtp.noop()[0] == 250
            except smtplib.SMTPConnectError:
                return False

        wait_until(a_third_session_works, what="a slot to free up")
        assert second.sendmail(CUSTOMER, [SUPPORT], make_mail("limite")) == {}
        second.quit()
    finally:
        server.stop()


def test_zero_lifts_a_limit(receiver: RecordingReceiver) -> None:
    unlimited = smtp_settings(max_sessions=0, max_recipients=0, idle_timeout_seconds=0)
    server = RunningListener(unlimited, receiver).start()
    try:
        with server.smtp() as smtp:
            recipients = [f"r{i}@example.com" for i in range(60)]
            assert smtp.sendmail(CUSTOMER, recipients, make_mail("senza limiti")) == {}
            assert smtp.noop()[0] == 250
    finally:
        server.stop()
    assert len(receiver.mails[0].envelope_to) == 60


def test_idle_sessions_are_closed_after_the_timeout(receiver: RecordingReceiver) -> None:
    server = RunningListener(smtp_settings(idle_timeout_seconds=1), receiver).start()
    try:
        sock, stream = raw_session(server.port)
        with sock, stream:
            converse(stream, [b"EHLO x"])
            started = time.monotonic()
            assert stream.readline() == b""  # closed by the server
            assert time.monotonic() - started < 5
    finally:
        server.stop()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return str(cert), str(key)


def test_starttls_is_offered_and_can_be_required(
    receiver: RecordingReceiver, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    settings = smtp_settings(tls_cert=cert, tls_key=key, require_starttls=True)
    server = RunningListener(settings, receiver).start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with server.smtp() as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            assert smtp.mail(CUSTOMER)[0] == 530  # plain text refused
        with server.smtp() as smtp:
            smtp.starttls(context=context)
            assert smtp.sendmail(CUSTOMER, [SUPPORT], make_mail("cifrata")) == {}
    finally:
        server.stop()
    assert len(receiver.mails) == 1


# --- stopping -----------------------------------------------------------------------------------


def test_stop_lets_the_commit_in_flight_finish_and_closes_idle_sessions(
    receiver: RecordingReceiver,
) -> None:
    receiver.hold = threading.Event()
    server = RunningListener(smtp_settings(), receiver).start()
    idle = server.smtp()
    idle.ehlo()
    outcome: list[object] = []
    thread = threading.Thread(target=send_recording, args=(server.port, outcome, b"in volo"))
    thread.start()
    try:
        wait_until(receiver.entered.is_set, what="the commit to start")
        server.request_stop()
        wait_until(lambda: not server.listener.serving, what="the listener to stop accepting")
        with pytest.raises(OSError):
            server.smtp()
        assert idle.noop()[0] == 421
        idle.close()
        receiver.hold.set()
        thread.join(10)
    finally:
        receiver.hold.set()
        server.stop()
    assert outcome == ["sent"]
    assert len(receiver.mails) == 1


def test_stop_does_not_wait_past_the_grace_period(receiver: RecordingReceiver) -> None:
    receiver.hold = threading.Event()
    server = RunningListener(smtp_settings(shutdown_grace_seconds=0), receiver).start()
    outcome: list[object] = []
    thread = threading.Thread(target=send_recording, args=(server.port, outcome, b"in volo"))
    thread.start()
    try:
        wait_until(lambda: receiver.entered.is_set() or bool(outcome), what="the commit to start")
        assert not outcome, f"the mail never reached the commit: {outcome}"
        started = time.monotonic()
        server.request_stop()
        wait_until(server.returned.is_set, what="run() to return")
        assert time.monotonic() - started < 5
    finally:
        receiver.hold.set()
        thread.join(10)
        server.stop()
    # Told to try later: the sender keeps the mail and retries (deduplicated if it was stored).
    assert len(outcome) == 1
    assert isinstance(outcome[0], smtplib.SMTPDataError) and outcome[0].smtp_code == 421


# --- `mailgateway serve` as a process -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Serve:
    """`python -m mailgateway --config CFG serve` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailgateway", "--config", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.config.parent,
            )
        wait_until(self._accepting, timeout=60, what=f"serve to listen ({self.tail()})")
        return self

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"serve exited with {self.process.returncode}: {self.tail()}")
        try:
            with smtplib.SMTP(HOST, self.port, timeout=5) as smtp:
                return smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def signal(self, signum: int, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def serve_config(config_data: dict[str, Any], tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    config_data["smtp"] = {**config_data["smtp"], "port": port}
    config_data["log"] = {"level": "info"}
    (tmp_path / "rules").mkdir(exist_ok=True)
    return write_toml(config_data, tmp_path / "serve.toml"), port


def tickets_from_cli(config: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "mailgateway", "--config", str(config), "tickets", "list", "--json"],
        capture_output=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    tickets: list[dict[str, Any]] = json.loads(result.stdout)
    return tickets


def test_kill_9_right_after_250_then_restart_loses_and_doubles_nothing(
    desk: Gateway, serve_config: tuple[Path, int], tmp_path: Path
) -> None:
    config, port = serve_config
    server = Serve(config, port, tmp_path / "serve.log").start()
    raw = make_mail("Inviata prima del crash")
    try:
        send(port, raw)
        server.kill()  # SIGKILL right after the 250: nothing gets a chance to finish
        assert server.process is not None and server.process.returncode == -signal.SIGKILL
        assert count(desk, InboxMail) == 1  # the 250 meant committed

        server.start()
        wait_until(lambda: all_processed(desk), timeout=60, what="the restart to process it")
        send(port, raw)  # the sender, unsure, sends the same bytes again
        wait_until(lambda: all_processed(desk), timeout=60, what="the resend to be handled")
        assert server.signal(signal.SIGTERM) == 0, server.tail()
    finally:
        server.kill()
    assert count(desk, InboxMail) == 1
    tickets = tickets_from_cli(config)
    assert [t["subject"] for t in tickets] == ["Inviata prima del crash"]


def test_sigterm_stops_serve_cleanly_with_exit_0(
    desk: Gateway, serve_config: tuple[Path, int], tmp_path: Path
) -> None:
    config, port = serve_config
    server = Serve(config, port, tmp_path / "serve.log").start()
    try:
        idle = smtplib.SMTP(HOST, port, timeout=10)
        idle.ehlo()
        send(port, make_mail("Prima dello stop"))
        assert server.signal(signal.SIGTERM) == 0, server.tail()
        assert idle.noop()[0] == 421  # told, not just dropped
        idle.close()
    finally:
        server.kill()
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=2).close()
    assert count(desk, InboxMail) == 1


def test_configuration_mistakes_are_named(receiver: RecordingReceiver, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"smtp\.require_starttls"):
        SmtpListener(smtp_settings(require_starttls=True), receiver)
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"smtp\.tls_cert"):
        SmtpListener(smtp_settings(tls_cert=missing, tls_key=missing), receiver)


def test_a_port_in_use_is_one_clear_error(running: RunningListener) -> None:
    taken = RunningListener(smtp_settings(port=running.port), RecordingReceiver())
    with pytest.raises(ConfigError, match=rf"smtp\.port .*:{running.port} cannot be listened on"):
        taken.start()


def test_the_message_id_is_read_from_the_header_block_only() -> None:
    assert raw_message_id(b"Subject: x\r\nMessage-Id:\r\n <a@b>\r\n\r\nbody") == "a@b"
    assert raw_message_id(b"\r\nMessage-ID: <first\r\n\tline@x>\r\n\r\n") == "first line@x"
    assert raw_message_id(b"Subject: x\n\nMessage-ID: <in-body@x>\n") is None
    assert raw_message_id(b"X-Message-ID: <not-it@x>\nMessage-ID: <>\n\n") is None
    assert raw_message_id(b"") is None
    assert raw_message_id(b"Message-ID: <\xff@x>\n\n") == "\ufffd@x"
    far = b"X-Filler: " + b"x" * 70_000 + b"\r\nMessage-ID: <far@x>\r\n\r\n"
    assert raw_message_id(far) is None  # beyond the bound, which no real header block reaches
