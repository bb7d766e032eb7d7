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


def configure_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _drop_warm_up,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per event, line and newline together: `serve`'s worker processes
        # share its stderr, and two writes each would interleave their lines.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    # mail-parser warns about every MIME type it does not render; we handle them.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
