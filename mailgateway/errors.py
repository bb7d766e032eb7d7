"""The exception hierarchy, decided once at the edges.

    MailGatewayError
     ├── ConfigError       the configuration file is wrong (one sentence, key named)
     ├── UserError         a command-line mistake (unknown ticket, bad address, missing file)
     ├── TemporaryError    try again later: SMTP 4xx, connection lost, database busy
     └── PermanentError    retrying cannot help: SMTP 5xx, malformed beyond repair

Library exceptions are mapped into Temporary/Permanent where they enter our
code, so retry policy is decided in one place instead of at every call site.
"""

from __future__ import annotations


class MailGatewayError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(MailGatewayError):
    """The configuration is invalid; the message names the key and what was expected."""


class UserError(MailGatewayError):
    """A mistake in what the user asked for; shown as one sentence, no traceback."""


class TemporaryError(MailGatewayError):
    """The operation may succeed if retried later."""


class PermanentError(MailGatewayError):
    """The operation will fail the same way every time."""
