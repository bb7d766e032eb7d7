"""First-response SLA: when a new ticket must have had its first answer.

The guide promises an answer within 24 hours, but the desk works Mon–Fri
09:00–18:00 in Rome, holidays excluded: a deadline falling on a Saturday
night is moved to Monday's opening. Public holidays come from the
`holidays` package (maintained, with Easter Monday and the patron days),
not a hand-kept list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from mailgateway.config import SlaSettings
from mailgateway.errors import ConfigError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(
    r"^\s*(?P<first>[a-z]{3})\s*-\s*(?P<last>[a-z]{3})\s+"
    r"(?P<open>\d{1,2}:\d{2})\s*-\s*(?P<close>\d{1,2}:\d{2})\s*$"
)


@dataclass(frozen=True)
class OfficeHours:
    weekdays: frozenset[int]
    opens: time
    closes: time
    zone: ZoneInfo
    country: str

    def is_open_day(self, day: date) -> bool:
        return day.weekday() in self.weekdays and day not in _holidays(self.country, day.year)

    def is_open(self, instant: datetime) -> bool:
        local = instant.astimezone(self.zone)
        return self.is_open_day(local.date()) and self.opens <= local.time() < self.closes

    def next_opening(self, instant: datetime) -> datetime:
        """The first office opening at or after `instant` (UTC)."""
        local = instant.astimezone(self.zone)
        day = local.date()
        if local.time() >= self.opens:
            day += timedelta(days=1)
        for _ in range(370):
            if self.is_open_day(day):
                return datetime.combine(day, self.opens, self.zone).astimezone(UTC)
            day += timedelta(days=1)
        raise ConfigError("sla.business_hours leaves no open day in a year.")


@lru_cache(maxsize=64)
def _holidays(country: str, year: int) -> frozenset[date]:
    if not country:
        return frozenset()
    # Imported here: the package and a country's calendar take 0.1-0.25 s to load,
    # which every command paid at start-up, most of them for nothing.
    import holidays

    return frozenset(holidays.country_holidays(country, years=year))


@lru_cache(maxsize=8)
def office_hours(settings: SlaSettings) -> OfficeHours:
    match = _HOURS.match(settings.business_hours.lower())
    if not match or match["first"] not in _DAYS or match["last"] not in _DAYS:
        raise ConfigError(
            f"sla.business_hours must look like 'mon-fri 09:00-18:00', "
            f"not {settings.business_hours!r}.")
    first, last = _DAYS.index(match["first"]), _DAYS.index(match["last"])
    opens, closes = time.fromisoformat(match["open"].zfill(5)), time.fromisoformat(
        match["close"].zfill(5))
    if opens >= closes:
        raise ConfigError("sla.business_hours must open before it closes.")
    days = frozenset(range(first, last + 1)) if first <= last else frozenset(
        [*range(first, 7), *range(0, last + 1)])
    try:
        zone = ZoneInfo(settings.timezone)
    except Exception:
        raise ConfigError(f"sla.timezone {settings.timezone!r} is not a known time zone.") from None
    if settings.holidays:
        try:
            import holidays

            holidays.country_holidays(settings.holidays)
        except NotImplementedError:
            raise ConfigError(
                f"sla.holidays {settings.holidays!r} is not a known country code.") from None
    return OfficeHours(days, opens, closes, zone, settings.holidays)


def first_response_due(created: datetime, settings: SlaSettings) -> datetime:
    """Creation plus `first_response_hours`, moved to the next opening if the office is shut."""
    due = created + timedelta(hours=settings.first_response_hours)
    hours = office_hours(settings)
    return due if hours.is_open(due) else hours.next_opening(due)
