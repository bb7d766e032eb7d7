"""`serve --workers N`: processing in N processes of its own, beside the listener's.

Parsing and deciding hold Python's interpreter lock; in the listener's
process they would delay every 250. So the parent starts N workers, each
`serve --only processor` with a share of the mail (`--share k/n`), and
talks to them over their standard streams, one line per message:

- parent → worker, on stdin: `wake` when mail was stored; the end of stdin
  means the parent is gone, and the worker stops;
- worker → parent, on stdout: `queued` after a pass that processed mail
  (the parent's dispatcher is woken), `processed <fate> <seconds>` for each
  mail (the parent counts it for `/metrics`), `beat <stuck>` every second
  (the parent's `/healthz` shows each worker).

A worker that dies is started again after a second; its mail is still in
the inbox, and on PostgreSQL its claim ended with its connection. One that
dies before it says a word (a broken configuration file, say) waits twice as
long each time, up to half a minute, and shows as stuck in `/healthz` until
a worker of its share speaks again: on SQLite no other process takes its mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import structlog

from mailgateway.telemetry import TALLY, heartbeat, heartbeats

log = structlog.get_logger(__name__)

_RESTART_SECONDS = 1.0
_RESTART_AT_MOST_SECONDS = 30.0
_STOP_GRACE_SECONDS = 30.0


class _Worker:
    def __init__(self, index: int, stuck_after: float) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.heart = heartbeat(f"worker {index}", stuck_after=stuck_after)
        self.spoken = threading.Event()  # the running process has said something: it is up


class WorkerPool:
    """The parent's side: starts, wakes, hears and restarts the workers."""

    def __init__(
        self, command: Sequence[str], count: int,
        on_queued: Callable[[], None] | None = None, *, stuck_after: float = 10.0,
        restart_after: float = _RESTART_SECONDS,
    ) -> None:
        self._command = tuple(command)
        self._restart_after = restart_after
        self._workers = [_Worker(k, stuck_after) for k in range(count)]
        self._on_queued = on_queued
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False

    def ready(self) -> bool:
        """True once every worker is up (it has spoken since it was started)."""
        return all(w.spoken.is_set() for w in self._workers)

    def wake(self, _inbox_id: int | None = None) -> None:
        """Tell every worker mail is waiting; safe from any thread, many wakes make one."""
        loop = self._loop
        if loop is None or self._wake_scheduled:
            return
        self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: serve is ending
            loop.call_soon_threadsafe(self._wake_all)

    def hangup(self) -> None:
        """Pass SIGHUP on to every worker: they read the configuration, rules and
        templates again too."""
        for worker in self._workers:
            process = worker.process
            # One that has not spoken yet may not handle SIGHUP yet (it would end it);
            # it reads everything afresh as it starts anyway.
            if process is not None and process.returncode is None and worker.spoken.is_set():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)

    def _wake_all(self) -> None:
        self._wake_scheduled = False
        for worker in self._workers:
            process = worker.process
            if process is None or process.stdin is None or process.stdin.is_closing():
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                process.stdin.write(b"wake\n")

    async def run(self, stopping: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(self._keep(w, stopping) for w in self._workers))
        finally:
            self._loop = None

    async def _keep(self, worker: _Worker, stopping: asyncio.Event) -> None:
        """Run one worker until `stopping`, starting it again whenever it dies.

        Its heart beats only when it speaks: starting it again is no sign of life."""
        share = f"{worker.index}/{len(self._workers)}"
        pause = self._restart_after
        worker.heart.working(True)
        while not stopping.is_set():
            process = worker.process = await asyncio.create_subprocess_exec(
                *self._command, "--share", share,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            worker.spoken.clear()
            log.info("worker_started", worker=worker.index, pid=process.pid)
            hearing = asyncio.create_task(self._hear(worker, process))
            ended = asyncio.create_task(process.wait())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not ended.done():  # stopping: the end of stdin tells it to finish
                assert process.stdin is not None
                process.stdin.close()
                try:
                    await asyncio.wait_for(asyncio.shield(ended), _STOP_GRACE_SECONDS)
                except TimeoutError:
                    log.warning("worker_killed", worker=worker.index, pid=process.pid)
                    process.kill()
                    await ended
            await hearing
            if stopping.is_set():
                break
            pause = (self._restart_after if worker.spoken.is_set()
                     else min(pause * 2, _RESTART_AT_MOST_SECONDS))
            log.error("worker_died", worker=worker.index, pid=process.pid,
                      returncode=process.returncode, restart_in_seconds=pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
        worker.heart.working(False)

    async def _hear(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            worker.heart.beat()
            if not worker.spoken.is_set():
                worker.spoken.set()
                log.info("worker_ready", worker=worker.index, pid=process.pid)
            words = line.decode("ascii", "replace").split()
            if words == ["queued"] and self._on_queued is not None:
                self._on_queued()
            elif len(words) == 3 and words[0] == "processed":
                with contextlib.suppress(ValueError):  # a stray line is no count
                    TALLY.mail_processed(words[1], float(words[2]))
            elif words == ["beat", "1"]:
                worker.heart.last -= worker.heart.stuck_after + 1  # a stuck worker is stuck


class ParentLink:
    """The worker's side: wakes its processor on `wake`, stops when stdin ends, and
    tells the parent what it did."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._out = threading.Lock()
        TALLY.forward = self._send

    def _send(self, line: str) -> None:
        with self._out:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):  # the parent is gone; stdin ends next
                pass

    def queued(self) -> None:
        self._send("queued")

    def _listen(self, loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
        for line in sys.stdin.buffer:
            if line.strip() == b"wake":
                self._wake()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stopping.set)

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._listen, args=(loop, stopping), name="parent-link",
                         daemon=True).start()
        while not stopping.is_set():
            stuck = any(h.stuck() for h in heartbeats())
            self._send(f"beat {int(stuck)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)
