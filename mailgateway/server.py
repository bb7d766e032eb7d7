"""`mailgateway serve`: every configured component on one event loop.

Each component has `async run(stopping)`: it works until the event is set,
then finishes what is in flight and returns. SIGTERM and SIGINT set it, so
a stop is clean: no new sessions, in-flight mail committed, exit 0. The
components that do blocking work (the processor, the dispatcher, the IMAP
pollers) run it through the one wake/stop loop, `mailgateway.passes.Passes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol

import structlog

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.migrate import upgrade
from mailgateway.passes import Passes
from mailgateway.pipeline.rules import RuleBook
from mailgateway.service import Gateway

log = structlog.get_logger()


class Component(Protocol):
    async def run(self, stopping: asyncio.Event) -> None: ...


class Processor:
    """Runs the pipeline on stored mail, off the event loop, one mail at a time.

    Transports wake it after each commit; it also looks for leftovers at start
    and every `idle_seconds`, so mail stored before a crash is processed once.
    """

    def __init__(
        self, gateway: Gateway, idle_seconds: float = 5.0,
        on_processed: Callable[[], None] | None = None,
    ) -> None:
        """`on_processed` is called on the processor's thread after a pass that processed
        mail (which may have queued some), so it must be thread-safe, as `Dispatcher.wake` is."""
        self.gateway = gateway
        self.on_processed = on_processed
        self._passes = Passes("processor", self.process_pending, interval=idle_seconds)

    def wake(self, _inbox_id: int | None = None) -> None:
        """Thread-safe: called by transports right after a commit."""
        self._passes.wake()

    def process_pending(self) -> None:
        """One pass: process every mail waiting, then call `on_processed` if any was."""
        if self.gateway.process_pending() and self.on_processed is not None:
            self.on_processed()

    async def run(self, stopping: asyncio.Event) -> None:
        await self._passes.run(stopping)


class RuleWatcher:
    """Keeps the routing rules in force current: the rule files are looked at every
    second (a change is read at once, a broken file refused and said), and read again
    on SIGHUP."""

    def __init__(self, rules: RuleBook) -> None:
        self._rules = rules
        self._reload = False
        self._passes = Passes("rules", self._look, interval=1.0)

    def _look(self) -> None:
        if self._reload:
            self._reload = False
            self._rules.reload()
        self._rules.current()

    def _hangup(self) -> None:
        self._reload = True
        self._passes.wake()

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no SIGHUP here
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
        await self._passes.run(stopping)


def build_components(settings: Settings, gateway: Gateway, clock: Clock) -> list[Component]:
    from mailgateway.outbound.dispatch import Dispatcher

    dispatcher = Dispatcher(gateway.sessions, settings, clock)
    processor = Processor(gateway, on_processed=dispatcher.wake)
    components: list[Component] = [processor, dispatcher, RuleWatcher(gateway.rules)]
    if settings.smtp.enabled:
        from mailgateway.ingest.smtp import SmtpListener

        components.append(SmtpListener(settings.smtp, gateway, on_stored=processor.wake))
    if settings.scheduler.enabled:
        from mailgateway.scheduler import Scheduler

        components.append(Scheduler(gateway.engine, settings, clock))
    if settings.imap:
        from mailgateway.ingest.imap import ImapPoller

        components += [ImapPoller(mailbox, gateway) for mailbox in settings.imap]
    return components


async def run_components(components: list[Component], stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    tasks = [asyncio.create_task(c.run(stopping), name=type(c).__name__) for c in components]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = [t for t in done if not t.cancelled() and t.exception() is not None]
    if failed:
        stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise failed[0].exception()  # type: ignore[misc]


def serve(settings: Settings, clock: Clock) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop."""
    gateway = Gateway(settings, clock)
    try:
        upgrade(gateway.engine)
        components = build_components(settings, gateway, clock)
        log.info("serving", components=[type(c).__name__ for c in components])
        asyncio.run(run_components(components, asyncio.Event()))
        log.info("stopped cleanly")
        return 0
    finally:
        gateway.close()
