"""The built-in SMTP/LMTP listener: accept mail for the helpdesk's domains, commit, then ACK.

The listener is a transport and nothing more: `handle_RCPT` decides whether a
recipient is ours (we are never a relay), `handle_DATA` hands the raw bytes to
the `Receiver` and answers `250` only once the inbox row is committed. Any
failure to commit answers `451` so the sending MTA keeps the mail and retries:
a mail is never acknowledged and then lost. Processing happens elsewhere; the
listener only pokes it through `on_stored` after the commit.

LMTP (RFC 2033) is the same conversation with `LHLO` and one reply per
accepted recipient after DATA, so it is the same handler on aiosmtpd's LMTP
protocol class. The one commit per message serves every recipient, hence the
same status repeated for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgateway.config import SmtpSettings
from mailgateway.errors import ConfigError, TemporaryError
from mailgateway.ingest import Received, Receiver
from mailgateway.pipeline.prepare import raw_message_id

_IDENT = "mailgateway"
_TEMPFAIL = "451 4.3.0 Mail not stored, try again later"
_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
_BUSY = "421 4.7.0 Too many connections, try again later"
_BUSY_CLIENT = "421 4.7.0 Too many connections from your address, try again later"
_DATA_TOO_LONG = "421 4.4.2 DATA took too long, closing"
# Commits run on threads of their own, so that no other work on the event loop's
# default executor ever queues in front of an ACK. Eight covers the usual
# parallelism of a sending MTA.
_COMMIT_THREADS = 8
# Zero in a limit means "no limit", as it does for smtp.max_message_bytes.
_FOREVER_SECONDS = 365 * 86_400.0


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    """A server-side TLS context for STARTTLS, or None when no certificate is configured."""
    if not settings.tls_cert:
        if settings.require_starttls:
            raise ConfigError("smtp.require_starttls needs smtp.tls_cert and smtp.tls_key.")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"smtp.tls_cert/smtp.tls_key cannot be loaded ({settings.tls_cert}): {exc}."
        ) from None
    return context


class _Handler:
    """aiosmtpd hooks: recipient check and commit, shared by every session of a listener."""

    def __init__(self, listener: SmtpListener) -> None:
        self._listener = listener
        self._receiver = listener.receiver
        self._settings = listener.settings
        self._log = listener.log

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Accept only the helpdesk's own domains: an open relay is never an option."""
        limit = self._settings.max_recipients
        if limit and len(envelope.rcpt_tos) >= limit:
            return "452 4.5.3 Too many recipients"
        log = self._log.bind(peer=session.peer, rcpt=address)
        try:
            served = self._receiver.accepts_recipient(address)
        except Exception:
            log.exception("smtp.rcpt_check_failed")
            return "451 4.3.0 Recipient check failed, try again later"
        if not served:
            log.info("smtp.rcpt_refused")
            return f"550 5.1.1 <{address}>: recipient not served here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Commit the mail, then acknowledge; a failure answers 451 so the sender retries.
        A sender the desk refuses is told so now, by a 550 its own server reports."""
        raw = envelope.original_content or b""
        log = self._log.bind(message_id=raw_message_id(raw), peer=session.peer)
        started = time.perf_counter()
        commit = self._listener.commit(raw, envelope.mail_from, tuple(envelope.rcpt_tos))
        try:
            # Shielded: a client hanging up mid-commit must not stop the commit; the
            # mail is kept, the processor still woken, and the client's retry deduplicated.
            received = await asyncio.shield(commit)
        except asyncio.CancelledError:
            commit.add_done_callback(self._listener.wake_when_stored)
            raise
        except TemporaryError as exc:
            log.warning("smtp.store_failed", error=str(exc))
            return self._status(envelope, _TEMPFAIL)
        except Exception:
            log.exception("smtp.store_failed")
            return self._status(envelope, _TEMPFAIL)
        if isinstance(received, str):
            log.info("smtp.refused", reason=received)
            return received
        log.info(
            "smtp.stored",
            inbox_id=received.inbox_id,
            duplicate=received.duplicate,
            size=len(raw),
            recipients=len(envelope.rcpt_tos),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        # Runs once the 250 below is written: waking the processor never delays the ACK.
        asyncio.get_running_loop().call_soon(self._listener.wake, received.inbox_id)
        return self._status(envelope, "250 2.0.0 OK stored")

    async def handle_exception(self, error: Exception) -> str:
        """A bug in a command must cost the client a retry, never the listener."""
        self._log.exception("smtp.session_error", error=repr(error))
        return "451 4.3.0 Temporary server error, try again later"

    def _status(self, envelope: Envelope, status: str) -> str:
        """One reply per accepted recipient in LMTP (RFC 2033 §4.2), one reply in SMTP."""
        if not self._settings.lmtp:
            return status
        code, _, text = status.partition(" ")
        return "\r\n".join(f"{code} {text} <{rcpt}>" for rcpt in envelope.rcpt_tos)


class _TrackedSMTP(SMTP):
    """An SMTP session that the listener can count and close when it shuts down."""

    # RFC 5321 caps lines at 1000 octets, but mail clients still send longer HTML
    # lines; refusing them would bounce a customer's request, so accept up to 64 KiB
    # like the MTAs in front of us do. Commands keep aiosmtpd's own 512-octet cap.
    line_length_limit = 65_536

    def __init__(self, handler: _Handler, listener: SmtpListener, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._listener = listener
        self._in_data = False
        self.client = ""  # the peer's address, once connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if not self._listener.admit(self, str(peer[0]) if peer else ""):
            self.hang_up(_BUSY_CLIENT)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._listener.forget(self)

    def data_received(self, data: bytes) -> None:
        """In DATA, the idle timeout runs from the last bytes received (between commands,
        from the last command): a slow upload goes on, a stalled one is closed."""
        if self._in_data:
            self._reset_timeout()
        super().data_received(data)

    @property
    def in_transaction(self) -> bool:
        """True between MAIL FROM and the end of DATA: closing now would lose the client's work."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def hang_up(self, status: str | None) -> None:
        """Close the connection, first telling the client why when a status is given."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if status is not None and isinstance(transport, asyncio.WriteTransport):
            transport.write(status.encode("ascii") + b"\r\n")
        transport.close()

    async def smtp_MAIL(self, arg: str | None) -> None:
        """No new transaction once the listener is shutting down."""
        if self._listener.draining:
            self.hang_up(_SHUTTING_DOWN)
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA within `data_timeout_seconds`; after the reply, a draining listener lets
        the session go.

        A plain close rather than a 421: a client that has its 250 treats the
        lost connection as the end of a delivered session.
        """
        limit = self._listener.settings.data_timeout_seconds
        deadline = self.loop.call_later(limit, self.hang_up, _DATA_TOO_LONG) if limit else None
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False
            if deadline is not None:
                deadline.cancel()
        if self._listener.draining:
            self.hang_up(None)
        self._listener.notify()


class _TrackedLMTP(_TrackedSMTP, LMTP):
    """The same session speaking LMTP (LHLO instead of HELO/EHLO)."""


class _Refusal(asyncio.Protocol):
    """Answers 421 and hangs up: the connection is over the listener's session limit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(_BUSY.encode("ascii") + b"\r\n")
        transport.close()


class SmtpListener:
    """The SMTP (or LMTP) server component that `serve` runs beside the others.

    A zero in `max_message_bytes`, `max_sessions`, `max_recipients` or
    `idle_timeout_seconds` lifts that limit.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        receiver: Receiver,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.receiver = receiver
        self._on_stored = on_stored
        self._transport_name = "lmtp" if settings.lmtp else "smtp"
        self.log = structlog.get_logger().bind(transport=self._transport_name)
        self._tls = _tls_context(settings)
        self._hostname = socket.gethostname()
        self._handler = _Handler(self)
        self._sessions: set[asyncio.BaseProtocol] = set()
        self._clients: Counter[str] = Counter()
        self._commits: set[asyncio.Task[Received | str]] = set()
        self._committers: ThreadPoolExecutor | None = None
        self._changed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._port = settings.port
        self.draining = False

    @property
    def port(self) -> int:
        """The bound port (the configured one may be 0: any free port, as in tests)."""
        return self._port

    @property
    def serving(self) -> bool:
        """True while the socket is bound and accepting connections."""
        return self._server is not None and self._server.is_serving()

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve until `stopping` is set, then drain in-flight sessions and return."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.draining = False
        self._committers = ThreadPoolExecutor(
            _COMMIT_THREADS, thread_name_prefix="smtp-commit"
        )
        try:
            server = await loop.create_server(
                lambda: self._make_protocol(loop),
                self.settings.host,
                self.settings.port,
                reuse_address=True,
            )
        except OSError as exc:
            self._committers.shutdown(wait=False)
            raise ConfigError(
                f"smtp.host/smtp.port {self.settings.host}:{self.settings.port} cannot be "
                f"listened on: {exc.strerror or exc}."
            ) from None
        # The port first: `serving` turns true with `_server`, and callers then read it.
        self._port = server.sockets[0].getsockname()[1]
        self._server = server
        self.log.info(
            "smtp.listening", host=self.settings.host, port=self._port, tls=self._tls is not None
        )
        try:
            await stopping.wait()
        finally:
            server.close()
            await self._drain(loop)
            await server.wait_closed()
            # A commit still running past the grace period finishes on its own
            # thread (the interpreter waits for it at exit); its client was told 421.
            self._committers.shutdown(wait=False)
            self.log.info("smtp.stopped")

    def commit(
        self, raw: bytes, mail_from: str | None, rcpt_tos: tuple[str, ...]
    ) -> asyncio.Task[Received | str]:
        """Store one mail in a worker thread, unless it is refused (the 550 to answer);
        the task outlives the session that started it."""
        task = asyncio.get_running_loop().create_task(self._store(raw, mail_from, rcpt_tos))
        self._commits.add(task)
        task.add_done_callback(self._commit_done)
        return task

    async def _store(
        self, raw: bytes, mail_from: str | None, rcpt_tos: tuple[str, ...]
    ) -> Received | str:
        # "<>" is the null reverse-path of bounces and DSNs: pass it on as "".
        envelope_from = "" if mail_from in (None, "<>") else mail_from
        receive = partial(self._refuse_or_receive, raw, envelope_from, rcpt_tos)
        return await asyncio.get_running_loop().run_in_executor(self._committers, receive)

    def _refuse_or_receive(
        self, raw: bytes, envelope_from: str, rcpt_tos: tuple[str, ...]
    ) -> Received | str:
        """On a commit thread: the receiver's reason to refuse the mail now, or its commit.
        Never refused behind an MTA: over LMTP a refusal would make that MTA mail a
        bounce to a sender that may be forged."""
        if not self.settings.lmtp:
            try:
                refusal = self.receiver.refusal(raw, envelope_from)
            except Exception:  # the pipeline decides later, as it would over IMAP
                self.log.exception("smtp.refusal_check_failed")
                refusal = None
            if refusal is not None:
                return refusal
        return self.receiver.receive(
            raw, transport=self._transport_name, envelope_from=envelope_from,
            envelope_to=rcpt_tos,
            trust_authentication_results=self.settings.trust_authentication_results)

    def wake(self, inbox_id: int) -> None:
        """Tell the processor a mail is waiting; its failure must not reach the session."""
        if self._on_stored is None:
            return
        try:
            self._on_stored(inbox_id)
        except Exception:
            self.log.exception("smtp.on_stored_failed", inbox_id=inbox_id)

    def wake_when_stored(self, task: asyncio.Task[Received | str]) -> None:
        """For a commit whose client hung up: the mail is stored all the same, so process it."""
        if task.cancelled() or task.exception() is not None or isinstance(task.result(), str):
            return
        received = task.result()
        assert not isinstance(received, str)
        self.log.info("smtp.stored_after_disconnect", inbox_id=received.inbox_id)
        self.wake(received.inbox_id)

    def _commit_done(self, task: asyncio.Task[Received | str]) -> None:
        self._commits.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; the session that awaited it logged it
        self.notify()

    def admit(self, session: _TrackedSMTP, client: str) -> bool:
        """Count a new session against its client's address; False when that address
        has `max_sessions_per_client` already: one sender cannot take every slot."""
        limit = self.settings.max_sessions_per_client
        if limit and self._clients[client] >= limit:
            self.log.warning("smtp.client_refused", client=client,
                             sessions=self._clients[client])
            return False
        session.client = client
        self._clients[client] += 1
        return True

    def forget(self, session: asyncio.BaseProtocol) -> None:
        """A session ended; free its slot."""
        if session in self._sessions and isinstance(session, _TrackedSMTP) and session.client:
            self._clients[session.client] -= 1
            if not self._clients[session.client]:
                del self._clients[session.client]
        self._sessions.discard(session)
        self.notify()

    def notify(self) -> None:
        """Something the drain waits for may have changed."""
        if self._changed is not None:
            self._changed.set()

    def _make_protocol(self, loop: asyncio.AbstractEventLoop) -> asyncio.BaseProtocol:
        limit = self.settings.max_sessions
        if self.draining or (limit and len(self._sessions) >= limit):
            self.log.warning("smtp.session_refused", sessions=len(self._sessions))
            return _Refusal()
        cls = _TrackedLMTP if self.settings.lmtp else _TrackedSMTP
        session = cls(
            self._handler,
            self,
            data_size_limit=self.settings.max_message_bytes or None,
            enable_SMTPUTF8=True,
            hostname=self._hostname,
            ident=_IDENT,
            tls_context=self._tls,
            require_starttls=self.settings.require_starttls,
            timeout=float(self.settings.idle_timeout_seconds or _FOREVER_SECONDS),
            loop=loop,
        )
        self._sessions.add(session)
        return session

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let transactions in flight finish (bounded by the grace period), close the rest."""
        self.draining = True
        deadline = loop.time() + self.settings.shutdown_grace_seconds
        assert self._changed is not None
        while True:
            self._changed.clear()
            for session in list(self._sessions):
                if isinstance(session, _TrackedSMTP) and not session.in_transaction:
                    session.hang_up(_SHUTTING_DOWN)
            remaining = deadline - loop.time()
            if not (self._sessions or self._commits) or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
        for session in list(self._sessions):
            if isinstance(session, _TrackedSMTP):
                peer = session.session.peer if session.session else None
                self.log.warning("smtp.session_aborted", peer=peer)
                session.hang_up(_SHUTTING_DOWN)
        # Let the transports' close callbacks run before the loop goes away.
        await asyncio.sleep(0)
