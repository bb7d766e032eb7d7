"""The outbox worker against a real SMTP server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import mailbox
import os
import threading
import time
import tracemalloc
from dataclasses import replace
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.attachments import store_file
from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import OutboxMail, OutboxStatus, Ticket
from mailgateway.errors import PermanentError, TemporaryError, UserError
from mailgateway.outbound.claims import LEASE
from mailgateway.outbound.dispatch import (
    Dispatcher,
    dispatch_once,
    resend_backoff,
    retry,
)
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.outbound.queue import enqueue
from mailgateway.outbound.transports import (
    MaildirTransport,
    RelayUnavailableError,
    SmtpTransport,
    build_transport,
)
from mailgateway.reply_token import (
    TokenPurpose,
    bounce_address,
    read_bounce_address,
    read_reply_address,
)
from mailgateway.store import SessionStore
from tests.outbound.conftest import TicketFactory, outbox_ids
from tests.smtp_sink import SmtpSink


def _queue(
    sessions: sessionmaker[Session],
    settings: Settings,
    clock: FixedClock,
    count: int = 1,
    *,
    to: str = "cliente@studiorossi.it",
    ticket: Ticket | None = None,
) -> list[int]:
    """`count` technician answers (not rate-limited) in one transaction."""
    ids = []
    with sessions.begin() as session:
        for n in range(count):
            intent = MailIntent(
                kind=MailKind.ANSWER,
                to=(to,),
                language="it",
                context={"body": f"Risposta {n}"},
            )
            row = enqueue(SessionStore(session), settings, clock, intent, ticket)
            assert row is not None
            ids.append(row.message_id)
    return outbox_ids(sessions, ids)


def _rows(sessions: sessionmaker[Session]) -> list[OutboxMail]:
    with sessions() as session:
        return list(session.scalars(select(OutboxMail).order_by(OutboxMail.id)))


def _row(sessions: sessionmaker[Session], outbox_id: int) -> OutboxMail:
    with sessions() as session:
        row = session.get(OutboxMail, outbox_id)
        assert row is not None
        return row


def _smtp(settings: Settings) -> SmtpTransport:
    return SmtpTransport(settings.outbound, local_hostname="example.com")


def _message_ids(sink: SmtpSink) -> list[str]:
    return [str(d.message["Message-ID"]) for d in sink.deliveries]


@pytest.mark.parametrize(
    ("language", "promise", "refused_line"),
    [
        (
            "it",
            "Riceverà una risposta entro 24 ore",
            "Non è possibile allegare file alla prima richiesta",
        ),
        (
            "en",
            "You will receive an answer within 24 hours",
            "Files cannot be attached to the first request",
        ),
    ],
)
def test_acknowledgment_through_the_relay(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
    make_ticket: TicketFactory,
    language: str,
    promise: str,
    refused_line: str,
) -> None:
    settings = relay_settings
    subject = "Perché MOCO dà l'errore 98,20 – città di Forlì"
    ticket = make_ticket(language=language, subject=subject)
    assert ticket.person is not None
    intent = MailIntent(
        kind=MailKind.ACKNOWLEDGMENT,
        to=(ticket.person.email,),
        language=language,
        in_reply_to="CAB123@mail.studiorossi.it",
        references=("older@mail.studiorossi.it", "CAB123@mail.studiorossi.it"),
        context={
            "body": "Quando vado su MPRI compare l'errore: è già successo.",
            "refused_attachments": ["schermata però.png"],
        },
    )
    with sessions.begin() as session:
        row = enqueue(SessionStore(session), settings, clock, intent, ticket)
        assert row is not None
        message_id = row.message_id
    [outbox_id] = outbox_ids(sessions, [message_id])

    report = dispatch_once(sessions, settings, clock, build_transport(settings))

    assert (report.sent, report.retried, report.failed) == (1, 0, 0)
    [delivery] = smtp_sink.deliveries
    # The return path names the row, signed: its delivery report finds it.
    assert delivery.mail_from == bounce_address("assistenza@example.com", "test-secret",
                                                outbox_id)
    assert read_bounce_address(delivery.mail_from, "assistenza@example.com",
                               "test-secret") == outbox_id
    assert read_bounce_address(delivery.mail_from.replace(f"+b{outbox_id}.",
                                                          f"+b{outbox_id + 1}."),
                               "assistenza@example.com", "test-secret") is None
    assert delivery.rcpt_tos == [ticket.person.email]
    raw = delivery.raw
    assert raw.isascii()
    assert max(len(line) for line in raw.splitlines()) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Subject: [Ticket#" in head and b"=?utf-8?q?" in head
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == f"[Ticket#{ticket.number}] {subject}"
    assert message["In-Reply-To"] == "<CAB123@mail.studiorossi.it>"
    assert message["References"] == "<older@mail.studiorossi.it> <CAB123@mail.studiorossi.it>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Mailgateway-Loop"] == "assistenza@example.com"
    token = read_reply_address(
        message["Reply-To"].addresses[0].addr_spec,
        settings.helpdesk.address,
        settings.helpdesk.secret,
    )
    assert token is not None
    assert (token.purpose, token.ticket_number) == (TokenPurpose.CUSTOMER, ticket.number)
    for subtype in ("plain", "html"):
        part = message.get_body((subtype,))
        assert part is not None
        content = part.get_content()
        assert promise in content
        assert refused_line in content
        assert "schermata però.png" in content
        assert "è già successo" in content
    stored = _row(sessions, outbox_id)
    assert stored.status == OutboxStatus.SENT and stored.sent_at == clock.now()
    assert stored.attempts == 1 and stored.claimed_until is None


def test_relay_down_then_back_delivers_each_mail_once(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    ids = _queue(sessions, relay_settings, clock, 5)
    smtp_sink.stop()

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings), connections=1)

    assert (report.sent, report.retried, report.deferred) == (0, 1, 4)
    rows = _rows(sessions)
    assert all(r.status == OutboxStatus.PENDING for r in rows)
    assert [r.attempts for r in rows] == [1, 0, 0, 0, 0]
    assert "unreachable" in (rows[0].last_error or "")
    assert all(r.next_attempt_at > clock.now() for r in rows)
    assert all(r.claimed_until is None for r in rows)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 0

    smtp_sink.start()
    clock.current = max(r.next_attempt_at for r in rows)
    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings))
    assert report.sent == 5
    clock.advance(days=3)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 0

    assert len(smtp_sink.deliveries) == 5
    with sessions() as session:
        expected = {
            f"<{m}>"
            for m in session.scalars(select(OutboxMail.message_id).where(OutboxMail.id.in_(ids)))
        }
    assert sorted(_message_ids(smtp_sink)) == sorted(expected)
    assert all(r.status == OutboxStatus.SENT for r in _rows(sessions))


def test_a_4xx_answer_is_retried_later(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    smtp_sink.refuse("451 4.3.0 Mailbox busy, try later", at="DATA", times=1)

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings))

    assert (report.sent, report.retried) == (0, 1)
    row = _row(sessions, outbox_id)
    assert row.status == OutboxStatus.PENDING and row.attempts == 1
    assert "451 4.3.0 Mailbox busy" in (row.last_error or "")
    delay = row.next_attempt_at - clock.now()
    assert timedelta(seconds=30) <= delay <= timedelta(seconds=60)
    clock.current = row.next_attempt_at
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 1
    assert len(smtp_sink.deliveries) == 1
    row = _row(sessions, outbox_id)
    assert row.status == OutboxStatus.SENT and row.last_error is None and row.attempts == 2


def test_a_5xx_answer_parks_the_mail_and_retry_sends_it(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    smtp_sink.refuse("550 5.1.1 <cliente@studiorossi.it>: Recipient address rejected", at="RCPT")

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings))

    assert (report.sent, report.failed) == (0, 1)
    row = _row(sessions, outbox_id)
    assert row.status == OutboxStatus.FAILED
    assert "550 5.1.1 <cliente@studiorossi.it>: Recipient address rejected" in (
        row.last_error or ""
    )
    clock.advance(days=1)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 0

    smtp_sink.accept_all()
    with sessions.begin() as session:
        retry(session, outbox_id, now=clock.now())
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 1
    assert len(smtp_sink.deliveries) == 1
    assert _row(sessions, outbox_id).status == OutboxStatus.SENT


def test_a_refused_data_phase_is_permanent(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    smtp_sink.refuse("554 5.7.1 Message rejected as spam", at="DATA")
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).failed == 1
    assert "554 5.7.1 Message rejected as spam" in (_row(sessions, outbox_id).last_error or "")


def test_one_refused_mail_does_not_stop_the_batch(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    _queue(sessions, relay_settings, clock, 2)
    _queue(sessions, relay_settings, clock, 1, to="nessuno@studiorossi.it")
    _queue(sessions, relay_settings, clock, 2)
    smtp_sink.refuse("550 5.1.1 No such user", at="RCPT", recipient="nessuno@studiorossi.it")

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings))

    assert (report.sent, report.failed) == (4, 1)
    assert [r.status for r in _rows(sessions)] == ["sent", "sent", "failed", "sent", "sent"]


def test_a_mail_is_dead_after_max_attempts(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    settings = replace(relay_settings, outbound=replace(relay_settings.outbound, max_attempts=3))
    [outbox_id] = _queue(sessions, settings, clock)
    smtp_sink.refuse("421 4.7.0 Try again later", at="DATA")
    reports = []
    for _ in range(3):
        reports.append(dispatch_once(sessions, settings, clock, _smtp(settings)))
        clock.current = max(clock.now(), _row(sessions, outbox_id).next_attempt_at)

    assert [(r.retried, r.dead) for r in reports] == [(1, 0), (1, 0), (0, 1)]
    row = _row(sessions, outbox_id)
    assert row.status == OutboxStatus.DEAD and row.attempts == 3
    assert "421 4.7.0" in (row.last_error or "")

    smtp_sink.accept_all()
    with sessions.begin() as session:
        again = retry(session, outbox_id, now=clock.now())
        assert again.attempts == 0
    assert dispatch_once(sessions, settings, clock, _smtp(settings)).sent == 1


def test_a_mail_is_dead_after_max_age(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    smtp_sink.stop()
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).retried == 1
    clock.advance(hours=relay_settings.outbound.max_age_hours)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).dead == 1
    assert _row(sessions, outbox_id).status == OutboxStatus.DEAD


def test_backoff_grows_and_is_capped(settings: Settings) -> None:
    backoff = resend_backoff(settings.outbound)
    delays = [backoff.delay(n) for n in range(1, 12)]
    assert 30 <= delays[0] <= 60
    assert 60 <= delays[1] <= 90
    assert 240 <= delays[3] <= 270
    assert all(d <= 3600 for d in delays)
    assert delays[-1] == 3600


def test_rows_leased_by_another_dispatcher_wait_for_the_lease(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    lease = LEASE
    with sessions.begin() as session:
        session.execute(
            update(OutboxMail)
            .where(OutboxMail.id == outbox_id)
            .values(claimed_until=clock.now() + lease)
        )

    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 0
    clock.advance(seconds=lease.total_seconds() + 1)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 1
    assert len(smtp_sink.deliveries) == 1


def test_two_dispatchers_never_send_one_mail_twice(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    settings = replace(relay_settings, outbound=replace(relay_settings.outbound, batch_size=10))
    _queue(sessions, settings, clock, 120)
    reports = []

    def work() -> None:
        reports.append(dispatch_once(sessions, settings, clock, _smtp(settings)))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(r.sent for r in reports) == 120
    ids = _message_ids(smtp_sink)
    assert len(ids) == len(set(ids)) == 120


def test_shutdown_releases_the_untried_rows(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    _queue(sessions, relay_settings, clock, 4)
    calls = iter([False, False, True])

    report = dispatch_once(
        sessions,
        relay_settings,
        clock,
        _smtp(relay_settings),
        should_stop=lambda: next(calls, True),
    )

    assert report.sent == 2
    rows = _rows(sessions)
    assert [r.status for r in rows] == ["sent", "sent", "pending", "pending"]
    assert all(r.claimed_until is None for r in rows)


def test_retry_refuses_unknown_and_pending_rows(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    [outbox_id] = _queue(sessions, settings, clock)
    with sessions() as session:
        with pytest.raises(UserError, match="no outbox mail with ID 424242"):
            retry(session, 424242)
        with pytest.raises(UserError, match="only failed or dead"):
            retry(session, outbox_id)


def test_maildir_transport_is_the_default(
    settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
) -> None:
    _queue(sessions, settings, clock, 2)
    transport = build_transport(settings)
    assert isinstance(transport, MaildirTransport)

    assert dispatch_once(sessions, settings, clock, transport).sent == 2

    box = mailbox.Maildir(settings.outbound.maildir, create=False)
    messages = [box.get_bytes(key) for key in box.iterkeys()]
    assert len(messages) == 2
    assert all(
        m.startswith(b"Return-Path: <assistenza+b") and b">\nX-Envelope-To: cliente@" in m
        for m in messages
    )
    assert all(b"\r\n" not in m for m in messages)


def test_smtp_transport_maps_errors(relay_settings: Settings, smtp_sink: SmtpSink) -> None:
    transport = _smtp(relay_settings)
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    smtp_sink.refuse("452 4.2.2 Mailbox full", at="RCPT", times=1)
    with pytest.raises(TemporaryError, match=r"452 4\.2\.2"):
        transport.send("a@example.com", ["b@example.com"], raw)
    smtp_sink.refuse("550 5.7.1 Relaying denied", at="RCPT", times=1)
    with pytest.raises(PermanentError, match=r"550 5\.7\.1 Relaying denied"):
        transport.send("a@example.com", ["b@example.com"], raw)
    transport.send("a@example.com", ["b@example.com", "c@example.com"], raw)
    transport.close()
    assert smtp_sink.deliveries[-1].rcpt_tos == ["b@example.com", "c@example.com"]
    smtp_sink.stop()
    with pytest.raises(RelayUnavailableError):
        transport.send("a@example.com", ["b@example.com"], raw)


def test_dispatcher_runs_until_stopped_and_can_be_woken(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    settings = replace(relay_settings, outbound=replace(relay_settings.outbound, poll_seconds=60.0))
    dispatcher = Dispatcher(sessions, settings, clock)

    async def scenario() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stopping))
        await asyncio.sleep(0.1)  # first pass: nothing queued yet
        await asyncio.to_thread(_queue, sessions, settings, clock, 1)
        dispatcher.wake()
        deadline = time.monotonic() + 5
        while not smtp_sink.deliveries and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stopping.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert len(smtp_sink.deliveries) == 1


def test_parallel_sessions_lose_nothing_when_the_relay_is_down(
    relay_settings: Settings, clock: FixedClock, sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    _queue(sessions, relay_settings, clock, 12)
    smtp_sink.stop()

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings), connections=4)

    assert report.sent == 0
    assert 1 <= report.retried <= 4 and report.retried + report.deferred == 12
    rows = _rows(sessions)
    assert all(r.status == OutboxStatus.PENDING and r.claimed_until is None for r in rows)
    assert sum(r.attempts for r in rows) == report.retried

    smtp_sink.start()
    clock.current = max(r.next_attempt_at for r in rows)
    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings),
                         connections=4).sent == 12
    ids = _message_ids(smtp_sink)
    assert len(ids) == len(set(ids)) == 12


def test_a_queued_row_is_rendered_when_sent_and_the_bytes_are_kept(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    [outbox_id] = _queue(sessions, relay_settings, clock)
    with sessions() as session:
        assert session.scalar(select(OutboxMail.raw).where(OutboxMail.id == outbox_id)) is None

    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 1

    [delivery] = smtp_sink.deliveries
    with sessions() as session:
        row = session.get(OutboxMail, outbox_id)
        assert row is not None and row.raw == delivery.raw
        assert delivery.message["Message-ID"] == f"<{row.message_id}>"
    assert "Risposta 0" in delivery.message.get_body(("plain",)).get_content()


def test_a_mail_that_cannot_be_rendered_is_parked_with_the_reason(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    """An answer whose stored file is gone: said in `last_error`, nothing sent, the other
    mails of the batch go out."""
    gone = {"filename": "fattura.pdf", "content_type": "application/pdf",
            "sha256": "0" * 64, "size": 10}
    with sessions.begin() as session:
        broken = enqueue(SessionStore(session), relay_settings, clock, MailIntent(
            kind=MailKind.ANSWER, to=("cliente@studiorossi.it",), language="it",
            context={"body": "In allegato", "attachments": [gone]}))
        assert broken is not None
    [fine] = _queue(sessions, relay_settings, clock)

    report = dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings))

    assert (report.sent, report.failed) == (1, 1)
    row = _row(sessions, outbox_ids(sessions, [broken.message_id])[0])
    assert row.status == OutboxStatus.FAILED
    assert "fattura.pdf" in (row.last_error or "") and "missing" in (row.last_error or "")
    assert _row(sessions, fine).status == OutboxStatus.SENT
    assert len(smtp_sink.deliveries) == 1


def test_a_row_written_already_rendered_is_sent_as_it_is(
    relay_settings: Settings,
    clock: FixedClock,
    sessions: sessionmaker[Session],
    smtp_sink: SmtpSink,
) -> None:
    """Rows queued before intents were kept hold their bytes and no intent."""
    raw = (b"From: assistenza@example.com\r\nTo: cliente@studiorossi.it\r\n"
           b"Message-ID: <mg.old@example.com>\r\nSubject: Vecchia risposta\r\n\r\nCiao\r\n")
    with sessions.begin() as session:
        session.add(OutboxMail(
            created_at=clock.now(), kind="answer", ticket_id=None, automatic=False,
            mail_from="assistenza@example.com", recipients=["cliente@studiorossi.it"],
            message_id="mg.old@example.com", intent=None, raw=raw,
            status=OutboxStatus.PENDING, attempts=0, next_attempt_at=clock.now()))

    assert dispatch_once(sessions, relay_settings, clock, _smtp(relay_settings)).sent == 1

    [delivery] = smtp_sink.deliveries
    assert delivery.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")


class _GatedMaildir(MaildirTransport):
    """A Maildir transport whose first delivery waits for `release`: a slow relay."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.outbound.maildir)
        self.sending = threading.Event()
        self.release = threading.Event()

    def send(self, mail_from: str, recipients: list[str], raw: bytes) -> None:
        self.sending.set()
        assert self.release.wait(10)
        super().send(mail_from, recipients, raw)


def test_a_slow_send_keeps_its_lease_and_a_dead_ones_rows_are_freed(
    settings: Settings, clock: FixedClock, sessions: sessionmaker[Session]
) -> None:
    """The lease is renewed while a batch is sent: another dispatcher, however late the
    first one's relay, never takes its rows; rows left by a dispatcher that died are
    free once the short lease has run out."""
    [slow, abandoned] = _queue(sessions, settings, clock, 2)
    with sessions.begin() as session:  # a dispatcher that died with the second row claimed
        session.execute(update(OutboxMail).where(OutboxMail.id == abandoned)
                        .values(claimed_until=clock.now() + LEASE, claimed_by="gone:1:x"))
    gated = _GatedMaildir(settings)
    first = threading.Thread(target=dispatch_once, args=(sessions, settings, clock, gated),
                             kwargs={"renew_seconds": 0.02})
    first.start()
    try:
        assert gated.sending.wait(10)
        clock.advance(seconds=LEASE.total_seconds() + 1)  # the first lease has run out…
        deadline = time.monotonic() + 5
        while (_row(sessions, slow).claimed_until or clock.now()) <= clock.now():
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.01)
        other = dispatch_once(sessions, settings, clock, build_transport(settings))
    finally:
        gated.release.set()
        first.join(10)
    assert other.sent == 1  # …the abandoned row only: the slow one was renewed
    assert _row(sessions, slow).status == OutboxStatus.SENT
    assert _row(sessions, abandoned).status == OutboxStatus.SENT
    assert len(list(mailbox.Maildir(settings.outbound.maildir))) == 2


def test_a_stored_file_is_streamed_from_disk_at_send_time(
    settings: Settings, clock: FixedClock, sessions: sessionmaker[Session],
    make_ticket: TicketFactory, tmp_path: Path,
) -> None:
    """A file reaches the technician without ever being held whole: the dispatcher's
    peak allocations stay a small fraction of the file (8 MiB here, to keep the traced
    run short; the bound does not grow with the file)."""
    payload = os.urandom(8 * 2**20)
    digest = store_file(settings.data_dir, payload)
    ticket = make_ticket()
    files = [{"filename": "dump.bin", "content_type": "application/octet-stream",
              "size": len(payload), "sha256": digest}]
    with sessions.begin() as session:
        assert enqueue(SessionStore(session), settings, clock, MailIntent(
            kind=MailKind.CUSTOMER_REPLY_NOTICE, to=("luca@example.com",), language="it",
            context={"body": ".riga che inizia con un punto", "attachments": files}), ticket)
    del payload
    transport = MaildirTransport(tmp_path / "sent")
    tracemalloc.start()
    try:
        report = dispatch_once(sessions, settings, clock, transport)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.sent == 1
    assert peak < 2**20, f"peak {peak / 2**20:.1f} MiB"
    [stored] = mailbox.Maildir(tmp_path / "sent", create=False)
    message = message_from_bytes(stored.as_bytes(), policy=policy.default)
    [part] = list(message.iter_attachments())  # type: ignore[attr-defined]
    assert part.get_filename() == "dump.bin"
    assert hashlib.sha256(part.get_content()).hexdigest() == digest
    # The row keeps what to write, not a second copy of the file.
    with sessions() as session:
        [(status, raw)] = session.execute(select(OutboxMail.status, OutboxMail.raw)).all()
    assert status == OutboxStatus.SENT and raw is None


def test_a_streamed_mail_through_the_relay_is_dot_stuffed(
    settings: Settings, clock: FixedClock, sessions: sessionmaker[Session],
    make_ticket: TicketFactory, smtp_sink: SmtpSink,
) -> None:
    payload = b"\x00\x01" * 50_000
    digest = store_file(settings.data_dir, payload)
    with sessions.begin() as session:
        assert enqueue(SessionStore(session), settings, clock, MailIntent(
            kind=MailKind.ANSWER, to=("cliente@studiorossi.it",), language="it",
            context={"body": ".htaccess\n.\nfine", "attachments": [
                {"filename": "a.bin", "content_type": "application/octet-stream",
                 "size": len(payload), "sha256": digest}]}), make_ticket())
    relay = replace(settings.outbound, transport="smtp", host=smtp_sink.host,
                    port=smtp_sink.port, timeout_seconds=5)
    transport = build_transport(replace(settings, outbound=relay))
    try:
        assert dispatch_once(sessions, settings, clock, transport).sent == 1
    finally:
        transport.close()
    [delivery] = smtp_sink.deliveries
    message = delivery.message
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n").startswith(".htaccess\n.\nfine\n")
    [part] = list(message.iter_attachments())
    assert part.get_content() == payload
