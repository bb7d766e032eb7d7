"""Configuration: one TOML file → frozen, validated settings.

Every key has an embedded default that runs on a bare machine (SQLite under
`var/`, a listener on 127.0.0.1:2525, outbound mail into a local Maildir), so
an empty file is a valid configuration. A wrong key or value stops the program
at start with one sentence naming the key and what was expected, because a
typo found at 3 a.m. by a mail that went nowhere is far more expensive.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mailgateway.errors import ConfigError

CONFIG_ENV = "MAILGATEWAY_CONFIG"
SECRET_ENV = "MAILGATEWAY_SECRET"
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _choice(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class HelpdeskSettings:
    name: str = "Assistenza"
    address: str = "assistenza@example.com"
    domains: tuple[str, ...] = ("example.com",)
    ticket_tag: str = "[Ticket#{number}]"
    language: str = field(default="it", metadata=_choice("it", "en"))
    # Signs reply and bounce addresses; empty: one is generated into data_dir/secret
    # on first use (`signing_secret`); `serve` beyond loopback needs it set.
    secret: str = ""
    unknown_sender: str = field(default="reject", metadata=_choice("reject", "accept"))
    closed_reply: str = field(default="reject", metadata=_choice("reject", "new_ticket"))
    max_attachment_bytes: int = 26_214_400
    data_dir: str = "var"
    # Technicians' mail is trusted without a reply token when one of these
    # hosts (authserv-id) reports dmarc=pass or dkim=pass for the sender, on a
    # transport that trusts Authentication-Results (see README, "Security").
    trusted_authserv_ids: tuple[str, ...] = ()
    # A technician's signed reply address older than this carries an answer, no command.
    staff_token_max_age_days: int = 90
    # A customer's answer whose first line is one of these, alone, closes the ticket.
    solved_words: tuple[str, ...] = ("risolto", "chiuso", "solved")
    # A subject holding one of these (any case) was flagged as spam by the filter in
    # front of the desk, as are X-Spam-Flag: YES and X-Spam-Status: Yes.
    spam_subject_tags: tuple[str, ...] = ("[SPAM]", "***SPAM***")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/mailgateway.db"
    echo: bool = False


@dataclass(frozen=True)
class SmtpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    lmtp: bool = False
    max_message_bytes: int = 26_214_400
    tls_cert: str = ""
    tls_key: str = ""
    require_starttls: bool = False
    max_sessions: int = 100
    max_sessions_per_client: int = 10   # from one client address, below max_sessions
    max_recipients: int = 50
    idle_timeout_seconds: int = 300     # without a command, or without data in DATA
    data_timeout_seconds: int = 900     # one DATA, from its command to its end
    shutdown_grace_seconds: int = 30
    # The MTA in front removes Authentication-Results of helpdesk.trusted_authserv_ids
    # from incoming mail, so those left are its own (never true for a listener that is
    # the MX itself).
    trust_authentication_results: bool = False


@dataclass(frozen=True)
class ImapSettings:
    host: str = "127.0.0.1"
    port: int = 143
    tls: bool = False
    starttls: bool = False
    username: str = ""
    password: str = ""
    password_env: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    failed_folder: str = "Failed"
    idle: bool = True
    idle_seconds: int = 600
    poll_seconds: int = 60
    batch_size: int = 50
    timeout_seconds: int = 30
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    # The server that fills this mailbox removes Authentication-Results of
    # helpdesk.trusted_authserv_ids from incoming mail (see README, "Security").
    trust_authentication_results: bool = False

    def resolved_password(self) -> str:
        """The password, from the environment variable when one is named."""
        if self.password_env:
            return os.environ.get(self.password_env, "")
        return self.password


@dataclass(frozen=True)
class OutboundSettings:
    transport: str = field(default="maildir", metadata=_choice("maildir", "smtp"))
    maildir: str = "var/sent"
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    tls: bool = False
    username: str = ""
    password: str = ""
    password_env: str = ""
    timeout_seconds: int = 30
    max_attempts: int = 12
    max_age_hours: int = 48
    batch_size: int = 100
    connections: int = 4
    poll_seconds: float = 2.0
    auto_answer_limit: int = 10
    auto_answer_window_minutes: int = 10
    # Refusals to senders the desk does not know, all addresses together.
    stranger_answers_per_hour: int = 60
    # Hard bounces in a row after which an address is no longer mailed (until cleared).
    bounce_limit: int = 3

    def resolved_password(self) -> str:
        """The relay password, from the environment variable when one is named."""
        if self.password_env:
            return os.environ.get(self.password_env, "")
        return self.password


@dataclass(frozen=True)
class GroupSettings:
    address: str


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True
    interval_seconds: int = 60
    autoclose_days: int = 7
    reminder_days: int = 5


@dataclass(frozen=True)
class SlaSettings:
    first_response_hours: int = 24
    business_hours: str = "mon-fri 09:00-18:00"
    timezone: str = "Europe/Rome"
    holidays: str = "IT"


@dataclass(frozen=True)
class SimilarSettings:
    """Solved tickets suggested in the acknowledgment and the new-ticket notice."""

    scope: str = field(default="account", metadata=_choice("account", "all", "off"))
    limit: int = 3


@dataclass(frozen=True)
class DuplicatesSettings:
    """A request repeating an open ticket of the same account from the last hours."""

    action: str = field(default="thread", metadata=_choice("thread", "flag", "off"))
    window_hours: int = 48
    # How much subject and text must share (stems, Jaccard index 0..1).
    threshold: float = 0.7


@dataclass(frozen=True)
class RulesSettings:
    path: str = "rules"


@dataclass(frozen=True)
class LogSettings:
    level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    format: str = field(default="console", metadata=_choice("console", "json"))


@dataclass(frozen=True)
class MetricsSettings:
    # HOST:PORT of /metrics and /healthz; empty: not served.
    listen: str = ""


@dataclass(frozen=True)
class Settings:
    helpdesk: HelpdeskSettings = HelpdeskSettings()
    database: DatabaseSettings = DatabaseSettings()
    smtp: SmtpSettings = SmtpSettings()
    imap: tuple[ImapSettings, ...] = ()
    outbound: OutboundSettings = OutboundSettings()
    groups: Mapping[str, GroupSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = SchedulerSettings()
    sla: SlaSettings = SlaSettings()
    rules: RulesSettings = RulesSettings()
    similar: SimilarSettings = SimilarSettings()
    duplicates: DuplicatesSettings = DuplicatesSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @property
    def data_dir(self) -> Path:
        return Path(self.helpdesk.data_dir)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).split()[-1]}s"
    names = {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}
    return names.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_describe(tp)}, not {value!r}.")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_describe(tp)}, not {value!r}.")
    return value


def _build(cls: type[Any], table: Any, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{prefix}] must be a table of keys.")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"Unknown key {prefix}.{key}; expected one of: {allowed}.")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        key = f"{prefix}.{name}"
        if name not in table:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ConfigError(f"Missing required key {key}.")
            continue
        value = _convert(table[name], hints[name], key)
        choices = spec.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, not {value!r}.")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{key} must not be negative, not {value!r}.")
        values[name] = value
    return cls(**values)


IMAP_IDLE_LIMIT = 1740  # servers may drop an IDLE after 30 minutes (RFC 2177)


def check_imap_settings(mailbox: ImapSettings, key: str) -> None:
    """Refuse a mailbox that cannot work, naming the key."""
    if not mailbox.username:
        raise ConfigError(f"{key}.username is required for an IMAP mailbox.")
    if mailbox.tls and mailbox.starttls:
        raise ConfigError(f"{key}.tls and {key}.starttls exclude each other; choose one.")
    if mailbox.folder in (mailbox.processed_folder, mailbox.failed_folder):
        raise ConfigError(f"{key}.processed_folder and {key}.failed_folder must differ from "
                          f"{key}.folder ({mailbox.folder!r}).")
    if mailbox.poll_seconds < 1:
        raise ConfigError(f"{key}.poll_seconds must be at least 1 (polling must not spin).")
    if not 1 <= mailbox.idle_seconds <= IMAP_IDLE_LIMIT:
        raise ConfigError(f"{key}.idle_seconds must be between 1 and {IMAP_IDLE_LIMIT}, "
                          f"not {mailbox.idle_seconds}.")
    if not 0 < mailbox.reconnect_initial_seconds <= mailbox.reconnect_max_seconds:
        raise ConfigError(f"{key}.reconnect_initial_seconds must be positive and at most "
                          f"{key}.reconnect_max_seconds.")


def _check_ports(settings: Settings) -> None:
    ports = [("smtp.port", settings.smtp.port), ("outbound.port", settings.outbound.port)]
    ports += [(f"imap[{i}].port", m.port) for i, m in enumerate(settings.imap)]
    for key, port in ports:
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key} must be a port number from 0 to 65535, not {port}.")


def _check_groups(settings: Settings) -> None:
    """A group's notices must reach people: the helpdesk's own address would bring
    them back as mail to the desk, dropped as a loop."""
    own = settings.helpdesk.address.lower()
    for name, group in settings.groups.items():
        if not _ADDRESS.match(group.address):
            raise ConfigError(f"groups.{name}.address must be an e-mail address.")
        if group.address.lower() == own:
            raise ConfigError(f"groups.{name}.address must not be the helpdesk's own address "
                              f"({own}): its notices would come back as a loop. Give the "
                              "group its own address, or remove it to mail its members.")


def _check(settings: Settings) -> None:
    from mailgateway.sla import check_sla

    for index, mailbox in enumerate(settings.imap):
        check_imap_settings(mailbox, f"imap[{index}]")
    _check_ports(settings)
    check_sla(settings.sla)
    _check_groups(settings)
    if not _ADDRESS.match(settings.helpdesk.address):
        raise ConfigError(
            f"helpdesk.address must be an e-mail address, not {settings.helpdesk.address!r}."
        )
    if "{number}" not in settings.helpdesk.ticket_tag:
        raise ConfigError("helpdesk.ticket_tag must contain {number}.")
    if not settings.helpdesk.domains:
        raise ConfigError("helpdesk.domains must name at least one domain.")
    url = settings.database.url
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise ConfigError(
            f"database.url must be a sqlite:// or postgresql+psycopg:// URL, not {url!r}.")
    if bool(settings.smtp.tls_cert) != bool(settings.smtp.tls_key):
        raise ConfigError("smtp.tls_cert and smtp.tls_key must be set together.")
    if settings.smtp.require_starttls and not settings.smtp.tls_cert:
        raise ConfigError("smtp.require_starttls needs smtp.tls_cert and smtp.tls_key.")
    if settings.scheduler.reminder_days >= settings.scheduler.autoclose_days:
        raise ConfigError("scheduler.reminder_days must be smaller than scheduler.autoclose_days.")


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a parsed TOML document; raises ConfigError naming the key."""
    sections: dict[str, type[Any]] = {
        "helpdesk": HelpdeskSettings,
        "database": DatabaseSettings,
        "smtp": SmtpSettings,
        "outbound": OutboundSettings,
        "scheduler": SchedulerSettings,
        "sla": SlaSettings,
        "rules": RulesSettings,
        "similar": SimilarSettings,
        "duplicates": DuplicatesSettings,
        "log": LogSettings,
        "metrics": MetricsSettings,
    }
    values: dict[str, Any] = {}
    for key, table in data.items():
        if key in sections:
            values[key] = _build(sections[key], table, key)
        elif key == "imap":
            if isinstance(table, dict):
                table = [table]
            if not isinstance(table, list):
                raise ConfigError("[[imap]] must be a list of mailbox tables.")
            values[key] = tuple(
                _build(ImapSettings, t, f"imap[{i}]") for i, t in enumerate(table)
            )
        elif key == "groups":
            if not isinstance(table, dict):
                raise ConfigError("[groups] must be a table of groups.")
            values[key] = types.MappingProxyType(
                {n: _build(GroupSettings, t, f"groups.{n}") for n, t in table.items()}
            )
        else:
            allowed = ", ".join(sorted([*sections, "imap", "groups"]))
            raise ConfigError(f"Unknown section [{key}]; expected one of: {allowed}.")
    settings = Settings(**values)
    secret = os.environ.get(SECRET_ENV)
    if secret:
        settings = replace(settings, helpdesk=replace(settings.helpdesk, secret=secret))
    _check(settings)
    return settings


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the file named by `path`, else by $MAILGATEWAY_CONFIG, else embedded defaults."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        return settings_from_mapping({})
    file = Path(chosen)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {file} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Configuration file {file} is not valid TOML: {exc}.") from None
    try:
        return settings_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
