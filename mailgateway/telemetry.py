"""What the running gateway counts and how alive each component is, in plain Python.

Components tell `TALLY` what happened (a mail received, processed, a scheduler
pass) and keep a `Heartbeat` each; `mailgateway.monitoring` reads both when
Prometheus scrapes or `/healthz` is asked. Nothing here imports the
Prometheus client: the command line pays nothing for it, and a count costs a
lock and an addition.

A worker process of `serve --workers` has no HTTP server of its own: its
`TALLY.forward` sends each event to the parent, which counts it.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PIPELINE_BUCKETS", "SCHEDULER_BUCKETS", "TALLY", "Heartbeat", "Histogram", "Tally",
           "heartbeat", "heartbeats"]

# Seconds: a plain mail takes milliseconds, one with a 25 MB attachment a second or two.
PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCHEDULER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class Histogram:
    """Counts by upper bound (cumulated when exported), their sum and number."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    number: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.number += 1

    def cumulated(self) -> list[tuple[str, int]]:
        """(upper bound, count at or below it), as Prometheus buckets are."""
        running, buckets = 0, []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


class Tally:
    """The process's counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.processed: Counter[str] = Counter()
        self.pipeline = Histogram(PIPELINE_BUCKETS)
        self.scheduler = Histogram(SCHEDULER_BUCKETS)
        self.imap_connected: dict[str, bool] = {}
        # Set in a worker process: events go to the parent instead of being counted here.
        self.forward: Callable[[str], None] | None = None

    def mail_received(self, transport: str) -> None:
        with self._lock:
            self.received[transport] += 1

    def mail_processed(self, fate: str, seconds: float) -> None:
        """One mail through the pipeline: its fate (processed, ignored, quarantined)."""
        if self.forward is not None:
            self.forward(f"processed {fate} {seconds:.6f}")
            return
        with self._lock:
            self.processed[fate] += 1
            self.pipeline.observe(seconds)

    def scheduler_pass(self, seconds: float) -> None:
        with self._lock:
            self.scheduler.observe(seconds)

    def imap_state(self, mailbox: str, connected: bool) -> None:
        with self._lock:
            self.imap_connected[mailbox] = connected

    def snapshot(self) -> Tally:
        """A consistent copy, for one scrape."""
        copy = Tally()
        with self._lock:
            copy.received = Counter(self.received)
            copy.processed = Counter(self.processed)
            for name in ("pipeline", "scheduler"):
                mine, theirs = getattr(self, name), getattr(copy, name)
                theirs.counts, theirs.total, theirs.number = (
                    list(mine.counts), mine.total, mine.number)
            copy.imap_connected = dict(self.imap_connected)
        return copy


TALLY = Tally()


class Heartbeat:
    """How alive one component is: `beat()` whenever it makes progress or waits
    normally; it is stuck when busy and silent for longer than `stuck_after` seconds.
    A component idle between passes is never stuck: nothing is asked of it."""

    def __init__(self, name: str, stuck_after: float) -> None:
        self.name = name
        self.stuck_after = stuck_after
        self.last = time.monotonic()
        self.busy = False

    def beat(self) -> None:
        self.last = time.monotonic()

    def working(self, busy: bool) -> None:
        self.busy = busy
        self.beat()

    def silent_for(self) -> float:
        return time.monotonic() - self.last

    def stuck(self) -> bool:
        return self.busy and self.silent_for() > self.stuck_after


_HEARTS: dict[str, Heartbeat] = {}
_HEARTS_LOCK = threading.Lock()


def heartbeat(name: str, stuck_after: float) -> Heartbeat:
    """The heartbeat of the component `name`, registered for `/healthz`."""
    with _HEARTS_LOCK:
        heart = _HEARTS[name] = Heartbeat(name, stuck_after)
    return heart


def heartbeats() -> list[Heartbeat]:
    with _HEARTS_LOCK:
        return sorted(_HEARTS.values(), key=lambda h: h.name)
