"""The secret that signs reply and bounce addresses: never a public default.

A configuration without one (`helpdesk.secret` empty, or the `change-me` of
older example files) gets a random secret generated into `data_dir/secret` on
first use and read from there afterwards, so a desk tried on one machine is
safe. Anyone who knew a default could otherwise forge a technician's signed
reply address. A server that listens beyond loopback is production, where
several processes (or a restored machine) must share one secret: there it
must be configured, and `serve` refuses to start without it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import replace
from pathlib import Path

from mailgateway.config import SECRET_ENV, Settings
from mailgateway.errors import ConfigError

UNSET = frozenset({"", "change-me"})
SECRET_FILE = "secret"


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE


def configured(settings: Settings) -> bool:
    """The secret comes from the configuration or the environment, not from data_dir."""
    return settings.helpdesk.secret.strip() not in UNSET


def _read_or_create(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another command made it meanwhile: use theirs
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(handle, "w", encoding="ascii") as stream:
        stream.write(secret + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    return secret


def with_secret(settings: Settings) -> Settings:
    """`settings` with a secret to sign with: the configured one, else data_dir's."""
    if configured(settings):
        return settings
    path = secret_path(settings)
    try:
        secret = _read_or_create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"helpdesk.secret is not set and {path} cannot be used for a "
                          f"generated one (helpdesk.data_dir): {exc}.") from None
    if len(secret) < 16:
        raise ConfigError(f"{path} holds no usable secret; delete it to have a new one made, "
                          "or set helpdesk.secret.")
    return replace(settings, helpdesk=replace(settings.helpdesk, secret=secret))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving_secret(original: Settings) -> None:
    """`serve` on a non-loopback address needs a configured secret (see the module)."""
    if configured(original) or not original.smtp.enabled or _loopback(original.smtp.host):
        return
    raise ConfigError(
        f"helpdesk.secret must be set to serve on {original.smtp.host} (smtp.host): a "
        f"generated secret would differ on every machine. Set it in the configuration or in "
        f"${SECRET_ENV}, e.g. to the output of: python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'")
