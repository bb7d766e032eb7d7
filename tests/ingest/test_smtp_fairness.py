"""The listener under attack: one address cannot take every session, a stalled or
endless DATA is closed, and a stranger is refused in the dialogue (no backscatter)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, OutboxMail
from mailgateway.service import Gateway
from tests.ingest.test_smtp import (
    HOST,
    SUPPORT,
    RecordingReceiver,
    RunningListener,
    converse,
    make_mail,
    raw_session,
    smtp_settings,
)
from tests.mails import CUSTOMER, build_mail, register_desk


@pytest.fixture
def receiver() -> RecordingReceiver:
    return RecordingReceiver()


def _connect_from(source: str, port: int) -> smtplib.SMTP:
    return smtplib.SMTP(HOST, port, timeout=10, source_address=(source, 0))


def test_one_address_cannot_take_every_session(receiver: RecordingReceiver) -> None:
    limits = smtp_settings(max_sessions=30, max_sessions_per_client=10)
    server = RunningListener(limits, receiver).start()
    held: list[smtplib.SMTP] = []
    try:
        held = [_connect_from("127.0.0.1", server.port) for _ in range(10)]
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            _connect_from("127.0.0.1", server.port)
        assert refused.value.smtp_code == 421
        assert b"your address" in refused.value.smtp_error
        # Another sender still gets in, and its mail is taken.
        with _connect_from("127.0.0.2", server.port) as other:
            assert other.sendmail(CUSTOMER, [SUPPORT], make_mail("altro mittente")) == {}
        held.pop().quit()  # a slot of the first address frees up
        with _connect_from("127.0.0.1", server.port) as again:
            assert again.noop()[0] == 250
    finally:
        for client in held:
            client.close()
        server.stop()
    assert len(receiver.mails) == 1


def _start_data(port: int) -> tuple[socket.socket, object]:
    sock, stream = raw_session(port)
    replies = converse(stream, [b"EHLO x", b"MAIL FROM:<rossi@studiorossi.it>",
                                f"RCPT TO:<{SUPPORT}>".encode(), b"DATA"])
    assert replies[-1].startswith(b"354")
    return sock, stream


def test_a_slow_upload_goes_on_a_stalled_one_is_closed(receiver: RecordingReceiver) -> None:
    server = RunningListener(smtp_settings(idle_timeout_seconds=1), receiver).start()
    try:
        sock, stream = _start_data(server.port)
        with sock, stream:  # type: ignore[attr-defined]
            for line in make_mail("lento").split(b"\n"):  # 2.4 s in all, never 1 s idle
                stream.write(line.rstrip(b"\r") + b"\r\n")  # type: ignore[attr-defined]
                stream.flush()  # type: ignore[attr-defined]
                time.sleep(0.2)
            stream.write(b".\r\n")  # type: ignore[attr-defined]
            stream.flush()  # type: ignore[attr-defined]
            assert stream.readline().startswith(b"250")  # type: ignore[attr-defined]
        sock, stream = _start_data(server.port)
        with sock, stream:  # type: ignore[attr-defined]
            stream.write(b"Subject: fermo\r\n")  # type: ignore[attr-defined]
            stream.flush()  # type: ignore[attr-defined]
            started = time.monotonic()
            assert stream.readline() == b""  # type: ignore[attr-defined]
            assert time.monotonic() - started < 5
    finally:
        server.stop()
    assert len(receiver.mails) == 1


def test_an_endless_data_is_closed_at_its_deadline(receiver: RecordingReceiver) -> None:
    limits = smtp_settings(idle_timeout_seconds=5, data_timeout_seconds=1)
    server = RunningListener(limits, receiver).start()
    try:
        sock, stream = _start_data(server.port)
        sock.settimeout(0.3)
        started = time.monotonic()
        closed = b""
        with sock, stream:  # type: ignore[attr-defined]
            while time.monotonic() - started < 5:
                try:
                    stream.write(b"X-Trickle: a\r\n")  # type: ignore[attr-defined]
                    stream.flush()  # type: ignore[attr-defined]
                    closed = stream.readline()  # type: ignore[attr-defined]
                    break
                except TimeoutError:
                    continue
                except OSError:
                    break
        assert closed.startswith(b"421") or closed == b""
        assert time.monotonic() - started < 4
    finally:
        server.stop()
    assert receiver.mails == []


@pytest.fixture
def desk_listener(gateway: Gateway) -> Iterator[RunningListener]:
    register_desk(gateway)
    server = RunningListener(gateway.settings.smtp, gateway).start()
    yield server
    server.stop()


def _inbox(gateway: Gateway) -> int:
    with gateway.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(InboxMail)) or 0)


def test_a_stranger_is_refused_in_the_dialogue(
    gateway: Gateway, desk_listener: RunningListener
) -> None:
    """Its server, not the desk, tells its user: nothing stored, nothing sent by us."""
    stranger = build_mail(sender="ignoto@altrove.test", subject="Offerta imperdibile")
    with desk_listener.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("ignoto@altrove.test", [SUPPORT], stranger)
    assert refused.value.smtp_code == 550
    assert b"ignoto@altrove.test" in refused.value.smtp_error
    assert b"assistenza@example.com" in refused.value.smtp_error
    # A bounce (the null sender) and a known customer are taken.
    with desk_listener.smtp() as client:
        client.sendmail("<>", [SUPPORT], build_mail(sender="mailer-daemon@altrove.test",
                                                    subject="Undelivered Mail"))
        client.sendmail(CUSTOMER, [SUPPORT], build_mail(sender=CUSTOMER))
    assert _inbox(gateway) == 2
    with gateway.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMail).where(
            OutboxMail.kind == "unknown_sender")) == 0


def test_behind_an_mta_a_stranger_is_taken_and_handled_by_the_pipeline(
    gateway: Gateway, settings: Settings
) -> None:
    """Over LMTP a 550 would make the MTA in front bounce to a sender that may be forged."""
    register_desk(gateway)
    server = RunningListener(replace(settings.smtp, lmtp=True), gateway).start()
    try:
        with smtplib.LMTP(HOST, server.port, timeout=10) as client:
            client.sendmail("ignoto@altrove.test", [SUPPORT],
                            build_mail(sender="ignoto@altrove.test"))
    finally:
        server.stop()
    assert _inbox(gateway) == 1
