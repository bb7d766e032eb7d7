"""The shared retry timing: the backoff's waits and limits, and the once-per-outage log lines.

Nothing sleeps here: the backoff returns durations, and the outage takes a clock.
"""

from __future__ import annotations

import logging
import random

import pytest
import structlog
from structlog.testing import LogCapture

from mailgateway.retry import Backoff, Outage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs() -> LogCapture:
    return LogCapture()


def make_outage(logs: LogCapture, clock: FakeClock, backoff: Backoff | None = None) -> Outage:
    log = structlog.wrap_logger(
        None,
        processors=[logs],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    return Outage(backoff or Backoff(initial=1, maximum=60), log, name="imap", clock=clock)


def events(logs: LogCapture) -> list[tuple[str, str]]:
    return [(entry["log_level"], entry["event"]) for entry in logs.entries]


# ---- Backoff ----------------------------------------------------------------------------


def test_backoff_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=10, jitter=0)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 7, 50, 5000])
def test_backoff_jitter_stays_within_one_initial_step_and_under_the_cap(attempt: int) -> None:
    backoff = Backoff(initial=1, maximum=60)  # jitter defaults to `initial`
    base = min(2.0 ** min(attempt - 1, 100), 60)
    for _ in range(200):
        assert base <= backoff.delay(attempt) <= min(base + 1, 60)


def test_backoff_jitter_is_random_and_bounded_by_its_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backoff = Backoff(initial=1, maximum=60, jitter=0.25)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert backoff.delay(1) == 1.25
    assert backoff.delay(3) == 4.25
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert backoff.delay(3) == 4


def test_slow_backoff_is_the_cap_from_the_first_attempt() -> None:
    backoff = Backoff(initial=0.01, maximum=0.3)
    assert [backoff.delay(n, slow=True) for n in (1, 2, 9)] == [0.3, 0.3, 0.3]
    assert isinstance(backoff.delay(1, slow=True), float)


def test_backoff_without_limits_never_gives_up() -> None:
    backoff = Backoff(initial=1, maximum=60)
    assert not backoff.gives_up(10_000, elapsed=86_400.0 * 365)


def test_backoff_gives_up_at_the_attempt_that_reaches_either_limit() -> None:
    backoff = Backoff(initial=30, maximum=3600, max_attempts=3, max_elapsed=7200)
    assert not backoff.gives_up(2, elapsed=7199)
    assert backoff.gives_up(3, elapsed=0)
    assert backoff.gives_up(1, elapsed=7200)


# ---- Outage -----------------------------------------------------------------------------


def test_outage_logs_its_start_once_then_repeats_at_debug(logs: LogCapture) -> None:
    clock = FakeClock()
    outage = make_outage(logs, clock, Backoff(initial=1, maximum=60, jitter=0))
    error = OSError("connection refused")

    waits = [outage.failed("connection lost, reconnecting", error) for _ in range(4)]

    assert waits == [1, 2, 4, 8]
    assert events(logs) == [("warning", "imap connection lost, reconnecting")] + [
        ("debug", "imap connection lost, reconnecting again")
    ] * 3
    first, *repeats = logs.entries
    assert first["error"] == "connection refused"
    assert first["retry_in"] == 1
    assert [entry["attempt"] for entry in repeats] == [2, 3, 4]
    assert [entry["retry_in"] for entry in repeats] == [2, 4, 8]
    assert outage.ongoing
    assert outage.attempts == 4


def test_outage_recovery_is_logged_once_with_attempts_and_duration(logs: LogCapture) -> None:
    clock = FakeClock()
    outage = make_outage(logs, clock)
    outage.failed("connection lost", OSError("reset"))
    clock.now += 12.34
    outage.failed("connection lost", OSError("reset"))
    clock.now += 30.0

    outage.recovered()
    outage.recovered()  # every working drain says so: only the first ends an outage

    recovered = [entry for entry in logs.entries if entry["event"] == "imap recovered"]
    assert len(recovered) == 1
    assert recovered[0]["log_level"] == "info"
    assert recovered[0]["attempts"] == 2
    assert recovered[0]["outage_seconds"] == 42.3
    assert not outage.ongoing


def test_recovered_without_an_outage_logs_nothing(logs: LogCapture) -> None:
    make_outage(logs, FakeClock()).recovered()
    assert logs.entries == []


def test_next_outage_starts_afresh_after_recovery(logs: LogCapture) -> None:
    outage = make_outage(logs, FakeClock(), Backoff(initial=1, maximum=60, jitter=0))
    assert [outage.failed("lost", OSError()) for _ in range(3)] == [1, 2, 4]
    outage.recovered()
    logs.entries.clear()

    assert outage.failed("lost", OSError()) == 1
    assert events(logs) == [("warning", "imap lost")]
    assert outage.attempts == 1


def test_a_new_kind_of_failure_is_logged_without_restarting_the_backoff(
    logs: LogCapture,
) -> None:
    outage = make_outage(logs, FakeClock(), Backoff(initial=1, maximum=60, jitter=0))
    outage.failed("connection lost", OSError())
    outage.failed("connection lost", OSError())
    assert outage.failed("could not store mail", RuntimeError("db busy")) == 4
    assert events(logs) == [
        ("warning", "imap connection lost"),
        ("debug", "imap connection lost again"),
        ("warning", "imap could not store mail"),
    ]


def test_slow_failures_wait_the_cap_and_log_an_error(logs: LogCapture) -> None:
    outage = make_outage(logs, FakeClock(), Backoff(initial=0.01, maximum=0.3))
    assert outage.failed("login refused", PermissionError("bad password"), slow=True) == 0.3
    assert outage.failed("login refused", PermissionError("bad password"), slow=True) == 0.3
    assert events(logs) == [("error", "imap login refused"), ("debug", "imap login refused again")]
    assert logs.entries[0]["retry_in"] == 0.3
    assert logs.entries[0]["exc_info"] is False


def test_unexpected_failures_log_an_error_with_the_traceback(logs: LogCapture) -> None:
    outage = make_outage(logs, FakeClock(), Backoff(initial=1, maximum=60, jitter=0))
    try:
        raise KeyError("bug")
    except KeyError as exc:
        assert outage.failed("unexpected", exc, unexpected=True) == 1
    entry = logs.entries[0]
    assert (entry["log_level"], entry["event"]) == ("error", "imap unexpected")
    assert entry["exc_info"] is True
