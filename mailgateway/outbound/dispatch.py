"""The outbox worker: claim due mails, hand them to the transport, record the outcome.

Each pass claims due `pending` rows in batches, with a short lease
(`outbound.claims`) renewed while the batch is sent: several dispatchers
share the queue, and a row of a dispatcher that died waits less than a
minute for another.

**At most one mail sent twice per crash and sending thread.** A row is
marked `sent` in its own commit right after the transport accepted it. The
only window in which a mail can go out twice is between the relay's
acceptance and that commit: one send. Widening it (committing per batch)
would trade duplicates for speed; the speed comes instead from sending a
batch over a few SMTP sessions kept open (`outbound.connections` sending
threads, each with its own session), and on SQLite from queueing the
threads' commits in-process (the engine's one writer lock, which the
listener and the processor take too) rather than letting them collide on
SQLite's own lock.
A batch stops taking mails when its lease is near its end without having
been renewed (the database away), so no other dispatcher can claim a row
this one is still sending.

A row is rendered from its intent just before it is first sent (see
`outbound.intent`) and the bytes are kept with the `sent` mark, so a
retried row is rendered again and a sent one shows what went out.

Outcomes: accepted → `sent`; `TemporaryError` → `attempts + 1` and a later
`next_attempt_at` (exponential backoff with jitter), or `dead` once
`max_attempts` or `max_age_hours` is reached (both `resend_backoff`);
`PermanentError` → `failed` with the server's answer in `last_error` (or why
the mail could not be rendered: a stored file gone, a broken template). When
the relay itself is unreachable, the rest of the batch is postponed to the
same instant without spending its attempts. `retry()` puts a failed or dead
row back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import Clock
from mailgateway.config import OutboundSettings, Settings
from mailgateway.db.dialect import write_lock
from mailgateway.db.models import OutboxMail, OutboxStatus
from mailgateway.errors import PermanentError, TemporaryError, UserError
from mailgateway.outbound.claims import LEASE, RENEW_SECONDS, claim_due, renew_claims
from mailgateway.outbound.compose import queued_message
from mailgateway.outbound.mime import Message
from mailgateway.outbound.queue import purge_auto_answers
from mailgateway.outbound.transports import MailTransport, RelayUnavailableError, build_transport
from mailgateway.passes import Passes
from mailgateway.reply_token import bounce_address
from mailgateway.retry import Backoff


def _log(**values: object) -> structlog.typing.FilteringBoundLogger:
    """A logger bound at call time, so the configuration made at start-up applies."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)
    return logger.bind(transport="outbound", **values)


def resend_backoff(settings: OutboundSettings) -> Backoff:
    """When to try a mail again after a temporary failure, and when to give up: 30 s,
    1 min, 2 min, … capped at one hour, plus up to 30 s so retries spread out; the
    attempt that reaches `max_attempts`, or `max_age_hours` after queueing, is the last."""
    return Backoff(initial=30, maximum=3600, max_attempts=settings.max_attempts,
                   max_elapsed=settings.max_age_hours * 3600)


# --- one pass ------------------------------------------------------------------


@dataclass
class DispatchReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, retried {self.retried}, failed {self.failed}, "
            f"dead {self.dead}, deferred {self.deferred}"
        )


@dataclass(frozen=True)
class _Claimed:
    id: int
    ticket: str | None  # the ticket's number, for the logs
    message_id: str
    mail_from: str
    recipients: list[str]
    raw: bytes | None  # None until rendered from `intent`
    intent: dict[str, Any] | None
    attempts: int
    created_at: datetime


def _set(session: Session, ids: Sequence[int], **values: Any) -> None:
    session.execute(
        update(OutboxMail)
        .where(OutboxMail.id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


_OUTBOX = cast(Table, OutboxMail.__table__)
# Built once: marking a row sent is the one statement run for every mail.
_MARK_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row_id"))
    .values(status=OutboxStatus.SENT.value, attempts=bindparam("attempts"),
            sent_at=bindparam("sent_at"), last_error=None, claimed_until=None)
)
# The same, keeping the bytes just rendered: what was sent stays on record.
_MARK_SENT_RENDERED = _MARK_SENT.values(raw=bindparam("raw"))


def _render(settings: Settings, clock: Clock, mail: _Claimed) -> Message:
    """The row's mail rendered now. Waiting cannot mend a row that cannot be rendered:
    it fails at once, for `outbox retry` once its file or template is back."""
    if mail.intent is None:
        raise PermanentError("the outbox row holds neither a mail nor what to write")
    try:
        return queued_message(settings, clock, mail.intent, mail.message_id)
    except PermanentError:
        raise
    except Exception as exc:  # a broken template or snapshot: retrying cannot mend it
        raise PermanentError(f"cannot render the mail: {type(exc).__name__}: {exc}") from exc


def _after_temporary(
    session: Session, settings: Settings, now: datetime, mail: _Claimed, error: str
) -> tuple[str, datetime]:
    """Schedule the next attempt or give up; returns the new status and next instant."""
    attempts = mail.attempts + 1
    backoff = resend_backoff(settings.outbound)
    if backoff.gives_up(attempts, (now - mail.created_at).total_seconds()):
        _set(session, [mail.id], status=OutboxStatus.DEAD, attempts=attempts,
             last_error=error, claimed_until=None)
        return OutboxStatus.DEAD, now
    next_at = now + timedelta(seconds=backoff.delay(attempts))
    _set(session, [mail.id], attempts=attempts, next_attempt_at=next_at,
         last_error=error, claimed_until=None)
    return OutboxStatus.PENDING, next_at


def _send_one(
    session: Session,
    settings: Settings,
    clock: Clock,
    transport: MailTransport,
    mail: _Claimed,
    writing: AbstractContextManager[Any],
) -> tuple[str, datetime | None]:
    """Send one claimed row and commit its outcome: the report field to count, and
    the instant to postpone the rest of the batch to when the relay is down."""
    bound = _log(outbox_id=mail.id, ticket=mail.ticket, message_id=mail.message_id)
    relay_down = False
    raw: bytes | Message | None = mail.raw
    try:
        if raw is None:
            raw = _render(settings, clock, mail)
            # A mail without stored files is kept as sent; one with files is not
            # copied into the database: its files are on disk, its intent in the row.
            raw = raw if raw.streamed else raw.to_bytes()
        # The return path names the row: a delivery report finds it (outbound.delivery).
        transport.send(bounce_address(mail.mail_from, settings.helpdesk.secret, mail.id),
                       mail.recipients, raw)
    except PermanentError as exc:
        with writing:
            _set(session, [mail.id], status=OutboxStatus.FAILED, attempts=mail.attempts + 1,
                 last_error=str(exc), claimed_until=None)
        bound.error("outbound_mail_failed", error=str(exc))
        return "failed", None
    except TemporaryError as exc:
        error, relay_down = str(exc), isinstance(exc, RelayUnavailableError)
    except Exception as exc:  # a bug or an unmapped library error: retry, never lose the row
        bound.exception("outbound_mail_crashed")
        error = f"{type(exc).__name__}: {exc}"
    else:
        params = {"row_id": mail.id, "attempts": mail.attempts + 1, "sent_at": clock.now()}
        rendered = mail.raw is None and isinstance(raw, bytes)
        with writing:
            session.execute(_MARK_SENT_RENDERED if rendered else _MARK_SENT,
                            params | {"raw": raw} if rendered else params)
            session.commit()
        bound.debug("outbound_mail_sent", recipients=mail.recipients)
        return "sent", None
    with writing:
        status, next_at = _after_temporary(session, settings, clock.now(), mail, error)
    if status == OutboxStatus.DEAD:
        bound.error("outbound_mail_dead", error=error, attempts=mail.attempts + 1)
        return "dead", None
    bound.warning("outbound_mail_deferred", error=error, next_attempt_at=next_at.isoformat())
    return "retried", next_at if relay_down else None


@dataclass
class _Batch:
    """One claimed batch, worked through by one or more sending threads."""

    mails: deque[_Claimed]
    lease_until: datetime
    margin: timedelta
    should_stop: Callable[[], bool] | None
    report: DispatchReport
    writing: AbstractContextManager[Any]
    lock: threading.Lock = field(default_factory=threading.Lock)
    relay_back_at: datetime | None = None
    stopped: bool = False

    def take(self, clock: Clock) -> _Claimed | None:
        """The next mail to send, or None when done, stopping, or the relay is down."""
        with self.lock:
            if self.relay_back_at is not None or self.stopped or not self.mails:
                return None
            if (self.should_stop and self.should_stop()) or (
                clock.now() >= self.lease_until - self.margin
            ):
                self.stopped = True
                return None
            return self.mails.popleft()

    def record(self, outcome: str, relay_back_at: datetime | None) -> None:
        with self.lock:
            setattr(self.report, outcome, getattr(self.report, outcome) + 1)
            if relay_back_at is not None and self.relay_back_at is None:
                self.relay_back_at = relay_back_at


def _work(
    sessions: sessionmaker[Session], settings: Settings, clock: Clock,
    transport: MailTransport, batch: _Batch,
) -> None:
    """One sending thread: take mails from the batch until it is done."""
    with sessions() as session:
        while (mail := batch.take(clock)) is not None:
            batch.record(*_send_one(session, settings, clock, transport, mail, batch.writing))


@contextlib.contextmanager
def _renewing(
    sessions: sessionmaker[Session], settings: Settings, clock: Clock, batch: _Batch,
    ids: list[int], every: float,
) -> Iterator[None]:
    """Renew the batch's leases every `every` seconds while it is sent, so that only a
    dispatcher that died leaves its rows to others. A renewal that fails (the database
    away) is tried again next time; the batch stops taking mails near the old end."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every):
            try:
                with batch.writing, sessions.begin() as session:
                    until = renew_claims(session, settings, clock.now(), ids)
                with batch.lock:
                    batch.lease_until = until
            except Exception as exc:
                _log().warning("outbox_lease_not_renewed", error=str(exc).splitlines()[0])

    renewer = threading.Thread(target=renew, name="outbox-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def sending_connections(settings: OutboundSettings) -> int:
    """SMTP sessions used in parallel within a batch: the relay's answer latency,
    not our CPU, bounds one session."""
    return max(1, settings.connections)


def dispatch_once(
    sessions: sessionmaker[Session],
    settings: Settings,
    clock: Clock,
    transport: MailTransport,
    *,
    should_stop: Callable[[], bool] | None = None,
    connections: int | None = None,
    renew_seconds: float = RENEW_SECONDS,
) -> DispatchReport:
    """Send everything due now, batch after batch, then return what happened.

    A batch is sent over `connections` parallel sessions of the transport
    (each sending thread keeps its own), because a relay answers one session
    at a time. Stops early when `should_stop()` turns true (shutdown) or the
    relay is unreachable; claimed rows not tried are released or postponed.
    """
    report = DispatchReport()
    margin = timedelta(seconds=RENEW_SECONDS)  # no new mail once the lease is this near
    workers = connections or sending_connections(settings.outbound)
    try:
        with sessions() as session, ThreadPoolExecutor(workers, "outbox") as pool:
            # SQLite takes one writer at a time and makes the others sleep-poll for its
            # lock; queueing every transaction here on the engine's one writer lock (the
            # listener's and the processor's too) is much faster.
            writing = write_lock(session.get_bind().engine)
            first = True
            while True:
                now = clock.now()
                with writing:
                    if first:  # the rate limiter's expired rows go in the first claim's commit
                        purge_auto_answers(session, settings, now)
                        first = False
                    rows = claim_due(session, settings, now, now + LEASE)
                    claimed = [_Claimed(*row) for row in rows]
                    session.commit()
                if not claimed:
                    return report
                batch = _Batch(deque(claimed), now + LEASE, margin, should_stop, report, writing)
                threads = min(workers, len(claimed))
                with _renewing(sessions, settings, clock, batch, [m.id for m in claimed],
                               renew_seconds):
                    if threads == 1:
                        _work(sessions, settings, clock, transport, batch)
                    else:
                        running = [pool.submit(_work, sessions, settings, clock, transport,
                                               batch) for _ in range(threads)]
                        for future in running:
                            future.result()
                rest = [mail.id for mail in batch.mails]
                if batch.relay_back_at is not None:
                    if rest:
                        with writing:
                            _set(session, rest, claimed_until=None,
                                 next_attempt_at=batch.relay_back_at)
                        report.deferred += len(rest)
                    return report
                if batch.stopped:
                    if rest:
                        with writing:
                            _set(session, rest, claimed_until=None)
                    return report
    finally:
        transport.close()
        if report.sent or report.retried or report.failed or report.dead:
            _log().info("outbox_dispatched", **vars(report))


def retry(session: Session, outbox_id: int, now: datetime | None = None) -> OutboxMail:
    """Put a failed or dead row back in the queue, due at once; the caller commits."""
    row = session.get(OutboxMail, outbox_id)
    if row is None:
        raise UserError(f"There is no outbox mail with ID {outbox_id}.")
    if row.status not in (OutboxStatus.FAILED, OutboxStatus.DEAD):
        raise UserError(
            f"Outbox mail {outbox_id} is {row.status}; only failed or dead mails can be retried."
        )
    row.status = OutboxStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = now or row.created_at
    row.claimed_until = None
    _log(outbox_id=row.id, message_id=row.message_id).info("outbox_retry")
    return row


# --- the long-running component --------------------------------------------------


class Dispatcher:
    """Runs `dispatch_once` on a thread of its own every `poll_seconds`, or sooner when woken.

    A pass in progress when the server stops ends after its current mail; one that
    raises (the database away, say) is logged and tried again next round.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        clock: Clock,
        transport: MailTransport | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        self._transport = transport or build_transport(settings)
        self._passes = Passes("dispatch", self._dispatch,
                              interval=settings.outbound.poll_seconds)

    def wake(self) -> None:
        """Ask for a pass now (new mail queued); safe to call from any thread."""
        self._passes.wake()

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until `stopping` is set."""
        _log().info("dispatcher_started", poll_seconds=self._settings.outbound.poll_seconds)
        try:
            await self._passes.run(stopping)
        finally:
            _log().info("dispatcher_stopped")

    def _dispatch(self) -> None:
        dispatch_once(self._sessions, self._settings, self._clock, self._transport,
                      should_stop=self._passes.stopping)
