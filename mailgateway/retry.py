"""Retry timing shared by the components that reconnect or resend.

Two pieces, so every component waits and reports the same way:

`Backoff` is the policy: tenacity's exponential wait with jitter, capped, and
optionally when to give up. It answers "how long after the N-th consecutive
failure" and "is that one the last" and never sleeps, so a caller waits however
suits it (a stop flag's `wait`, a row's next attempt time) and tests need no
clock. The IMAP poller reconnects with one; the outbound dispatcher resends with
another.

`Outage` is the bookkeeping around it: it counts the failures of one outage,
asks the backoff for each wait, and logs the outage once when it starts (and
when its kind changes) and once when it ends; the repeats in between are debug
lines only, so a server down for an hour does not flood the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
    wait_fixed,
)
from tenacity.stop import stop_base

__all__ = ["Backoff", "Outage"]


def _call_state(attempt: int, elapsed: float = 0.0) -> RetryCallState:
    """A tenacity call state for evaluating a policy outside tenacity's loop: the
    `attempt`-th attempt (counted from 1), `elapsed` seconds after the first."""
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.start_time = 0.0
    state.outcome_timestamp = elapsed
    return state


@dataclass(frozen=True)
class Backoff:
    """About `initial`, 2×, 4×, … seconds between attempts, never more than `maximum`.

    Every wait adds a random part of up to `jitter` seconds (by default `initial`)
    so clients that failed together do not all come back at the same moment.
    With `max_attempts` or `max_elapsed` (seconds since the first attempt) set,
    the attempt that reaches either is the last; without them it never gives up.
    """

    initial: float
    maximum: float
    jitter: float | None = None
    max_attempts: int | None = None
    max_elapsed: float | None = None

    def delay(self, attempt: int, *, slow: bool = False) -> float:
        """Seconds to wait after the `attempt`-th consecutive failure (counted from 1).

        `slow` skips the ramp and returns the cap: a refused login, say, is retried
        at the policy's slowest rate from the start.
        """
        if slow:
            return wait_fixed(self.maximum)(_call_state(attempt))
        jitter = self.initial if self.jitter is None else self.jitter
        wait = wait_exponential_jitter(multiplier=self.initial, max=self.maximum, jitter=jitter)
        return wait(_call_state(attempt))

    def gives_up(self, attempts: int, elapsed: float) -> bool:
        """True when no attempt should follow the `attempts`-th, made `elapsed` seconds
        after the first."""
        stop: stop_base = stop_never
        if self.max_attempts is not None:
            stop |= stop_after_attempt(self.max_attempts)
        if self.max_elapsed is not None:
            stop |= stop_after_delay(self.max_elapsed)
        return bool(stop(_call_state(attempts, elapsed)))


class Outage:
    """Consecutive failures of one component, from the first to the recovery.

    Log lines are named after the component: `"<name> <kind>"` when an outage
    starts or its kind changes (a warning; an error when it needs a person, i.e.
    `slow` or `unexpected`), `"<name> <kind> again"` at debug level for the
    repeats, and `"<name> recovered"` once at the end, with the attempts made
    and how long the outage lasted.
    """

    def __init__(
        self,
        backoff: Backoff,
        log: structlog.typing.FilteringBoundLogger,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self._log = log
        self._name = name
        self._clock = clock
        self._attempts = 0
        self._since: float | None = None
        self._kind: str | None = None

    @property
    def ongoing(self) -> bool:
        """True between a failure and the next `recovered`."""
        return self._since is not None

    @property
    def attempts(self) -> int:
        """Failed attempts in the current (or, once recovered, the last) outage."""
        return self._attempts

    def failed(
        self, kind: str, error: BaseException, *, slow: bool = False, unexpected: bool = False
    ) -> float:
        """Record one failed attempt; return how long to wait before the next one.

        `slow` waits at the backoff's cap; `unexpected` also logs the traceback.
        """
        first = self._since is None
        self._attempts = 1 if first else self._attempts + 1
        delay = self.backoff.delay(self._attempts, slow=slow)
        fields = {"error": str(error), "retry_in": round(delay, 2)}
        if first or kind != self._kind:
            if slow or unexpected:
                self._log.error(f"{self._name} {kind}", exc_info=unexpected, **fields)
            else:
                self._log.warning(f"{self._name} {kind}", **fields)
        else:
            self._log.debug(f"{self._name} {kind} again", attempt=self._attempts, **fields)
        if first:
            self._since = self._clock()
        self._kind = kind
        return delay

    def recovered(self) -> None:
        """It works again: log the outage's end (if there was one); the next starts afresh."""
        if self._since is not None:
            self._log.info(
                f"{self._name} recovered",
                attempts=self._attempts,
                outage_seconds=round(self._clock() - self._since, 1),
            )
        self._since = None
        self._kind = None
