"""The texts of outbound mail: Jinja2 templates, Italian and English, admin-overridable.

Each kind of mail has `<language>/<kind>.subject.j2`, `.txt.j2` and
`.html.j2` under the packaged `templates/`. An admin overrides any of them
with a file of the same relative path under `<rules.path>/templates/` (a
ChoiceLoader: admin directory first, packaged defaults second); an edited or
added file is picked up without a restart. A broken override is logged and
the packaged default is used, because a template typo must not stop tickets
from opening. HTML templates are autoescaped.

Template context (all optional except `kind`, `language`, `helpdesk`):
`number`, `tag`, `subject`, `status`, `product`, `request_type`, `impact`,
`group`, `account`, `account_email`, `person`, `person_email`, `customer`,
`customer_email`, `assignee`, `created_at`, `due_at`, `answered_at`,
`first_response_hours`, `reminder_days`, `autoclose_days`, `days_left`,
`timezone`, and from the caller `body`, `refused_attachments` (names),
`attachments` (dicts with `filename`, `content_type`, `sha256`), `author`,
`reason`, `unverified`, `similar` (dicts with `number`, `subject`, `answer`; number
and subject None for another account's ticket), `solved_words` (upper case),
`duplicate_of` (a number), `joined` (a number), and for `status_report` `counts`
(TUTTI and each state), `open_tickets` (dicts with `number`, `subject`, `status`,
`last_activity`, `reply_address`, `mailto`), `whole_account`.
Filters: `quote`, `excerpt`, `datetime` (local time, spelled out),
`label` (a field's value in words), `html_text`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    Template,
    TemplateError,
    TemplateNotFound,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context
from markupsafe import Markup, escape

from mailgateway.config import Settings
from mailgateway.outbound.intent import MailIntent, MailKind

PACKAGED_TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("it", "en")

LABELS: Mapping[str, Mapping[str, Mapping[str, str]]] = {
    "it": {
        "status": {
            "APERTO": "Aperto",
            "IN_GESTIONE": "In gestione",
            "RISPOSTO": "In attesa di risposta",
            "CHIUSO": "Chiuso",
        },
        "request_type": {
            "tecnica": "Assistenza tecnica",
            "commerciale": "Assistenza commerciale",
            "amministrativa": "Assistenza amministrativa",
        },
        "impact": {"bloccato": "Sono bloccato", "difficolta": "Riesco a lavorare, con difficoltà"},
    },
    "en": {
        "status": {
            "APERTO": "Open",
            "IN_GESTIONE": "In progress",
            "RISPOSTO": "Awaiting your reply",
            "CHIUSO": "Closed",
        },
        "request_type": {
            "tecnica": "Technical support",
            "commerciale": "Sales",
            "amministrativa": "Administration",
        },
        "impact": {"bloccato": "I am blocked", "difficolta": "I can work, with difficulty"},
    },
}



@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


def choose_language(settings: Settings, requested: str | None) -> str:
    """The requested language when templates exist for it, else the desk's default."""
    if requested and requested in LANGUAGES:
        return requested
    if requested and (_admin_dir(settings) / requested).is_dir():
        return requested
    return settings.helpdesk.language


def _quote(text: Any) -> str:
    lines = str(text or "").splitlines()
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def _excerpt(text: Any, lines: int = 15, chars: int = 1200) -> str:
    """The start of a text, for a brief quote; marks the cut with […]."""
    value = str(text or "").strip()
    kept = value.splitlines()[:lines]
    short = "\n".join(kept)
    if len(short) > chars:
        short = short[:chars].rsplit(" ", 1)[0]
    return short + ("\n[…]" if short != value else "")


# Spelled out here rather than taken from the process locale, which servers rarely set.
_MONTHS_IT = (
    "gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno",
    "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre",
)
_MONTHS_EN = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)


@pass_context
def _format_datetime(context: Context, value: Any) -> str:
    if not isinstance(value, datetime):
        return "" if value is None else str(value)
    local = value.astimezone(ZoneInfo(context.get("timezone") or "UTC"))
    time = f"{local.hour:02}:{local.minute:02}"
    if context.get("language") == "it":
        return f"{local.day} {_MONTHS_IT[local.month - 1]} {local.year} alle ore {time}"
    return f"{local.day} {_MONTHS_EN[local.month - 1]} {local.year}, {time}"


@pass_context
def _label(context: Context, value: Any, field: str) -> str:
    labels = LABELS.get(context.get("language") or "it", LABELS["it"])
    return labels.get(field, {}).get(str(value), "" if value is None else str(value))


def _html_text(value: Any) -> Markup:
    """Plain text shown in HTML: escaped, line breaks kept."""
    lines = "\n".join(str(value or "").splitlines())
    return Markup(str(escape(lines)).replace("\n", "<br>\n"))


def _build_environment(loader: BaseLoader) -> Environment:
    env = Environment(
        loader=loader,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Compiled templates are kept for the environment's life: the packaged ones
        # change only with the code, and any change to the admin's files makes a new
        # environment (see `_admin_signature`), so no template is checked per mail.
        auto_reload=False,
    )
    env.filters.update(
        quote=_quote,
        excerpt=_excerpt,
        datetime=_format_datetime,
        label=_label,
        html_text=_html_text,
    )
    return env


_ADMIN_DEPTH = 3  # <language>/<file> is the usual layout; a symlink loop must not hang us


def _admin_dir(settings: Settings) -> Path:
    return Path(settings.rules.path) / "templates"


def _admin_signature(admin: str) -> tuple[tuple[str, int, int], ...]:
    """Every override file and directory with its mtime and size; () when there are none.

    Changes when a file is added, removed or edited, so the change is seen
    with the next mail. Without an override directory this is one failed
    system call.
    """
    entries: list[tuple[str, int, int]] = []
    pending = [(admin, 0)]
    while pending:
        path, depth = pending.pop()
        try:
            scan = os.scandir(path)
        except OSError:
            continue
        with scan:
            for entry in scan:
                try:
                    info = entry.stat()
                except OSError:
                    continue
                entries.append((entry.path, info.st_mtime_ns, info.st_size))
                if depth < _ADMIN_DEPTH and entry.is_dir():
                    pending.append((entry.path, depth + 1))
    return tuple(sorted(entries))


@lru_cache(maxsize=1)
def _packaged_environment() -> Environment:
    return _build_environment(FileSystemLoader(PACKAGED_TEMPLATES))


@lru_cache(maxsize=4)
def _admin_environment(admin: str, signature: tuple[tuple[str, int, int], ...]) -> Environment:
    """Admin templates first, packaged defaults second; one per state of the admin files."""
    packaged = FileSystemLoader(PACKAGED_TEMPLATES)
    return _build_environment(ChoiceLoader([FileSystemLoader(admin), packaged]))


@lru_cache(maxsize=16)
def _admin_path(rules_path: str) -> str:
    return os.path.join(rules_path, "templates")


def template_environment(settings: Settings) -> Environment:
    """The packaged templates, behind the admin's overrides when there are any."""
    admin = _admin_path(str(settings.rules.path))
    signature = _admin_signature(admin)
    return _admin_environment(admin, signature) if signature else _packaged_environment()


_Templates = tuple[Template, Template, Template]  # subject, text, HTML


@lru_cache(maxsize=256)
def _load(env: Environment, language: str, kind: MailKind) -> _Templates | TemplateError:
    """The three templates of a mail, or the error loading them raised.

    The error is remembered too, so a broken or missing override is not read
    and compiled again for every mail.
    """
    prefix = f"{language}/{kind.value}"
    try:
        try:
            subject = env.get_template(f"{prefix}.subject.j2")
        except TemplateNotFound:
            subject = env.from_string("{{ subject }}")
        return subject, env.get_template(f"{prefix}.txt.j2"), env.get_template(f"{prefix}.html.j2")
    except TemplateError as exc:
        return exc.with_traceback(None)


def _render_with(
    env: Environment, language: str, kind: MailKind, context: Mapping[str, Any]
) -> RenderedMail:
    templates = _load(env, language, kind)
    if isinstance(templates, TemplateError):
        raise templates.with_traceback(None)
    subject, text, html = templates
    values = {**context, "language": language, "kind": kind.value}
    return RenderedMail(
        subject=subject.render(values), text=text.render(values), html=html.render(values)
    )


def render(settings: Settings, intent: MailIntent, context: Mapping[str, Any]) -> RenderedMail:
    """Subject, text and HTML of `intent`, in its language (the desk's when unknown)."""
    language = choose_language(settings, intent.language)
    env = template_environment(settings)
    if isinstance(_load(env, language, intent.kind), TemplateNotFound):
        language = settings.helpdesk.language
    try:
        return _render_with(env, language, intent.kind, context)
    except TemplateError as exc:
        structlog.get_logger(__name__).error(
            "admin_template_failed", transport="outbound", kind=intent.kind.value, error=str(exc)
        )
        fallback = language if language in LANGUAGES else settings.helpdesk.language
        return _render_with(_packaged_environment(), fallback, intent.kind, context)


def forget_templates() -> None:
    """Read every template afresh at its next use (SIGHUP): an admin's override changed
    within the same second, or a packaged one after an upgrade in place."""
    for cached in (_packaged_environment, _admin_environment, _load):
        cached.cache_clear()
