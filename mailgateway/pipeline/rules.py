"""The admins' routing rules: `rules/*.toml` read into values, matched against a new
request.

Files are read in name order, rules inside a file top to bottom. A rule
matches when every one of its `when` conditions holds (a rule without `when`
always does); the first matching rule decides, unless it says
`continue = true`, in which case later rules may still set what it left
unset. A rule either sets fields (`set.*`) or ends the mail's course
(`action = "drop"` or `"reject"`). What the customer wrote in the form lines
wins over every rule (`route.route_new_ticket`).

Loading is validation: a file whose TOML is broken, or a rule with an unknown
key, a bad regex, or a value the desk does not have (a group, a technician,
a request type) is refused with its file, line or rule name, and the reason
(`RuleError`); `mailgateway rules check` lists them all. Matching is pure: it
takes the mail's values and returns which rules matched and what they set.

Patterns are Python regular expressions, searched in at most the first
`SEARCHED_CHARS` characters of a subject, a header or a body: they come from
admins, the text from anyone.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from mailgateway.pipeline.route import IMPACTS, REQUEST_TYPES

_log = structlog.get_logger(__name__)

SEARCHED_CHARS = 20_000
_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_RULE_KEYS = frozenset({"name", "description", "when", "set", "action", "continue"})
_REGEX_WHEN = ("subject", "body", "attachment")
_GLOB_WHEN = ("from", "to")
_SET_KEYS = frozenset({"product", "request_type", "impact", "group", "assignee", "watchers",
                       "language"})
_ACTIONS = ("drop", "reject")


class RuleError(Exception):
    """A rule file or rule that cannot be used, said with where and why."""


@dataclass(frozen=True)
class RuleFields:
    """What a rule sets; None (or empty) for what it leaves to others."""

    product: str | None = None
    request_type: str | None = None
    impact: str | None = None
    group: str | None = None
    assignee: str | None = None
    watchers: tuple[str, ...] = ()
    language: str | None = None


class Condition(NamedTuple):
    """One `when` key: a test one of the mail's values for `key` must pass. Globs and
    the account are compiled to whole-value matches at load, patterns searched."""

    key: str                              # subject, body, from, to, header.NAME, …
    test: Callable[[str], object]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    file: str
    conditions: tuple[Condition, ...]         # all must hold; cheapest first
    sets: RuleFields
    action: str | None = None
    go_on: bool = False                       # `continue = true`


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class MailFacts:
    """The values of a new request that rules look at."""

    subject: str
    body: str
    sender: str
    recipients: tuple[str, ...]
    headers: Mapping[str, tuple[str, ...]]  # lower-case name → values
    attachments: tuple[str, ...]
    account: str | None  # the sender's account's main address

    @cached_property
    def searched(self) -> dict[str, tuple[str, ...]]:
        """The values each `when` key tests, texts cut to `SEARCHED_CHARS` once."""
        values = {"subject": (self.subject[:SEARCHED_CHARS],),
                  "body": (self.body[:SEARCHED_CHARS],), "from": (self.sender,),
                  "to": self.recipients, "attachment": self.attachments,
                  "account": (self.account,) if self.account else ()}
        values.update((f"header.{name}", tuple(v[:SEARCHED_CHARS] for v in found))
                      for name, found in self.headers.items())
        return values


@dataclass(frozen=True)
class RuleOutcome:
    """The rules that matched, in order, and what they decided together."""

    matched: tuple[str, ...] = ()
    fields: RuleFields = field(default_factory=RuleFields)
    action: str | None = None
    action_rule: str | None = None


def match(rules: RuleSet, facts: MailFacts) -> RuleOutcome:
    """Apply the rules in order to `facts` (see the module's docstring)."""
    matched: list[str] = []
    chosen: dict[str, Any] = {}
    for rule in rules.rules:
        if not _holds(rule, facts):
            continue
        matched.append(rule.name)
        if rule.action is not None:  # the mail's course: whatever was set before goes
            return RuleOutcome(tuple(matched), RuleFields(), rule.action, rule.name)
        for name, value in vars(rule.sets).items():
            if value not in (None, ()) and name not in chosen:
                chosen[name] = value
        if not rule.go_on:
            break
    return RuleOutcome(tuple(matched), RuleFields(**chosen))


def _holds(rule: Rule, facts: MailFacts) -> bool:
    searched = facts.searched
    return all(any(map(test, searched.get(key, ()))) for key, test in rule.conditions)


# --- loading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeskNames:
    """What rules may name: the configured groups and the technicians' addresses.
    `staff` None: not checked (no database at hand)."""

    groups: Collection[str]
    staff: Collection[str] | None = None


def load_rules(path: Path, desk: DeskNames) -> tuple[RuleSet, list[str]]:
    """Every usable rule of `path/*.toml`, and every error found (file, line or rule,
    reason). A file with an error contributes no rule."""
    rules: list[Rule] = []
    files: list[str] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for file in sorted(path.glob("*.toml")) if path.is_dir() else []:
        try:
            found = _read_file(file, desk)
        except RuleError as exc:
            errors.append(str(exc))
            continue
        duplicated = [f"{file.name}: rule {r.name!r}: the name is taken by a rule of "
                      f"{seen[r.name]}" for r in found if r.name in seen]
        if duplicated:
            errors += duplicated
            continue
        seen.update((r.name, file.name) for r in found)
        files.append(file.name)
        rules += found
    return RuleSet(tuple(rules), tuple(files)), errors


def _read_file(file: Path, desk: DeskNames) -> list[Rule]:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{file.name}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{file.name}: cannot be read: {exc}") from None
    unknown = sorted(set(data) - {"rule"})
    if unknown:
        raise RuleError(f"{file.name}: unknown table {unknown[0]!r}; rules are [[rule]] tables")
    tables = data.get("rule", [])
    if not isinstance(tables, list):
        raise RuleError(f"{file.name}: rules must be [[rule]] tables")
    rules = [_rule(file.name, index, table, desk) for index, table in enumerate(tables, 1)]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise RuleError(f"{file.name}: rule {twice!r}: two rules have this name")
    return rules


def _rule(file: str, index: int, table: Any, desk: DeskNames) -> Rule:
    where = f"{file}: rule {index}"
    if not isinstance(table, dict):
        raise RuleError(f"{where}: must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RuleError(f"{where}: needs a name in kebab-case (like 'lynfa-errori'), "
                        f"not {name!r}")
    where = f"{file}: rule {name!r}"
    unknown = sorted(set(table) - _RULE_KEYS)
    if unknown:
        raise RuleError(f"{where}: unknown key {unknown[0]!r}; expected one of "
                        f"{', '.join(sorted(_RULE_KEYS))}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise RuleError(f"{where}: description must be a string")
    conditions = _conditions(where, table.get("when", {}))
    action = table.get("action")
    if action is not None and action not in _ACTIONS:
        raise RuleError(f"{where}: action must be drop or reject, not {action!r}")
    sets = _fields(where, table.get("set", {}), desk)
    if action is not None and sets != RuleFields():
        raise RuleError(f"{where}: a rule with action = {action!r} sets nothing")
    go_on = table.get("continue", False)
    if not isinstance(go_on, bool):
        raise RuleError(f"{where}: continue must be true or false")
    return Rule(name, description, file, conditions, sets, action, go_on)


_COST = ("account", "from", "to", "header", "subject", "attachment", "body")
"""The order conditions are tested in: most rules fail on their first, so the cheap
whole-address tests go before the searches of long texts."""


def _conditions(where: str, when: Any) -> tuple[Condition, ...]:
    if not isinstance(when, dict):
        raise RuleError(f"{where}: when must be a table")
    conditions: list[Condition] = []
    for key, value in when.items():
        if key == "header":
            if not isinstance(value, dict):
                raise RuleError(f"{where}: when.header must be a table of header = regex")
            conditions += [
                Condition(f"header.{header.lower()}",
                          _regex(f"{where}: when.header.{header}", pattern).search)
                for header, pattern in value.items()]
        elif key in _REGEX_WHEN:
            conditions.append(Condition(key, _regex(f"{where}: when.{key}", value).search))
        elif key in _GLOB_WHEN:
            if not isinstance(value, str) or not value:
                raise RuleError(f"{where}: when.{key} must be an address or a glob like "
                                "'*@studiorossi.it'")
            glob = re.compile(fnmatch.translate(value.lower()))
            conditions.append(Condition(key, glob.match))
        elif key == "account":
            if not isinstance(value, str) or not _ADDRESS.match(value):
                raise RuleError(f"{where}: when.account must be an account's main address")
            conditions.append(Condition(key, re.compile(re.escape(value.lower())).fullmatch))
        else:
            raise RuleError(f"{where}: unknown condition when.{key}; expected one of "
                            "account, attachment, body, from, header.NAME, subject, to")
    return tuple(sorted(conditions, key=lambda c: _COST.index(c.key.split(".")[0])))


def _regex(where: str, value: Any) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise RuleError(f"{where}: must be a regular expression in a string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise RuleError(f"{where}: bad regular expression {value!r}: {exc}") from None


def _fields(where: str, sets: Any, desk: DeskNames) -> RuleFields:
    if not isinstance(sets, dict):
        raise RuleError(f"{where}: set must be a table")
    unknown = sorted(set(sets) - _SET_KEYS)
    if unknown:
        raise RuleError(f"{where}: unknown key set.{unknown[0]}; expected one of "
                        f"{', '.join(sorted(_SET_KEYS))}")
    for key, value in sets.items():
        if key != "watchers" and (not isinstance(value, str) or not value.strip()):
            raise RuleError(f"{where}: set.{key} must be a non-empty string")
    _one_of(where, "request_type", sets.get("request_type"), REQUEST_TYPES)
    _one_of(where, "impact", sets.get("impact"), IMPACTS)
    _one_of(where, "language", sets.get("language"), ("it", "en"))
    group = sets.get("group")
    if group is not None and group not in desk.groups:
        raise RuleError(f"{where}: set.group {group!r} is not a configured group "
                        f"([groups.NAME]; configured: {', '.join(sorted(desk.groups)) or 'none'})")
    assignee = sets.get("assignee")
    if assignee is not None:
        assignee = assignee.lower()
        if desk.staff is not None and assignee not in desk.staff:
            raise RuleError(f"{where}: set.assignee {assignee!r} is not a technician "
                            "(mailgateway staff list)")
    watchers = sets.get("watchers", [])
    if not isinstance(watchers, list) or not all(
            isinstance(w, str) and _ADDRESS.match(w) for w in watchers):
        raise RuleError(f"{where}: set.watchers must be a list of addresses")
    return RuleFields(product=sets.get("product"), request_type=sets.get("request_type"),
                      impact=sets.get("impact"), group=group, assignee=assignee,
                      watchers=tuple(w.lower() for w in watchers),
                      language=sets.get("language"))


def _one_of(where: str, key: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise RuleError(f"{where}: set.{key} must be one of {', '.join(allowed)}, "
                        f"not {value!r}")


def headers_of(pairs: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Header values by lower-case name, as `MailFacts.headers` holds them."""
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        found.setdefault(name.lower(), []).append(value)
    return {name: tuple(values) for name, values in found.items()}


class RuleBook:
    """The rules in force, read again when the files change.

    `current()` looks at the files' names, sizes and times at most once a second,
    so an admin's edit is in force within that (or at once: `reload()`, which
    `serve` calls on SIGHUP). A broken file is refused and said once; the rules
    last read in full stay in force until it is mended.
    """

    def __init__(self, path: Path, desk: Callable[[], DeskNames],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._path, self._desk, self._clock = path, desk, clock
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._checked = float("-inf")
        self._rules = RuleSet()
        self._loaded = False  # the rules in force were read without an error
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def current(self) -> RuleSet:
        now = self._clock()
        if now - self._checked >= 1.0:
            with self._lock:
                self._checked = now
                signature = _signature(self._path)
                if signature != self._signature:
                    self._load(signature)
        return self._rules

    def reload(self) -> None:
        with self._lock:
            self._load(_signature(self._path))

    def _load(self, signature: tuple[tuple[str, int, int], ...]) -> None:
        rules, errors = load_rules(self._path, self._desk())
        self._signature = signature
        self.errors = errors
        for error in errors:
            _log.error("rule_file_refused", error=error)
        if errors and self._loaded:
            _log.warning("rules_kept", rules=len(self._rules.rules),
                         reason="a rule file is refused: the rules last read in full stay")
            return
        self._rules, self._loaded = rules, not errors
        _log.info("rules_loaded", files=list(rules.files), rules=len(rules.rules))


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    found = []
    for file in path.glob("*.toml") if path.is_dir() else []:
        try:
            info = file.stat()
        except OSError:
            continue
        found.append((file.name, info.st_mtime_ns, info.st_size))
    return tuple(sorted(found))
