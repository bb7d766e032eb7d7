"""A real SMTP server on loopback that records what it is sent: the relay in tests.

It runs aiosmtpd in its own thread on a free 127.0.0.1 port, keeps every
accepted envelope with its raw bytes, answers 4xx/5xx on demand (at RCPT or
at DATA, for a number of transactions or until told otherwise), and can be
stopped and started again on the same port to play a relay that goes down
and comes back.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)


@dataclass
class _Refusal:
    answer: str
    stage: str  # "RCPT" or "DATA"
    remaining: int | None  # transactions still to refuse; None: until cleared
    recipient: str | None = None


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        answer = self._sink._refusal("RCPT", address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = self._sink._refusal("DATA", None)
        if answer:
            return answer
        self._sink._record(Delivery(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"


class SmtpSink:
    """Start with `start()` (or as a context manager); `deliveries` holds what was accepted."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._refusals: list[_Refusal] = []
        self._controller: Controller | None = None

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        if self._controller is None:
            controller = Controller(
                _Handler(self), hostname=self.host, port=self.port, ready_timeout=5.0
            )
            controller.start()
            self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------

    def refuse(
        self,
        answer: str,
        *,
        at: str = "DATA",
        times: int | None = None,
        recipient: str | None = None,
    ) -> None:
        """Answer `answer` (e.g. "451 4.3.0 Try later") at RCPT or DATA, `times` times
        or until `accept_all()`; at RCPT only for `recipient` when given."""
        with self._lock:
            self._refusals.append(_Refusal(answer, at.upper(), times, recipient))

    def accept_all(self) -> None:
        with self._lock:
            self._refusals.clear()

    def _refusal(self, stage: str, address: str | None) -> str | None:
        with self._lock:
            for refusal in self._refusals:
                if refusal.stage != stage:
                    continue
                if refusal.recipient and (address or "").lower() != refusal.recipient.lower():
                    continue
                if refusal.remaining is not None:
                    refusal.remaining -= 1
                    if refusal.remaining <= 0:
                        self._refusals.remove(refusal)
                return refusal.answer
        return None

    # -- what arrived --------------------------------------------------------------

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def clear(self) -> None:
        with self._lock:
            self._deliveries.clear()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A running sink, stopped after the test."""
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
