"""`mailgateway serve`: the configured components, in this process and its workers.

Each component has `async run(stopping)`: it works until the event is set,
then finishes what is in flight and returns. SIGTERM and SIGINT set it, so
a stop is clean: no new sessions, in-flight mail committed, exit 0. The
components that do blocking work (the processor, the dispatcher, the IMAP
pollers, the scheduler) run it through the one wake/stop loop,
`mailgateway.passes.Passes`.

`--only` chooses the components (several units may split them);
`--workers N` moves processing to N worker processes (`mailgateway.workers`),
so the listener's process does nothing but take mail and answer 250, and the
IMAP pollers hand their mail over too.
Any number of `serve`, on any number of hosts, may share one PostgreSQL:
each job that only one may do at a time has a `Leadership`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from mailgateway.clock import Clock
from mailgateway.config import Settings, load_settings
from mailgateway.db.hosts import HostClaim
from mailgateway.db.migrate import upgrade
from mailgateway.errors import ConfigError
from mailgateway.log import configure_logging
from mailgateway.passes import Passes
from mailgateway.pipeline.rules import RuleBook
from mailgateway.service import Gateway
from mailgateway.signing_secret import with_secret
from mailgateway.telemetry import heartbeat

log = structlog.get_logger()

COMPONENTS = ("smtp", "imap", "processor", "dispatcher", "scheduler")


class Component(Protocol):
    async def run(self, stopping: asyncio.Event) -> None: ...


@dataclass(frozen=True)
class ServeOptions:
    """What `serve` runs here, beyond what the configuration enables."""

    only: frozenset[str] = frozenset(COMPONENTS)
    workers: int = 0  # worker processes for processing; 0: in this process
    # How to start a worker: the command line up to `serve`'s own arguments.
    worker_command: tuple[str, ...] = ()
    # Set in a worker: (k, n), its share of the mail on SQLite; it talks to its parent.
    share: tuple[int, int] | None = None
    config_path: str | None = None  # read again on SIGHUP
    processor_idle_seconds: float = 5.0
    metrics_listen: str | None = None  # overrides [metrics] listen
    extra: Sequence[Component] = field(default_factory=tuple)


def parse_only(text: str) -> frozenset[str]:
    """`smtp,imap` → the set; an unknown name is a user's mistake, said in one line."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - set(COMPONENTS)
    if not names or unknown:
        raise ConfigError(f"--only takes a comma-separated list of {', '.join(COMPONENTS)}; "
                          f"not {text!r}.")
    return names


def default_workers() -> int:
    """One processing process per core beyond the first."""
    return max(0, (os.cpu_count() or 1) - 1)


class Processor:
    """Runs the pipeline on stored mail, off the event loop, one mail at a time.

    Transports wake it after each commit; it also looks for leftovers at start
    and every `idle_seconds`, so mail stored before a crash is processed once.
    """

    def __init__(
        self, gateway: Gateway, idle_seconds: float = 5.0,
        on_processed: Callable[[], None] | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """`on_processed` is called on the processor's thread after a pass that processed
        mail (which may have queued some), so it must be thread-safe, as `Dispatcher.wake` is.
        `share`: see `Gateway.process_pending`."""
        self.gateway = gateway
        self.on_processed = on_processed
        self._share = share
        self._passes = Passes("processor", self.process_pending, interval=idle_seconds,
                              stuck_after=120.0)

    def wake(self, _inbox_id: int | None = None) -> None:
        """Thread-safe: called by transports right after a commit."""
        self._passes.wake()

    def process_pending(self) -> None:
        """One pass: process every mail waiting, then call `on_processed` if any was."""
        handled = self.gateway.process_pending(self._share, self._passes.stopping)
        if handled and self.on_processed is not None:
            self.on_processed()

    async def run(self, stopping: asyncio.Event) -> None:
        await self._passes.run(stopping)


class Reloader:
    """SIGHUP and the rule files: the routing rules are looked at every second (a change
    is read at once, a broken file refused and said); on SIGHUP the configuration file
    is read again, its reloadable part (`[log]`) applied, and the rules and the
    templates read afresh. A change elsewhere in the file is logged as waiting for a
    restart; a broken file is refused and the running configuration kept."""

    def __init__(
        self, rules: RuleBook, settings: Settings, config_path: str | None,
        pass_on: Callable[[], None] | None = None,
    ) -> None:
        """`pass_on` tells the worker processes, which reload too."""
        self._rules = rules
        self._settings = settings
        self._config_path = config_path
        self._pass_on = pass_on
        self._passes = Passes("rules", self._rules.current, interval=1.0)

    def hangup(self) -> None:
        """Everything read again at once, on the event loop (a few files: milliseconds),
        so that no mail stored after the signal meets the old rules."""
        if self._pass_on is not None:
            self._pass_on()
        self._reread_configuration()
        self._rules.reload()
        from mailgateway.outbound import render

        render.forget_templates()

    def _reread_configuration(self) -> None:
        try:
            # With no secret in the file, the one generated into data_dir is in force.
            fresh = with_secret(load_settings(self._config_path))
        except ConfigError as exc:
            log.error("configuration_not_reloaded", error=str(exc))
            return
        configure_logging(fresh.log)
        waiting = [name for name in vars(fresh) if name != "log"
                   and getattr(fresh, name) != getattr(self._settings, name)]
        self._settings = replace(self._settings, log=fresh.log)
        log.info("configuration_reloaded", applied=["log", "rules", "templates"],
                 needs_restart=waiting)

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no SIGHUP here
            loop.add_signal_handler(signal.SIGHUP, self.hangup)
        await self._passes.run(stopping)


class Pulse:
    """The event loop's own heartbeat (a loop blocked by a bug answers no SMTP client),
    and the periodic renewal of this host's claim on a SQLite database."""

    def __init__(self, claim: HostClaim | None, every: float = 1.0) -> None:
        self._claim = claim
        self._every = every
        self.heart = heartbeat("event loop", stuck_after=10.0)

    async def run(self, stopping: asyncio.Event) -> None:
        self.heart.working(True)
        renewed = time.monotonic()
        try:
            while not stopping.is_set():
                self.heart.beat()
                if self._claim is not None and time.monotonic() - renewed > 15:
                    renewed = time.monotonic()
                    await asyncio.to_thread(self._claim.renew)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._every)
        finally:
            self.heart.working(False)


def build_components(
    settings: Settings, gateway: Gateway, clock: Clock,
    options: ServeOptions = ServeOptions(),
) -> list[Component]:
    from mailgateway.outbound.dispatch import Dispatcher

    only = options.only
    components: list[Component] = []
    dispatcher = None
    if "dispatcher" in only:
        dispatcher = Dispatcher(gateway.sessions, settings, clock)
        components.append(dispatcher)
    queued = dispatcher.wake if dispatcher is not None else None
    wake: Callable[[int], None] | None = None
    pass_on: Callable[[], None] | None = None
    if options.share is not None:  # a worker: its parent wakes it and hears of it
        from mailgateway.workers import ParentLink

        processor = Processor(gateway, options.processor_idle_seconds, share=options.share)
        link = ParentLink(processor.wake)
        processor.on_processed = link.queued
        components += [processor, link]
    elif "processor" in only and options.workers > 0:
        from mailgateway.workers import WorkerPool

        pool = WorkerPool(options.worker_command, options.workers, on_queued=queued)
        wake, pass_on = pool.wake, pool.hangup
        components.append(pool)
    elif "processor" in only:
        processor = Processor(gateway, options.processor_idle_seconds, on_processed=queued)
        wake = processor.wake
        components.append(processor)
    components.append(Reloader(gateway.rules, settings, options.config_path, pass_on))
    if settings.smtp.enabled and "smtp" in only:
        from mailgateway.ingest.smtp import SmtpListener

        components.append(SmtpListener(settings.smtp, gateway, on_stored=wake))
    if settings.scheduler.enabled and "scheduler" in only:
        from mailgateway.scheduler import Scheduler

        components.append(Scheduler(gateway.engine, settings, clock))
    if settings.imap and "imap" in only:
        from mailgateway.ingest.imap import ImapPoller, mailbox_name
        from mailgateway.leadership import Leadership

        # Processed where serve processes: by the poller itself in a one-process gateway,
        # else handed over (to the workers, or to another unit that looks by itself).
        processes_here = "processor" in only and options.workers == 0
        hand_over = None if processes_here else (wake or _found_by_its_processor)
        components += [
            ImapPoller(mailbox, gateway, hand_over=hand_over,
                       leadership=Leadership(gateway.engine, f"imap:{mailbox_name(mailbox)}"))
            for mailbox in settings.imap]
    listen = options.metrics_listen if options.metrics_listen is not None \
        else settings.metrics.listen
    if listen and options.share is None:
        from mailgateway.monitoring import MonitoringServer

        components.append(MonitoringServer(listen, gateway))
    components += options.extra
    return components


def _found_by_its_processor(_inbox_id: int) -> None:
    """Stored mail is found by the processor of another unit, which looks every second."""


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


def serve(settings: Settings, clock: Clock, options: ServeOptions = ServeOptions()) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop."""
    gateway = Gateway(settings, clock)
    try:
        claim = None
        if options.share is None:  # the parent has done it for its workers
            upgrade(gateway.engine)
            claim = HostClaim.take(gateway.engine)
        components = build_components(settings, gateway, clock, options)
        if any(isinstance(c, Processor) for c in components):
            gateway.warm_up()  # before the first client's mail, not while it waits
        components.append(Pulse(claim))
        log.info("serving", components=[type(c).__name__ for c in components],
                 workers=options.workers, share=options.share)
        asyncio.run(run_components(components, asyncio.Event()))
        log.info("stopped cleanly")
        return 0
    finally:
        gateway.close()
