"""The one wake/stop loop: when passes run, how they stop, what a failing one costs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailgateway.passes import Passes

REQUEST = contextvars.ContextVar[str | None]("REQUEST", default=None)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def scenario(passes: Passes, body: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `passes` and `body` side by side; `body` sets the stop event when done."""

    async def main() -> None:
        stopping = asyncio.Event()
        running = asyncio.create_task(passes.run(stopping))
        await body(stopping)
        await asyncio.wait_for(running, timeout=5)

    asyncio.run(main())


def test_a_pass_at_start_then_one_per_wake_from_any_thread() -> None:
    threads: list[str] = []
    passes = Passes("counter", lambda: threads.append(threading.current_thread().name),
                    interval=None)

    async def body(stopping: asyncio.Event) -> None:
        await until(lambda: len(threads) == 1)
        await asyncio.to_thread(passes.wake)
        await until(lambda: len(threads) == 2)
        await asyncio.sleep(0.05)
        assert len(threads) == 2  # no interval: nothing more until woken
        stopping.set()

    scenario(passes, body)
    assert all(name.startswith("counter") for name in threads)
    passes.wake()  # after run: nothing to wake, and no error


def test_the_interval_brings_the_next_pass_unwoken() -> None:
    count = 0

    def work() -> None:
        nonlocal count
        count += 1

    passes = Passes("ticker", work, interval=0.01)

    async def body(stopping: asyncio.Event) -> None:
        await until(lambda: count >= 3)
        stopping.set()

    scenario(passes, body)


def test_wakes_during_a_pass_make_one_more_pass() -> None:
    release = threading.Event()
    count = 0

    def work() -> None:
        nonlocal count
        count += 1
        if count == 1:
            release.wait(5)

    passes = Passes("busy", work, interval=None)

    async def body(stopping: asyncio.Event) -> None:
        await until(lambda: count == 1)
        for _ in range(3):
            passes.wake()
        await asyncio.sleep(0.01)  # the wakes land while the first pass still runs
        release.set()
        await until(lambda: count == 2)
        await asyncio.sleep(0.05)
        assert count == 2
        stopping.set()

    scenario(passes, body)


def test_stopping_reaches_the_pass_in_flight_and_run_waits_for_it() -> None:
    started, interrupted = threading.Event(), threading.Event()
    seen: list[bool] = []

    def work() -> None:
        started.set()
        interrupted.wait(5)
        seen.append(passes.stopping())

    passes = Passes("long", work, interval=None, interrupt=interrupted.set)

    async def body(stopping: asyncio.Event) -> None:
        await asyncio.to_thread(started.wait, 5)
        stopping.set()

    scenario(passes, body)
    assert seen == [True]  # the pass ended, and saw the flag, before run returned


def test_a_failing_pass_is_logged_and_tried_again_next_round() -> None:
    count = 0

    def work() -> None:
        nonlocal count
        count += 1
        if count == 1:
            raise OSError("database away")

    passes = Passes("flaky", work, interval=0.01)

    async def body(stopping: asyncio.Event) -> None:
        await until(lambda: count >= 2)
        stopping.set()

    with capture_logs() as logs:
        scenario(passes, body)
    [failed] = [entry for entry in logs if entry["event"] == "flaky_pass_failed"]
    assert failed["log_level"] == "error"
    assert failed["exc_info"] is True


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so it is not retried."""


def test_anything_but_an_exception_ends_run() -> None:
    def work() -> None:
        raise Crash

    passes = Passes("crash", work, interval=0.01)

    async def main() -> None:
        await passes.run(asyncio.Event())

    with pytest.raises(Crash):
        asyncio.run(main())


def test_each_pass_starts_from_the_loops_context_variables() -> None:
    seen: list[str | None] = []

    def work() -> None:
        seen.append(REQUEST.get())
        REQUEST.set("bound by a pass")

    passes = Passes("context", work, interval=0.01)

    async def body(stopping: asyncio.Event) -> None:
        await until(lambda: len(seen) >= 2)
        stopping.set()

    scenario(passes, body)
    assert seen[:2] == [None, None]
