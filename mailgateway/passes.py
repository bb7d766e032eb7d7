"""The wake/stop loop of `serve`'s components that do blocking work.

The processor, the outbound dispatcher and the IMAP poller each do their work
in blocking passes: one at start, then one whenever they are woken or their
interval has passed, until the server stops. `Passes` is that loop, written
once:

- a pass runs on a thread of the component's own, never on the event loop
  and never in its default executor, where a long pass (the IMAP poller's
  lasts as long as the process) would hold a slot that others need;
- `wake()` may be called from any thread; a wake during a pass brings the next
  pass at once, and many wakes make one pass;
- once `stopping` is set, `stopping()` turns true for a pass that checks it
  between items, `interrupt` (if given) is called for a pass blocked where no
  flag reaches (a socket), and `run` returns when the pass in flight has ended;
- a pass that raises an `Exception` is logged and tried again next round, so
  a database or a server away for a while stops nothing else; anything else
  it raises (a `KeyboardInterrupt`, say) ends `run` with it;
- its heartbeat (`mailgateway.telemetry`) is busy during a pass and beats at
  each pass's start and end and whenever the pass asks `stopping()`, so a pass
  silent for longer than `stuck_after` seconds shows as stuck in `/healthz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import structlog

from mailgateway.telemetry import heartbeat

__all__ = ["Passes"]


class Passes:
    """Runs `work` on a thread of its own at start, when woken, and `interval` seconds
    after each pass (None: only when woken), until `run`'s `stopping` is set.

    `name` names the thread and the log line of a failed pass (`<name>_pass_failed`).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        *,
        interval: float | None,
        interrupt: Callable[[], None] | None = None,
        heart: str | None = None,
        stuck_after: float = 300.0,
    ) -> None:
        """`heart` names the heartbeat (default: `name`)."""
        self.name = name
        self.heart = heartbeat(heart or name, stuck_after)
        self.interval = interval
        self._work = work
        self._interrupt = interrupt
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None

    def stopping(self) -> bool:
        """True once the server is stopping; safe to call from any thread. Asking is a
        sign of life: the pass is between two items."""
        self.heart.beat()
        return self._stop.is_set()

    def wake(self) -> None:
        """Ask for a pass as soon as the current one, if any, has ended; safe from any thread.

        Before `run` has started (or after it returned) there is nothing to wake:
        `run` starts with a pass anyway.
        """
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            with contextlib.suppress(RuntimeError):  # closed in between: serve is ending
                loop.call_soon_threadsafe(woken.set)

    async def run(self, stopping: asyncio.Event) -> None:
        """Pass after pass until `stopping` is set; returns once the pass in flight has ended."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        self._stop.clear()
        self._loop, self._woken = loop, woken
        thread = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        watcher = asyncio.create_task(self._stop_when_set(stopping, woken))
        try:
            while not stopping.is_set():
                woken.clear()
                await self._one_pass(loop, thread)
                if not stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), self.interval)
        finally:
            self._loop = self._woken = None
            watcher.cancel()
            if not self._stop.is_set():  # ended otherwise (cancelled, a pass raised):
                self._request_stop()  # a pass still running must not go on forever
            thread.shutdown(wait=False)

    async def _one_pass(self, loop: asyncio.AbstractEventLoop, thread: ThreadPoolExecutor) -> None:
        # Like asyncio.to_thread, each pass sees a copy of the loop's context variables,
        # so what one pass binds for its log lines does not stick to the next.
        context = contextvars.copy_context()
        self.heart.working(True)
        try:
            await loop.run_in_executor(thread, context.run, self._work)
        except Exception:
            structlog.get_logger(__name__).exception(f"{self.name}_pass_failed")
        finally:
            self.heart.working(False)

    async def _stop_when_set(self, stopping: asyncio.Event, woken: asyncio.Event) -> None:
        await stopping.wait()
        woken.set()  # ends the wait between passes at once
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop.set()
        if self._interrupt is not None:
            self._interrupt()
