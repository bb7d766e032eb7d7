"""How a rendered mail leaves the gateway: an SMTP relay or a local Maildir.

Both transports share one small protocol so the dispatcher never knows which
one it drives. Library exceptions are mapped here, where they enter our code,
into the two kinds the dispatcher acts on:

* `TemporaryError` — try again later: a 4xx answer, the relay unreachable,
  the connection lost, a timeout. `RelayUnavailableError` (a subclass) says
  the failure is the relay's, not the mail's, so the rest of a batch can wait
  instead of failing one by one.
* `PermanentError` — a 5xx answer to the mail itself (sender, every recipient
  or the data refused); the message carries the server's answer.

Failures before the first mail command (connect, TLS, EHLO, AUTH) are never
permanent for the mail: a wrong password or certificate is an operator's
problem, and parking every queued mail because of it would lose the queue.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import mailbox
import re
import smtplib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from mailgateway.config import OutboundSettings, Settings
from mailgateway.errors import PermanentError, TemporaryError
from mailgateway.outbound.mime import Message


def _log(**values: object) -> structlog.typing.FilteringBoundLogger:
    """A logger bound at call time, so the configuration made at start-up applies."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)
    return logger.bind(transport="outbound", **values)


class RelayUnavailableError(TemporaryError):
    """The relay could not be reached or refused the session: no mail can go now."""


class MailTransport(Protocol):
    def send(self, mail_from: str, recipients: list[str], raw: bytes | Message) -> None:
        """Deliver `raw` to `recipients`; raises TemporaryError or PermanentError.
        A `Message` with stored files is written out as it is read, a slice at a time."""
        ...

    def close(self) -> None:
        """Release any connection kept between sends (called after each batch)."""
        ...


def _answer(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return f"{code} {' '.join(text.split())}"


def _is_temporary(code: int) -> bool:
    return 400 <= code < 500


class SmtpTransport:
    """Sends over SMTP sessions kept open between mails, one per sending thread.

    A session is opened on a thread's first send and kept until `close()` or
    an error, so a batch costs one connect/EHLO/AUTH per thread instead of
    one per mail; the dispatcher's threads share one transport.
    """

    def __init__(self, settings: OutboundSettings, local_hostname: str | None = None) -> None:
        self._settings = settings
        self._local_hostname = local_hostname
        self._lock = threading.Lock()
        self._sessions: dict[int, smtplib.SMTP] = {}

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        context = ssl.create_default_context()
        try:
            connection: smtplib.SMTP
            if s.tls:
                connection = smtplib.SMTP_SSL(
                    s.host,
                    s.port,
                    local_hostname=self._local_hostname,
                    timeout=s.timeout_seconds,
                    context=context,
                )
            else:
                connection = smtplib.SMTP(
                    s.host, s.port, local_hostname=self._local_hostname, timeout=s.timeout_seconds
                )
            try:
                connection.ehlo()
                if s.starttls:
                    connection.starttls(context=context)
                    connection.ehlo()
                if s.username:
                    connection.login(s.username, s.resolved_password())
            except BaseException:
                connection.close()
                raise
        except smtplib.SMTPResponseException as exc:
            answer = _answer(exc.smtp_code, exc.smtp_error)
            raise RelayUnavailableError(
                f"relay {s.host}:{s.port} refused the session: {answer}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise RelayUnavailableError(f"relay {s.host}:{s.port} unreachable: {exc}") from exc
        return connection

    def _session(self) -> smtplib.SMTP:
        key = threading.get_ident()
        with self._lock:
            connection = self._sessions.get(key)
        if connection is None:
            connection = self._connect()
            with self._lock:
                self._sessions[key] = connection
        return connection

    def _drop(self, connection: smtplib.SMTP, *, polite: bool) -> None:
        """Forget this thread's session; QUIT it when it may still be usable."""
        with self._lock:
            self._sessions.pop(threading.get_ident(), None)
        _quit(connection, polite=polite)

    def send(self, mail_from: str, recipients: list[str], raw: bytes | Message) -> None:
        connection = self._session()
        try:
            if isinstance(raw, Message):
                refused = _sendmail_streamed(connection, mail_from, recipients, raw)
            else:
                refused = connection.sendmail(mail_from, recipients, raw)
        except smtplib.SMTPRecipientsRefused as exc:
            # smtplib has reset the transaction; the session stays usable if still connected.
            if connection.sock is None:
                self._drop(connection, polite=False)
            answers = "; ".join(
                f"{rcpt}: {_answer(code, msg)}" for rcpt, (code, msg) in exc.recipients.items()
            )
            if all(_is_temporary(code) for code, _ in exc.recipients.values()):
                raise TemporaryError(f"recipients deferred: {answers}") from exc
            raise PermanentError(f"recipients refused: {answers}") from exc
        except smtplib.SMTPResponseException as exc:
            self._drop(connection, polite=True)
            answer = _answer(exc.smtp_code, exc.smtp_error)
            if _is_temporary(exc.smtp_code):
                raise TemporaryError(f"relay deferred the mail: {answer}") from exc
            raise PermanentError(f"relay refused the mail: {answer}") from exc
        except (OSError, smtplib.SMTPException) as exc:
            self._drop(connection, polite=False)
            raise TemporaryError(f"connection to the relay lost: {exc}") from exc
        if refused:
            # Delivered to the others; a per-recipient retry would need a row per recipient.
            _log().warning(
                "recipients_refused",
                refused={rcpt: _answer(code, msg) for rcpt, (code, msg) in refused.items()},
            )

    def close(self) -> None:
        """QUIT every session; call when no thread is sending."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for connection in sessions:
            _quit(connection, polite=True)


_LEADING_DOT = re.compile(rb"(?m)^\.")


def _sendmail_streamed(
    connection: smtplib.SMTP, mail_from: str, recipients: list[str], message: Message
) -> dict[str, tuple[int, bytes]]:
    """`smtplib.SMTP.sendmail`, with the data written a chunk at a time (dot-stuffed:
    every chunk ends at a line end) instead of from one bytes object. Raises the same
    exceptions, so `send` maps the answers alike."""
    connection.ehlo_or_helo_if_needed()
    code, answer = connection.mail(mail_from)
    if code != 250:
        _reset(connection, code)
        raise smtplib.SMTPSenderRefused(code, answer, mail_from)
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in recipients:
        code, answer = connection.rcpt(recipient)
        if code not in (250, 251):
            refused[recipient] = (code, answer)
        if code == 421:
            connection.close()
            raise smtplib.SMTPRecipientsRefused(refused)
    if len(refused) == len(recipients):
        _reset(connection, 0)
        raise smtplib.SMTPRecipientsRefused(refused)
    code, answer = connection.docmd("data")
    if code != 354:
        _reset(connection, code)
        raise smtplib.SMTPDataError(code, answer)
    for chunk in message.chunks():
        connection.send(_LEADING_DOT.sub(b"..", chunk))
    connection.send(b".\r\n")
    code, answer = connection.getreply()
    if code != 250:
        _reset(connection, code)
        raise smtplib.SMTPDataError(code, answer)
    return refused


def _reset(connection: smtplib.SMTP, code: int) -> None:
    """After a refusal: RSET, or close on 421 (the server is going away)."""
    if code == 421:
        connection.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        connection.rset()


class _ChunkReader(io.RawIOBase):
    """A message's chunks as a binary file, for `mailbox` to copy a line at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _quit(connection: smtplib.SMTP, *, polite: bool) -> None:
    try:
        if polite:
            connection.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        connection.close()


class MaildirTransport:
    """Writes each mail into a local Maildir: the embedded default, and a dry run.

    The envelope is kept in `Return-Path` and `X-Envelope-To` lines on top,
    as a delivery agent would, so what would have been sent stays readable.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._maildir: mailbox.Maildir | None = None
        self._lock = threading.Lock()  # Maildir's unique names are not unique across threads

    def send(self, mail_from: str, recipients: list[str], raw: bytes | Message) -> None:
        envelope = f"Return-Path: <{mail_from}>\nX-Envelope-To: {', '.join(recipients)}\n"
        with self._lock:
            try:
                if self._maildir is None:
                    self._path.parent.mkdir(parents=True, exist_ok=True)
                    self._maildir = mailbox.Maildir(self._path, create=True)
                if isinstance(raw, Message):  # mailbox writes it a line at a time, as LF
                    chunks = itertools.chain([envelope.encode()], raw.chunks())
                    self._maildir.add(io.BufferedReader(_ChunkReader(chunks)))
                else:
                    self._maildir.add(envelope.encode() + raw.replace(b"\r\n", b"\n"))
            except OSError as exc:
                # A full disk or a wrong path fails every mail alike: like a relay that is down.
                raise RelayUnavailableError(
                    f"cannot write to Maildir {self._path}: {exc}"
                ) from exc

    def close(self) -> None:
        self._maildir = None


def build_transport(settings: Settings) -> MailTransport:
    """The transport `[outbound]` configures."""
    outbound = settings.outbound
    if outbound.transport == "smtp":
        return SmtpTransport(outbound, local_hostname=settings.helpdesk.domains[0])
    return MaildirTransport(outbound.maildir)
