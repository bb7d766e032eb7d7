"""structlog set-up: one event per line on stderr, context bound per mail.

`ticket`, `message_id` and `transport` are bound as contextvars by the
stages that learn them, so every line logged while a mail is handled
carries them without being passed around.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog

from mailgateway.config import LogSettings


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time of the write (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _drop_warm_up(
    _logger: object, _method: str, event: structlog.typing.EventDict,
) -> structlog.typing.EventDict:
    """The sample mail of `Gateway.warm_up` leaves no line: it is no mail of the desk's."""
    if event.get("warm_up"):
        raise structlog.DropEvent
    event.pop("warm_up", None)
    return event


_HANDLER = "mailgateway"  # the standard library's handler of ours, replaced when called again


def configure_logging(settings: LogSettings) -> None:
    """Our events and the libraries' standard-library records (aiosmtpd, asyncio,
    SQLAlchemy) alike: one line each, in the configured format, so that a JSON
    collector never meets a line it cannot read. Called again, it replaces the set-up
    (SIGHUP applies a changed `[log]`)."""
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamped: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _drop_warm_up,
            *stamped,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per event, line and newline together: `serve`'s worker processes
        # share its stderr, and two writes each would interleave their lines.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    libraries = logging.StreamHandler(cast(TextIO, _CurrentStderr()))
    libraries.set_name(_HANDLER)
    libraries.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *stamped],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(earlier)
    root.addHandler(libraries)
    root.setLevel(max(level, logging.WARNING))
    # mail-parser warns about every MIME type it does not render; we handle them.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
