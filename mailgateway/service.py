"""The gateway as one object: storage of raw mail, processing, and the directory.

Transports, the command line and the server all go through `Gateway`, so
the rule "commit before acknowledging, process after" lives in one place.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import Engine, Table, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.batch_store import BatchStore
from mailgateway.clock import Clock, SystemClock
from mailgateway.config import Settings
from mailgateway.db.dialect import (
    UrgentWrite,
    claimed,
    insert_blobs,
    insert_with_bytes,
    is_postgresql,
    is_transient,
    reading,
    write_lock,
)
from mailgateway.db.models import InboxMail, InboxRaw, InboxStatus, Staff, Ticket
from mailgateway.db.session import create_db_engine, session_factory
from mailgateway.errors import TemporaryError, UserError
from mailgateway.ingest import Received
from mailgateway.outbound.intent import MailIntent, QueuedMail
from mailgateway.pipeline.context import Mailer, Pipeline
from mailgateway.pipeline.pec import read_mail
from mailgateway.pipeline.prepare import (
    PreparedMail,
    RawIdentity,
    finding_settings,
    header_end,
    prepare_mail,
    raw_identity,
)
from mailgateway.pipeline.process import process_inbox_mail, quarantine
from mailgateway.pipeline.rules import DeskNames, RuleBook
from mailgateway.reply_token import read_bounce_address
from mailgateway.signing_secret import with_secret
from mailgateway.sla import first_response_due
from mailgateway.store import SessionStore, Store, read_directory
from mailgateway.telemetry import TALLY

log = structlog.get_logger()

_INBOX = cast(Table, InboxMail.__table__)
_INBOX_RAW = cast(Table, InboxRaw.__table__)
_T = TypeVar("_T")
_MAX_CONFLICTS = 5
_SENDER_FIELDS = re.compile(rb"(?im)^(?:from|reply-to|sender)[ \t]*:(.*(?:\r?\n[ \t].*)*)")
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\],;:\"@]+@[^\s<>()\[\],;:\"@]+")
# A PEC provider's receipt: it comes from the provider, whom the directory never knows.
_PEC_RECEIPT = re.compile(rb"(?im)^x-ricevuta[ \t]*:")

BATCH_AT_MOST = 20
"""Mails a PostgreSQL processor takes in one transaction when a backlog waits. A batch
claims, reads ahead and commits once for all its mails (`BatchStore`): on the
sustained benchmark's requests, 14 ms of CPU a mail instead of 24. More mails would
hold their claims, and a new ticket's number, longer for little more."""
BATCH_BYTES = 16 << 20
"""A batch's mails, parsed, are held together: large ones go a few at a time."""
_OLDEST_FREE = (select(InboxMail).where(InboxMail.status == InboxStatus.RECEIVED.value)
                .order_by(InboxMail.id).limit(BATCH_AT_MOST).with_for_update(skip_locked=True))


def possible_senders(raw: bytes, envelope_from: str) -> set[str]:
    """Every address that From, Reply-To, Sender or the envelope could name, read
    loosely from the header block: more than the pipeline would take, never fewer."""
    head = raw[:header_end(raw)]
    text = b" ".join(m[1] for m in _SENDER_FIELDS.finditer(head)).decode("utf-8", "replace")
    return {a.lower().strip(".") for a in _ADDRESS_LIKE.findall(f"{text} {envelope_from}")}


_RECIPIENT_FIELDS = re.compile(
    rb"(?im)^(?:to|cc|delivered-to|x-original-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)")


def to_our_return_path(raw: bytes, helpdesk_address: str, secret: str) -> bool:
    """Addressed to the signed return path of a mail of ours: a delivery report, which
    may come from a server's postmaster rather than the null sender."""
    head = raw[:header_end(raw)]
    if b"+b" not in head:
        return False
    text = b" ".join(m[1] for m in _RECIPIENT_FIELDS.finditer(head)).decode("utf-8", "replace")
    return any(read_bounce_address(a, helpdesk_address, secret) is not None
               for a in _ADDRESS_LIKE.findall(text))


def store_raws(session: Session, rows: Sequence[tuple[int, bytes]]) -> None:
    """Keep mails' bytes beside their inbox rows, a large one streamed (`insert_blobs`)."""
    insert_blobs(session, _INBOX_RAW, "inbox_id", "raw", rows)


@dataclass(frozen=True)
class Outcome:
    status: str
    decision: str | None = None  # the Decision's class name: OpenTicket, CustomerReply…


def _sample_request(sender: str, helpdesk_address: str) -> bytes:
    """A short first request, as a customer writes it: what `Gateway.warm_up` processes."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = helpdesk_address
    message["Subject"] = "Errore all'avvio del programma"
    message["Message-ID"] = "<warm-up@example.org>"
    message.set_content("Buongiorno,\n\nil programma si chiude all'avvio.\n\nGrazie\n")
    return message.as_bytes()


def _within_bytes(rows: list[InboxMail]) -> list[InboxMail]:
    """The first of `rows` up to `BATCH_BYTES` in all, and always the first one."""
    total = 0
    for count, row in enumerate(rows):
        total += row.size
        if total > BATCH_BYTES and count:
            return rows[:count]
    return rows


def _again_if_dropped(work: Callable[[], _T]) -> _T:
    """`work`, done once more when the server had dropped the connection it met (a
    restart of PostgreSQL): the engine does not ping before each transaction."""
    try:
        return work()
    except OperationalError as exc:
        if not exc.connection_invalidated:
            raise
        return work()


class Gateway:
    """Storage and processing of inbound mail, shared by every transport."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        *,
        engine: Engine | None = None,
        mailer: Mailer | None = None,
    ) -> None:
        settings = with_secret(settings)  # never sign with an empty secret
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        # Each IMAP mailbox's poller and the scheduler may hold a connection (`Leadership`).
        self.engine = engine or create_db_engine(settings.database, held=len(settings.imap) + 1)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        # Sessions that only read: on SQLite they leave the write lock to the writers.
        self.reads: sessionmaker[Session] = session_factory(reading(self.engine))
        self.writing = write_lock(self.engine)
        self.writing_urgently = UrgentWrite(self.engine)  # a client waits for this commit
        # The listener's insert on PostgreSQL: one statement, atomic by itself.
        self._autocommitting = self.engine.execution_options(isolation_level="AUTOCOMMIT") \
            if is_postgresql(self.engine) else None
        if mailer is None:
            from mailgateway.outbound.queue import enqueue

            def mailer(
                store: Store, intent: MailIntent, ticket: Ticket | None
            ) -> QueuedMail | None:
                return enqueue(store, settings, self.clock, intent, ticket)

        self.rules = RuleBook(Path(settings.rules.path), self.desk_names)
        self.pipeline = Pipeline(settings, self.clock, mailer, self.rules)
        self._finding_settings = finding_settings(settings)
        self.answer_window = timedelta(minutes=settings.outbound.auto_answer_window_minutes)
        self._domains = tuple(d.lower() for d in settings.helpdesk.domains)
        self._conflicts: dict[int, int] = {}  # inbox id → concurrent-write conflicts met

    def close(self) -> None:
        self.engine.dispose()

    def desk_names(self) -> DeskNames:
        """What rule files may name: the configured groups, the technicians."""
        with self.reads() as session:
            staff = set(session.scalars(select(Staff.email)))
        return DeskNames(groups=set(self.settings.groups), staff=staff)

    def warm_up(self) -> None:
        """Take a sample request through receiving and processing once, on a scratch
        SQLite database, before real mail comes.

        The first mail a process handles pays about 0.2 s of one-time costs
        (SQLAlchemy's first flush, the holiday calendar, the templates, the rules)
        while it holds the write lock that SMTP clients' commits wait for: at every
        start and worker restart, the clients of that moment waited for it. Nothing
        of the sample is logged, counted or kept; a failure only leaves the costs
        to the first real mail. The site's own rules are read first, checked
        against its own directory and logged as always; the sample goes through them.
        """
        from mailgateway.db.migrate import upgrade
        from mailgateway.directory import add_account

        self.rules.current()
        sender = "warm-up@example.org"
        with tempfile.TemporaryDirectory(prefix="mailgateway-warm-up-") as scratch_dir, \
                structlog.contextvars.bound_contextvars(warm_up=True):
            url = f"sqlite:///{scratch_dir}/scratch.db"
            scratch = Gateway(replace(self.settings, database=replace(
                self.settings.database, url=url)), self.clock)
            scratch.pipeline = replace(scratch.pipeline, rules=self.rules)
            try:
                upgrade(scratch.engine)
                with scratch.sessions.begin() as session:
                    add_account(session, self.clock, name="Warm-up", email=sender)
                raw = _sample_request(sender, self.settings.helpdesk.address)
                inbox_id = scratch._insert(raw, raw_identity(raw), "smtp", sender,
                                           [self.settings.helpdesk.address], False)
                scratch._process_untimed(inbox_id, raw)
            except Exception as exc:
                warning = f"{exc.__class__.__name__}: {exc}"[:200]
                with structlog.contextvars.bound_contextvars(warm_up=False):
                    log.warning("warm-up failed", error=warning)
            finally:
                scratch.close()

    def load_calendar(self) -> None:
        """Load the office calendar now, rather than when the first ticket is opened.

        Its holidays take 0.1 to 0.2 s to load, in which a bulk import's worker,
        which can only parse one batch ahead of the writing, would wait: the
        import loads it while the worker parses the first batch.
        """
        first_response_due(self.clock.now(), self.settings.sla)

    # -- Receiver -----------------------------------------------------------------

    def accepts_recipient(self, address: str) -> bool:
        domain = address.rpartition("@")[2].strip().rstrip(">").lower()
        return domain in self._domains

    def receive(
        self,
        raw: bytes,
        *,
        transport: str,
        envelope_from: str | None = None,
        envelope_to: Sequence[str] = (),
        trust_authentication_results: bool = False,
    ) -> Received:
        identity = raw_identity(raw)
        structlog.contextvars.bind_contextvars(
            message_id=identity.message_id, transport=transport)
        try:
            inbox_id = _again_if_dropped(lambda: self._insert(
                raw, identity, transport, envelope_from, envelope_to,
                trust_authentication_results))
        except IntegrityError:
            existing = self._find_duplicate(identity.dedup_key)
            if existing is None:
                raise TemporaryError("could not store the mail (integrity conflict)") from None
            log.info("duplicate mail", inbox_id=existing)
            return Received(existing, duplicate=True)
        except SQLAlchemyError as exc:
            log.warning("could not store mail", error=str(exc).splitlines()[0])
            raise TemporaryError(f"could not store the mail: {exc.__class__.__name__}") from exc
        log.info("mail stored", inbox_id=inbox_id, size=len(raw))
        TALLY.mail_received(transport)
        return Received(inbox_id, duplicate=False)

    def _insert(
        self, raw: bytes, identity: RawIdentity, transport: str, envelope_from: str | None,
        envelope_to: Sequence[str], trust_authentication_results: bool,
    ) -> int:
        values = self.inbox_values(raw, identity, transport, envelope_from, envelope_to)
        values["trusts_authentication_results"] = trust_authentication_results
        if self._autocommitting is not None:
            # One round trip instead of four (BEGIN, two INSERTs, COMMIT), each of which
            # waits for the interpreter lock again (benchmarks/README.md, fast paths).
            with self._autocommitting.connect() as connection:
                return int(connection.execute(insert_with_bytes(
                    _INBOX, values, _INBOX_RAW, "inbox_id", "raw", raw)).scalar_one())
        with self.writing_urgently, self.sessions.begin() as session:
            inbox_id = int(session.execute(
                insert(_INBOX).values(values).returning(_INBOX.c.id)).scalar_one())
            store_raws(session, [(inbox_id, raw)])
            return inbox_id

    def refusal(self, raw: bytes, envelope_from: str) -> str | None:
        """Refused only when no address the mail could be from is in the directory: the
        pipeline reads the sender more carefully later, so a doubt means "take it"."""
        if self.settings.helpdesk.unknown_sender != "reject" or envelope_from == "":
            return None  # the null sender: a bounce, which comes from a machine we do not know
        helpdesk = self.settings.helpdesk
        if to_our_return_path(raw, helpdesk.address, helpdesk.secret):
            return None  # a report on our mail, whoever sends it
        if _PEC_RECEIPT.search(raw[:header_end(raw)]):
            return None  # the pipeline ties it to our mail, or records it; never answers
        candidates = possible_senders(raw, envelope_from)
        if not candidates:
            return None  # the pipeline quarantines it, with the reason
        if _again_if_dropped(lambda: self._any_registered(candidates)):
            return None
        shown = next(iter(sorted(candidates)))
        return (f"550 5.7.1 <{shown}> is not registered with {helpdesk.name}: write to "
                f"{helpdesk.address} from your account's main address or a registered "
                "person's")

    def _any_registered(self, addresses: set[str]) -> bool:
        with self.reads() as session:
            return any(read_directory(session, addresses).values())

    def inbox_row(
        self, raw: bytes, identity: RawIdentity, transport: str,
        envelope_from: str | None = None, envelope_to: Sequence[str] = (),
    ) -> InboxMail:
        return InboxMail(**self.inbox_values(raw, identity, transport, envelope_from,
                                             envelope_to))

    def inbox_values(
        self, raw: bytes, identity: RawIdentity, transport: str,
        envelope_from: str | None = None, envelope_to: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A new inbox row's columns for `raw`; the null sender of bounces stays ""
        (not None)."""
        return {
            "received_at": self.clock.now(), "transport": transport,
            "envelope_from": envelope_from[:998] if envelope_from is not None else None,
            "envelope_to": [a[:320] for a in envelope_to][:100],
            "message_id": identity.message_id[:998] if identity.message_id else None,
            "sha256": identity.sha256, "dedup_key": identity.dedup_key, "size": len(raw),
            "status": InboxStatus.RECEIVED.value, "attempts": 0,
        }

    def _find_duplicate(self, dedup_key: str) -> int | None:
        with self.reads() as session:
            return session.execute(
                select(InboxMail.id).where(InboxMail.dedup_key == dedup_key)
            ).scalar_one_or_none()

    def process(self, inbox_id: int) -> str:
        """Process one stored mail once; a failure quarantines it with the reason."""
        return self.process_outcome(inbox_id).status

    def process_outcome(self, inbox_id: int, raw: bytes | None = None) -> Outcome:
        """Like `process`, also saying what was decided (for import summaries).
        `raw`, when the caller still has the stored bytes, saves reading them back."""
        for attempt in range(5):
            try:
                outcome = self._process(inbox_id, raw)
                if outcome.status == InboxStatus.RECEIVED.value and inbox_id in self._conflicts:
                    continue  # a concurrent write won: at once again
                return outcome
            except OperationalError as exc:  # database busy or gone: retry, then leave it
                if not is_transient(exc):
                    raise
                log.warning("database busy while processing", inbox_id=inbox_id,
                            attempt=attempt, error=str(exc).splitlines()[0])
                time.sleep(0.05 * (attempt + 1))
        return Outcome(InboxStatus.RECEIVED.value)

    def _claim(self, session: Session, inbox_id: int) -> InboxMail | None:
        """The row, locked for this transaction; None while another process holds it."""
        query = claimed(select(InboxMail).where(InboxMail.id == inbox_id), session)
        return session.execute(query).scalar_one_or_none()

    def _process(self, inbox_id: int, raw: bytes | None = None) -> Outcome:
        started = time.perf_counter()
        outcome = self._process_untimed(inbox_id, raw)
        if outcome.status != InboxStatus.RECEIVED.value:
            self._conflicts.pop(inbox_id, None)
            TALLY.mail_processed(outcome.status, time.perf_counter() - started)
        return outcome

    def _process_untimed(self, inbox_id: int, raw: bytes | None = None) -> Outcome:
        structlog.contextvars.bind_contextvars(inbox_id=inbox_id)
        try:
            # Parsing, the slow pure part, happens outside the write transaction.
            if raw is None:
                with self.reads() as session:
                    raw = session.execute(
                        select(InboxRaw.raw).join(InboxMail, InboxMail.id == InboxRaw.inbox_id)
                        .where(InboxMail.id == inbox_id,
                               InboxMail.status == InboxStatus.RECEIVED.value)
                    ).scalar_one_or_none()
                if raw is None:
                    return Outcome(self._status(inbox_id))
            parsed = read_mail(raw)
            del raw
            with self.writing, self.sessions.begin() as session:
                row = self._claim(session, inbox_id)
                if row is None:
                    return Outcome(InboxStatus.RECEIVED.value)  # another worker holds it
                structlog.contextvars.bind_contextvars(
                    message_id=row.message_id, transport=row.transport)
                if row.status != InboxStatus.RECEIVED.value:
                    return Outcome(row.status)
                analysis = process_inbox_mail(SessionStore(session), self.pipeline, row, parsed)
                return Outcome(row.status, type(analysis.decision).__name__)
        except OperationalError as exc:
            if is_transient(exc):
                raise
            return self._quarantine(inbox_id, exc)
        except IntegrityError as exc:
            return self._after_conflict(inbox_id, exc)
        except Exception as exc:
            return self._quarantine(inbox_id, exc)
        finally:
            structlog.contextvars.unbind_contextvars(
                "inbox_id", "ticket", "message_id", "transport")

    def _after_conflict(self, inbox_id: int, exc: IntegrityError) -> Outcome:
        """Another processor wrote a row this mail's transaction wanted to write too (the
        account of a new sender, say) and committed first: the mail is processed again,
        and then finds that row. A conflict that keeps coming back is quarantined."""
        conflicts = self._conflicts[inbox_id] = self._conflicts.get(inbox_id, 0) + 1
        if conflicts >= _MAX_CONFLICTS:
            del self._conflicts[inbox_id]
            return self._quarantine(inbox_id, exc)
        log.info("processing conflict, trying again", inbox_id=inbox_id, attempt=conflicts)
        return Outcome(InboxStatus.RECEIVED.value)

    def statuses(self, inbox_ids: Sequence[int]) -> dict[int, str]:
        with self.reads() as session:
            rows = session.execute(select(InboxMail.id, InboxMail.status)
                                   .where(InboxMail.id.in_(inbox_ids)))
            return {inbox_id: status for inbox_id, status in rows}

    def _status(self, inbox_id: int) -> str:
        with self.reads() as session:
            status = session.execute(
                select(InboxMail.status).where(InboxMail.id == inbox_id)).scalar_one_or_none()
        if status is None:
            raise UserError(f"There is no received mail with ID {inbox_id}.")
        return status

    def _quarantine(self, inbox_id: int, exc: Exception) -> Outcome:
        with self.writing, self.sessions.begin() as session:
            row = session.get(InboxMail, inbox_id)
            if row is None:
                raise exc
            quarantine(row, exc, self.clock.now())
        return Outcome(InboxStatus.QUARANTINED.value)

    def pending(self, limit: int = 100, share: tuple[int, int] = (0, 1)) -> list[int]:
        """Stored mail not yet processed, oldest first: what a restart must finish.
        `share` (k, n): only the ids equal to k modulo n, worker k's share of n."""
        query = select(InboxMail.id).where(InboxMail.status == InboxStatus.RECEIVED.value)
        k, n = share
        if n > 1:
            query = query.where(InboxMail.id % n == k)
        with self.reads() as session:
            return list(session.execute(query.order_by(InboxMail.id).limit(limit)).scalars())

    def process_pending(
        self, share: tuple[int, int] = (0, 1), should_stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Process every stored-but-unprocessed mail; returns how many were handled.

        On PostgreSQL mails are claimed first (`FOR UPDATE SKIP LOCKED`), so any
        number of processors, in this gateway or others, take different mails and
        none parses a mail another is processing; a backlog is taken up to
        `BATCH_AT_MOST` mails a transaction. On SQLite, whose one writer
        makes claiming cost a turn of the write lock, mail is parsed before it is
        locked, and `share` splits the ids between the worker processes of one
        `serve --workers` (a mail of another share is taken by its own worker).
        """
        if is_postgresql(self.engine):
            return self._process_claimed(should_stop)
        handled = 0
        while batch := self.pending(share=share):
            progressed = False
            for inbox_id in batch:
                if should_stop():
                    return handled
                if self.process(inbox_id) != InboxStatus.RECEIVED.value:
                    handled += 1
                    progressed = True
            if not progressed:
                break
        return handled

    def _process_claimed(self, should_stop: Callable[[], bool]) -> int:
        """PostgreSQL: claim the oldest mails no one holds, process them in that
        transaction."""
        handled = 0
        while not should_stop():
            try:
                outcomes = self._claim_and_process()
            except OperationalError as exc:
                if not is_transient(exc):
                    raise
                log.warning("database busy while processing", error=str(exc).splitlines()[0])
                time.sleep(0.1)
                continue
            if not outcomes:
                return handled
            # A mail left received met a concurrent write: it is claimed again at once.
            handled += sum(o.status != InboxStatus.RECEIVED.value for o in outcomes)
        return handled

    def _claim_and_process(self) -> list[Outcome]:
        """Up to `BATCH_AT_MOST` of the oldest mails no one holds, processed together
        (`BatchStore`); when one of them fails, each is done again alone, so the failing
        mail is quarantined by itself."""
        ids: list[int] = []
        started = time.perf_counter()
        try:
            with self.sessions.begin() as session:
                rows = _within_bytes(list(session.execute(_OLDEST_FREE).scalars()))
                ids = [row.id for row in rows]
                if not rows:
                    return []
                raws = {inbox_id: raw for inbox_id, raw in session.execute(
                    select(InboxRaw.inbox_id, InboxRaw.raw).where(InboxRaw.inbox_id.in_(ids)))}
                mails = [prepare_mail(raws.pop(row.id), self._finding_settings)
                         for row in rows]
                store = BatchStore(session, archive=False)
                store.read_ahead(mails, self.clock.now() - self.answer_window)
                outcomes = [self.process_prepared(store, row, mail)
                            for row, mail in zip(rows, mails, strict=True)]
                store.write()
            for inbox_id, outcome in zip(ids, outcomes, strict=True):
                self._conflicts.pop(inbox_id, None)
                TALLY.mail_processed(outcome.status, (time.perf_counter() - started) / len(ids))
            return outcomes
        except Exception as exc:
            if (isinstance(exc, OperationalError) and is_transient(exc)) or not ids:
                raise
            log.info("a mail of the batch failed; doing the batch again mail by mail",
                     error=f"{exc.__class__.__name__}: {exc}"[:200])
            return [self._process(inbox_id) for inbox_id in ids]

    def process_prepared(self, store: Store, row: InboxMail, mail: PreparedMail) -> Outcome:
        """Process one mail of a batch in the batch's transaction (`store`)."""
        structlog.contextvars.bind_contextvars(
            inbox_id=row.id, message_id=mail.identity.message_id, transport=row.transport)
        try:
            analysis = process_inbox_mail(store, self.pipeline, row, mail.parsed, mail.findings)
            return Outcome(row.status, type(analysis.decision).__name__)
        finally:
            structlog.contextvars.unbind_contextvars(
                "inbox_id", "ticket", "message_id", "transport")

    def retry(self, inbox_id: int) -> str:
        """Re-run a quarantined mail through the pipeline (after a fix or a new rule)."""
        with self.writing, self.sessions.begin() as session:
            row = session.get(InboxMail, inbox_id)
            if row is None:
                raise UserError(f"There is no received mail with ID {inbox_id}.")
            if row.status != InboxStatus.QUARANTINED.value:
                raise UserError(f"Mail {inbox_id} is {row.status}, not quarantined.")
            row.status, row.reason = InboxStatus.RECEIVED.value, None
        return self.process(inbox_id)
