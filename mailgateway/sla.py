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


def _office_days(business_hours: str) -> tuple[frozenset[int], time, time]:
    match = _HOURS.match(business_hours.lower())
    if not match or match["first"] not in _DAYS or match["last"] not in _DAYS:
        raise ConfigError(
            f"sla.business_hours must look like 'mon-fri 09:00-18:00', "
            f"not {business_hours!r}.")
    first, last = _DAYS.index(match["first"]), _DAYS.index(match["last"])
    try:
        opens, closes = (time.fromisoformat(match[key].zfill(5)) for key in ("open", "close"))
    except ValueError:
        raise ConfigError(f"sla.business_hours has an hour that does not exist: "
                          f"{business_hours!r}.") from None
    if opens >= closes:
        raise ConfigError("sla.business_hours must open before it closes.")
    days = frozenset(range(first, last + 1)) if first <= last else frozenset(
        [*range(first, 7), *range(0, last + 1)])
    return days, opens, closes


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except Exception:  # ValueError, ZoneInfoNotFoundError, or a path-like key
        raise ConfigError(f"sla.timezone {timezone!r} is not a known time zone "
                          "(e.g. Europe/Rome).") from None


_KNOWN_COUNTRY = "IT"  # the embedded default: known good, so not looked up at every start


def _check_country(country: str) -> None:
    if not country or country == _KNOWN_COUNTRY:
        return
    import holidays  # 30 ms: only for a country other than the default

    if country not in holidays.list_supported_countries():
        raise ConfigError(f"sla.holidays {country!r} is not a known country code "
                          "(ISO 3166, e.g. IT), nor empty for none.")


def check_sla(settings: SlaSettings) -> None:
    """Refuse office hours, time zone or holiday country that cannot work, naming the key:
    at start, not when the first ticket is opened."""
    _office_days(settings.business_hours)
    _zone(settings.timezone)
    _check_country(settings.holidays)


@lru_cache(maxsize=8)
def office_hours(settings: SlaSettings) -> OfficeHours:
    days, opens, closes = _office_days(settings.business_hours)
    zone = _zone(settings.timezone)
    _check_country(settings.holidays)
    return OfficeHours(days, opens, closes, zone, settings.holidays)


def first_response_due(created: datetime, settings: SlaSettings) -> datetime:
    """Creation plus `first_response_hours`, moved to the next opening if the office is shut."""
    due = created + timedelta(hours=settings.first_response_hours)
    hours = office_hours(settings)
    return due if hours.is_open(due) else hours.next_opening(due)
