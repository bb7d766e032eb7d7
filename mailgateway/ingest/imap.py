"""IMAP transport: drain a mailbox, commit each mail, and only then move it away.

The mailbox is the sender's queue and the inbox table is ours, so the order is
fixed: fetch, `Receiver.receive` (durable commit), processing, then MOVE to
the processed (or failed) folder. A crash anywhere before the move leaves the
mail where it was; it is fetched again and the receiver's dedup turns the
repeat into a no-op. A crash after the move cannot lose anything, because the
commit came first.

Processing is the poller's own `Receiver.process` call, or, when `serve`
runs it elsewhere (worker processes, another unit, another gateway), handed
over: the poller wakes the processors, then reads each mail's fate from the
database before it moves the mail by it.

The poller is blocking (imapclient) and runs in its own thread; `run` bridges
it to the server's event loop (`mailgateway.passes`). Waits are short and
check a stop flag, so SIGTERM ends an IDLE within about a second. Every
network or protocol failure becomes a reconnect with exponential backoff and
jitter, logged once per outage; a refused login is retried at the slowest
rate of the same policy (both in `mailgateway.retry`).

When several gateways share the database, one poller at a time works a
mailbox: the one holding its `Leadership`. The others try again every
`leader_retry_seconds`, so one of them takes over within seconds of the
leader's death; a leader that loses its hold (its database connection gone)
leaves the mailbox at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog
from imapclient import IMAPClient
from imapclient.exceptions import (
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
)

from mailgateway.config import ImapSettings, check_imap_settings
from mailgateway.errors import ConfigError, PermanentError, TemporaryError
from mailgateway.ingest import Received, Receiver
from mailgateway.leadership import Leadership
from mailgateway.passes import Passes
from mailgateway.pipeline.prepare import raw_message_id
from mailgateway.retry import Backoff, Outage
from mailgateway.telemetry import TALLY

__all__ = ["ImapConnectionError", "ImapFolderError", "ImapLoginError", "ImapPoller", "StoreError"]

_log = structlog.get_logger(__name__)

RECEIVED, PROCESSED, QUARANTINED = "received", "processed", "quarantined"
# Mail handed over to processors elsewhere is moved by its fate at least this often.
_HANDED_OVER_AT_ONCE = 500
# Upper bound on the bytes one FETCH brings into memory (a single larger mail still passes).
_MAX_BATCH_BYTES = 64 * 1024 * 1024
_BODY = b"BODY[]"
# RFC 2177: servers may log out a client idle for 30 minutes; re-issue IDLE before that.


class ImapConnectionError(TemporaryError):
    """The IMAP server could not be reached or broke the conversation: reconnect later."""


class ImapLoginError(PermanentError):
    """The IMAP server refused the credentials; retrying soon cannot help."""


class ImapFolderError(PermanentError):
    """A configured folder is missing and the server would not create it."""


class StoreError(TemporaryError):
    """The gateway could not store or process a fetched mail; it stays in the mailbox."""


class _Stored(NamedTuple):
    inbox_id: int
    message_id: str | None


@dataclass
class _FolderState:
    """What survives a reconnect: UIDs are only meaningful under one UIDVALIDITY."""

    uidvalidity: int | None = None
    # Mails committed in the inbox table but not yet moved, by UID.
    stored: dict[int, _Stored] = field(default_factory=dict)
    # The UIDs said to be waiting for their processors since `waiting_said_at` (monotonic).
    waiting_said: frozenset[int] = frozenset()
    waiting_said_at: float = -math.inf


def _after_failure(outage: Outage, error: Exception) -> float:
    """Log the failure (once per outage) and return the wait before reconnecting."""
    if isinstance(error, StoreError):
        return outage.failed("could not store mail, leaving it in the mailbox", error)
    if isinstance(error, ImapLoginError):
        return outage.failed("login refused", error, slow=True)
    if isinstance(error, ImapFolderError):
        return outage.failed("folder unusable", error, slow=True)
    if isinstance(error, ImapConnectionError):
        return outage.failed("connection lost, reconnecting", error)
    return outage.failed("unexpected", error, unexpected=True)


def mailbox_name(settings: ImapSettings) -> str:
    """How logs, metrics and leadership name a mailbox: user@host:port/folder."""
    return f"{settings.username}@{settings.host}:{settings.port}/{settings.folder}"


def _batches(uids: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


class ImapPoller:
    """One mailbox: drain it, then IDLE (or poll) for more, until told to stop."""

    def __init__(
        self,
        settings: ImapSettings,
        receiver: Receiver,
        *,
        reconnect_initial_seconds: float | None = None,
        reconnect_max_seconds: float | None = None,
        idle_check_seconds: float = 1.0,
        leadership: Leadership | None = None,
        leader_retry_seconds: float = 2.0,
        hand_over: Callable[[int], None] | None = None,
        fate_wait_seconds: float = 2.0,
        fate_recheck_seconds: float = 5.0,
        waiting_said_every_seconds: float = 60.0,
    ) -> None:
        """`reconnect_*` override the settings' backoff bounds (first wait, cap); the cap
        is also the interval between attempts after a refused login. Without
        `leadership` the poller assumes it is the mailbox's only one.

        `hand_over`, when processing runs elsewhere, wakes it for a stored mail's id;
        the poller then waits for a batch's fates as long as one comes at least every
        `fate_wait_seconds`. A mail still unprocessed stays in the folder, and the
        poller IDLEs (new mail comes in at once), looking at it again every
        `fate_recheck_seconds` until it is done. The log says so when a mail starts
        waiting, then every `waiting_said_every_seconds` while it waits (with no
        processor running anywhere: for ever).
        Without `hand_over` the poller processes each mail itself."""
        check_imap_settings(settings, "imap")
        self._password = settings.resolved_password()
        if settings.password_env and not self._password:
            raise ConfigError(
                f"imap.password_env names {settings.password_env}, which is not set or empty."
            )
        self.settings = settings
        self._receiver = receiver
        self._idle_check_seconds = idle_check_seconds
        self._leadership = leadership
        self._leader_retry_seconds = leader_retry_seconds
        self._hand_over = hand_over
        self._fate_wait_seconds = fate_wait_seconds
        self._fate_recheck_seconds = fate_recheck_seconds
        self._waiting_said_every_seconds = waiting_said_every_seconds
        self.mailbox = mailbox_name(settings)
        self._backoff = Backoff(
            initial=(
                reconnect_initial_seconds
                if reconnect_initial_seconds is not None
                else settings.reconnect_initial_seconds
            ),
            maximum=(
                reconnect_max_seconds
                if reconnect_max_seconds is not None
                else settings.reconnect_max_seconds
            ),
        )
        self._stop = threading.Event()
        # serve_forever never raises an Exception; should one escape all the same, it is
        # logged and the poller started again at the backoff's slowest rate.
        self._passes = Passes("imap", self.serve_forever, interval=self._backoff.maximum,
                              interrupt=self.stop, heart=f"imap {self.mailbox}",
                              stuck_after=3 * settings.timeout_seconds + 10)
        self._heart = self._passes.heart
        self._lock = threading.Lock()
        self._logging_in: IMAPClient | None = None
        self._folder = _FolderState()
        self._log = _log.bind(transport="imap", mailbox=self.mailbox)

    # ---- entry points -----------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Run `serve_forever` on a thread of its own until `stopping` is set, then
        interrupt IDLE, log out, return.

        A thread of its own rather than the loop's default executor: the poller
        lives as long as the process and must not take a slot other components
        use for their short blocking calls.
        """
        self._stop.clear()
        await self._passes.run(stopping)

    def stop(self) -> None:
        """Ask `serve_forever` to finish (thread-safe).

        A login in progress is cut short: servers delay answers to repeated failed
        logins by many seconds, and shutdown must not wait for that.
        """
        self._stop.set()
        with self._lock:
            if self._logging_in is not None:
                with contextlib.suppress(OSError):
                    self._logging_in.socket().shutdown(socket.SHUT_RDWR)

    def run_once(self) -> int:
        """Connect, drain the folder once, log out; returns how many mails were handled.

        Raises `ImapConnectionError`, `ImapLoginError`, `ImapFolderError`, or
        `StoreError` (mails not handled stay in the mailbox).
        """
        never = threading.Event()
        with self._imap_errors(), self._connected() as client:
            self._ensure_folders(client)
            return self._drain(client, never)

    def serve_forever(self) -> None:
        """Drain, wait for mail, repeat; reconnect after any failure, until `stop()`."""
        outage = Outage(self._backoff, self._log, name="imap")
        waiting_for_leader = False
        while not self._stop.is_set():
            if not self._lead():
                if not waiting_for_leader:
                    self._log.info("imap mailbox polled by another gateway; standing by")
                    waiting_for_leader = True
                self._wait(self._leader_retry_seconds)
                continue
            waiting_for_leader = False
            try:
                with self._imap_errors(), self._connected() as client:
                    TALLY.imap_state(self.mailbox, True)
                    self._watch(client, outage.recovered)
            except Exception as exc:  # every failure waits; a bug must not end the transport
                TALLY.imap_state(self.mailbox, False)
                if self._stop.is_set() and isinstance(exc, ImapConnectionError):
                    break  # cut short by stop(): not an outage
                self._wait(_after_failure(outage, exc))
        TALLY.imap_state(self.mailbox, False)
        if self._leadership is not None:
            self._leadership.release()
        self._log.info("imap poller stopped")

    def _lead(self) -> bool:
        """True when this poller may work the mailbox now."""
        if self._leadership is None:
            return True
        try:
            return self._leadership.acquire()
        except Exception as exc:  # the database away: nobody can store mail anyway
            self._log.warning("imap leadership unknown", error=str(exc).splitlines()[0])
            return False

    def _still_leading(self) -> None:
        if self._leadership is not None and not self._leadership.held:
            raise ImapConnectionError("this gateway lost the mailbox's leadership")

    def _wait(self, seconds: float) -> None:
        """Wait as designed (not stuck) until `seconds` have passed or stop."""
        self._heart.working(False)
        try:
            self._stop.wait(seconds)
        finally:
            self._heart.working(True)

    # ---- connection -------------------------------------------------------------------

    @contextlib.contextmanager
    def _imap_errors(self) -> Iterator[None]:
        """Map imapclient's and the socket's exceptions to ours, once, at the edge."""
        s = self.settings
        where = f"{s.host}:{s.port}"
        try:
            yield
        except LoginError as exc:
            if "UNAVAILABLE" in str(exc).upper():
                raise ImapConnectionError(f"IMAP server {where} is unavailable: {exc}") from exc
            raise ImapLoginError(
                f"IMAP server {where} refused the login of {s.username}: {exc}"
            ) from exc
        except (IMAPClientError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise ImapConnectionError(f"IMAP connection to {where} failed: {detail}") from exc

    @contextlib.contextmanager
    def _connected(self) -> Iterator[IMAPClient]:
        """A logged-in client; logged out on a clean exit, just closed after a failure."""
        s = self.settings
        context = ssl.create_default_context() if (s.tls or s.starttls) else None
        client = IMAPClient(
            s.host, port=s.port, ssl=s.tls, ssl_context=context, timeout=s.timeout_seconds
        )
        try:
            with self._lock:
                self._logging_in = client
            if self._stop.is_set():
                raise ImapConnectionError("stopping")
            try:
                if s.starttls:
                    client.starttls(context)
                client.login(s.username, self._password)
            finally:
                with self._lock:
                    self._logging_in = None
            yield client
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        try:
            client.logout()
        except Exception:  # the session is gone already; just release the socket
            with contextlib.suppress(Exception):
                client.shutdown()

    def _ensure_folders(self, client: IMAPClient) -> None:
        s = self.settings
        for name in dict.fromkeys((s.folder, s.processed_folder, s.failed_folder)):
            if client.folder_exists(name):
                continue
            try:
                client.create_folder(name)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:
                if client.folder_exists(name):
                    continue  # created meanwhile by another client: what we wanted
                raise ImapFolderError(
                    f"IMAP folder {name!r} does not exist on {s.host} and could not be "
                    f"created: {exc}"
                ) from exc
            with contextlib.suppress(IMAPClientError):
                client.subscribe_folder(name)  # so admins see it in their mail client
            self._log.info("imap folder created", folder=name)

    # ---- one connection's life ----------------------------------------------------------

    def _watch(self, client: IMAPClient, ready: Callable[[], None]) -> None:
        """Drain, then wait for new mail by IDLE or polling, until stopped."""
        self._ensure_folders(client)
        idle = self.settings.idle and client.has_capability("IDLE")
        self._log.info("imap connected", mode="idle" if idle else "poll")
        while not self._stop.is_set():
            handled = self._drain(client, self._stop)
            ready()  # a drain worked: the outage, if any, is over
            if handled or self._stop.is_set():
                # Drain until a pass finds nothing: notices of mail that arrived meanwhile
                # came with our own commands' answers, and IDLE would not repeat them.
                continue
            # Mail left to the processors is looked at again soon; new mail comes at once.
            recheck = self._fate_recheck_seconds if self._folder.stored else math.inf
            if idle:
                self._idle(client, min(recheck, self.settings.idle_seconds))
            else:
                self._poll_wait(client, min(recheck, self.settings.poll_seconds))

    def _idle(self, client: IMAPClient, seconds: float) -> None:
        """IDLE until new mail, `seconds` (at most the re-issue interval), or stop; checks
        the flag every second."""
        client.idle()
        deadline = time.monotonic() + seconds
        checked = time.monotonic()
        leave = True
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._heart.beat()
                if time.monotonic() - checked >= self._leader_retry_seconds:
                    self._still_leading()
                    checked = time.monotonic()
                if self._read_ahead(client):
                    return  # leaving IDLE collects it; the drain that follows acts on it
                started = time.monotonic()
                responses = client.idle_check(timeout=self._idle_check_seconds)
                if any(r[0] == b"BYE" for r in responses):
                    leave = False
                    raise ImapConnectionError(f"IMAP server closed the session: {responses}")
                if any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    return
                if not responses and time.monotonic() - started < self._idle_check_seconds / 2:
                    # Readable without a line: the peer probably closed. Leaving IDLE
                    # tells for sure (DONE then raises) instead of spinning here.
                    return
        finally:
            if leave:
                client.idle_done()

    def _read_ahead(self, client: IMAPClient) -> bool:
        """True when server output already sits in the client's buffers.

        imaplib reads through a buffered file: a new-mail notice sent in the same
        packet as IDLE's "+ idling" is read ahead with it, and `idle_check` (which
        polls the socket) would then wait for the *next* packet, possibly minutes.
        """
        sock = client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        peek = getattr(getattr(client._imap, "file", None), "peek", None)
        if peek is None:
            return False
        sock.setblocking(False)
        try:
            return bool(peek(1))
        except (OSError, ValueError):
            return False
        finally:
            sock.settimeout(self.settings.timeout_seconds)

    def _poll_wait(self, client: IMAPClient, seconds: float) -> None:
        """Sleep `seconds` in slices, with a NOOP now and then so the server keeps us."""
        deadline = time.monotonic() + seconds
        noop_at = time.monotonic() + 240
        while not self._stop.wait(min(max(deadline - time.monotonic(), 0),
                                      self._leader_retry_seconds)):
            self._heart.beat()
            self._still_leading()
            if time.monotonic() >= deadline:
                return
            if time.monotonic() >= noop_at:
                client.noop()
                noop_at = time.monotonic() + 240

    # ---- draining ---------------------------------------------------------------------

    def _drain(self, client: IMAPClient, stop: threading.Event) -> int:
        """Handle every mail in the folder, oldest first, a batch at a time.

        Mail handed over is stored batch after batch while the processors work on
        it, and moved by its fate every `_HANDED_OVER_AT_ONCE` mails and at the end.
        """
        selected = client.select_folder(self.settings.folder)
        self._check_uidvalidity(int(selected[b"UIDVALIDITY"]))
        uids = sorted(client.search(["UNDELETED"])) if selected.get(b"EXISTS") else []
        for gone in self._folder.stored.keys() - set(uids):  # moved or expunged by others
            del self._folder.stored[gone]
        handled = 0
        handed_over: list[int] = []
        for batch in _batches(uids, max(self.settings.batch_size, 1)):
            if stop.is_set():
                break
            for part in self._split_by_size(client, batch):
                if self._hand_over is None:
                    handled += self._handle_batch(client, part, stop)
                    continue
                handed_over += self._hand_over_batch(client, part, stop)
                if len(handed_over) >= _HANDED_OVER_AT_ONCE:
                    handled += self._move(client, self._await_fates(handed_over, stop))
                    handed_over = []
        if handed_over:
            handled += self._move(client, self._await_fates(handed_over, stop))
        if handled:
            self._log.info("imap folder drained", handled=handled)
        return handled

    def _check_uidvalidity(self, uidvalidity: int) -> None:
        state = self._folder
        if state.uidvalidity is not None and state.uidvalidity != uidvalidity:
            # The server renumbered the folder: a remembered UID may now name
            # another mail. Forget them all; the receiver's dedup absorbs repeats.
            self._log.warning(
                "imap uidvalidity changed, rescanning",
                old=state.uidvalidity,
                new=uidvalidity,
                forgotten=len(state.stored),
            )
            state.stored.clear()
        state.uidvalidity = uidvalidity

    def _split_by_size(self, client: IMAPClient, uids: list[int]) -> Iterator[list[int]]:
        """Cut a batch so one FETCH stays under `_MAX_BATCH_BYTES`."""
        sizes = client.fetch(uids, [b"RFC822.SIZE"])
        part: list[int] = []
        total = 0
        for uid in uids:
            size = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0))
            if part and total + size > _MAX_BATCH_BYTES:
                yield part
                part, total = [], 0
            part.append(uid)
            total += size
        if part:
            yield part

    def _handle_batch(self, client: IMAPClient, uids: list[int], stop: threading.Event) -> int:
        """Store and process each mail of one batch, then move the handled ones by fate."""
        fates: dict[int, str] = {}
        try:
            for uid in self._stored(client, uids, stop):
                fates[uid] = self._process(uid)
        except StoreError:
            self._move(client, fates)  # keep what was done before the failure
            raise
        return self._move(client, fates)

    def _hand_over_batch(
        self, client: IMAPClient, uids: list[int], stop: threading.Event,
    ) -> list[int]:
        """Store each mail of one batch and wake the processors for it."""
        assert self._hand_over is not None
        stored = list(self._stored(client, uids, stop))
        for uid in stored:
            self._hand_over(self._folder.stored[uid].inbox_id)
        return stored

    def _stored(self, client: IMAPClient, uids: list[int], stop: threading.Event,
                ) -> Iterator[int]:
        """Each UID of the batch once its mail is committed; a UID remembered as stored
        is not fetched again."""
        known = self._folder.stored
        missing = [uid for uid in uids if uid not in known]
        fetched = client.fetch(missing, [b"BODY.PEEK[]"]) if missing else {}
        for uid in uids:
            if stop.is_set():
                return
            self._heart.beat()
            item = fetched.pop(uid, None)
            if uid not in known and item is None:
                continue  # expunged by someone else meanwhile
            if item is not None:
                self._store(uid, item[_BODY])
            yield uid

    def _store(self, uid: int, raw: bytes) -> None:
        message_id = raw_message_id(raw)
        try:
            received: Received = self._receiver.receive(
                raw, transport="imap", envelope_to=(self.settings.username,),
                trust_authentication_results=self.settings.trust_authentication_results,
            )
        except Exception as exc:
            raise StoreError(f"mail UID {uid} ({message_id or 'no Message-ID'}): {exc}") from exc
        self._folder.stored[uid] = _Stored(received.inbox_id, message_id)

    def _process(self, uid: int) -> str:
        stored = self._folder.stored[uid]
        try:
            status = self._receiver.process(stored.inbox_id)
        except Exception as exc:
            raise StoreError(
                f"mail UID {uid} ({stored.message_id or 'no Message-ID'}): {exc}") from exc
        self._handled(uid, status)
        return status

    def _handled(self, uid: int, status: str) -> None:
        inbox_id, message_id = self._folder.stored[uid]
        self._log.info("imap mail handled", uid=uid, inbox_id=inbox_id, message_id=message_id,
                       status=status)

    def _await_fates(self, uids: list[int], stop: threading.Event) -> dict[int, str]:
        """The fates of these stored mails, by UID, waited for while one comes at least
        every `fate_wait_seconds`: processors at work are waited for, absent ones are
        not. The others stay in the folder."""
        waiting = {uid: self._folder.stored[uid].inbox_id for uid in uids}
        fates: dict[int, str] = {}
        deadline = time.monotonic() + self._fate_wait_seconds
        pause = 0.01
        while waiting:
            try:
                statuses = self._receiver.statuses(list(waiting.values()))
            except Exception as exc:
                raise StoreError(f"could not read the fate of stored mail: {exc}") from exc
            for uid, inbox_id in list(waiting.items()):
                # A row no longer there was processed long ago and purged since.
                status = statuses.get(inbox_id, PROCESSED)
                if status != RECEIVED:
                    fates[uid] = status
                    del waiting[uid]
                    self._handled(uid, status)
                    deadline = time.monotonic() + self._fate_wait_seconds
            if not waiting or stop.wait(pause) or time.monotonic() >= deadline:
                break
            self._heart.beat()
            pause = min(pause * 2, 0.2)
        if waiting:
            self._say_waiting(frozenset(waiting))
        return fates

    def _say_waiting(self, uids: frozenset[int]) -> None:
        """Log mail left in the folder for its processors when one is new to the wait,
        and then every `waiting_said_every_seconds` (a minute): with no processor
        running anywhere, the wait has no end, and a line at every look would bury the
        log (the backlog metric tells it)."""
        state = self._folder
        now = time.monotonic()
        again = now - state.waiting_said_at >= self._waiting_said_every_seconds
        if not again and uids <= state.waiting_said:
            return
        if again:  # a drain waits for its mail in parts of 500: their union was said
            state.waiting_said, state.waiting_said_at = uids, now
        else:
            state.waiting_said |= uids
        self._log.info("imap mail still being processed, left in the folder",
                       uids=sorted(uids), waiting=len(uids))

    def _move(self, client: IMAPClient, fates: dict[int, str]) -> int:
        """Quarantined mail to the failed folder, the rest to the processed one: MOVE,
        or COPY + \\Deleted + (UID) EXPUNGE where the server has no MOVE."""
        s = self.settings
        moves: dict[str, list[int]] = {s.processed_folder: [], s.failed_folder: []}
        for uid, status in fates.items():
            moves[s.failed_folder if status == QUARANTINED else s.processed_folder].append(uid)
        moved = 0
        for folder, uids in moves.items():
            if not uids:
                continue
            if client.has_capability("MOVE"):
                client.move(uids, folder)
            else:
                client.copy(uids, folder)
                client.delete_messages(uids, silent=True)
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge(uids)
                else:
                    client.expunge()
            for uid in uids:
                self._folder.stored.pop(uid, None)
            moved += len(uids)
        return moved
