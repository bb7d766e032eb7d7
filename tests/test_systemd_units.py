"""The units in `contrib/systemd/`: systemd accepts every line of them, and the
commands they start are ones the CLI takes.

A misspelt hardening option is only a warning to systemd, which then runs the
service without it; a renamed flag fails at the first start on the admin's host.
Both are caught here instead.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mailgateway.cli import build_parser
from mailgateway.server import COMPONENTS, parse_only
from tests.conftest import skip_or_fail

UNITS = Path(__file__).resolve().parents[1] / "contrib" / "systemd"
INSTALLED_AT = "/usr/local/bin/mailgateway"
# What an instance of the template unit and its environment file give `serve`.
INSTANCE = "smtp,imap"
EXTRA_ARGS = "--metrics-listen 127.0.0.1:9188 --workers 2"


def _commands(unit: Path) -> list[list[str]]:
    """The mailgateway command lines a unit runs, instance and environment filled in."""
    commands = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStartPre", "ExecStart") and value.startswith(INSTALLED_AT):
            value = value.replace("%I", INSTANCE).replace("$MAILGATEWAY_ARGS", EXTRA_ARGS)
            commands.append(shlex.split(value)[1:])
    return commands


def test_systemd_accepts_every_line_of_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        skip_or_fail("systemd-analyze is not installed (Debian package systemd)")
    program = shutil.which("mailgateway")
    assert program is not None, "the mailgateway command is not installed"
    for unit in UNITS.iterdir():  # the binary where this machine has it
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_AT, program))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mailgateway-backup.service", "mailgateway-backup.timer",
                     "mailgateway.service", "mailgateway.target", "mailgateway@.service"]
    checked = subprocess.run([analyze, "verify", *names], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@pytest.mark.parametrize(("unit", "components"), [
    ("mailgateway.service", set(COMPONENTS)), ("mailgateway@.service", {"smtp", "imap"})])
def test_the_units_start_commands_the_cli_takes(unit: str, components: set[str]) -> None:
    commands = _commands(UNITS / unit)
    assert commands and commands[-1][0] == "serve"
    serve = [build_parser().parse_args(c) for c in commands][-1]  # an unknown flag exits
    assert parse_only(serve.only) == components  # an unknown component raises
    if "@" in unit:
        assert (serve.metrics_listen, serve.workers) == ("127.0.0.1:9188", 2)


def test_the_backup_unit_takes_dated_backups_into_the_folder_it_may_write() -> None:
    unit = UNITS / "mailgateway-backup.service"
    [backup] = [build_parser().parse_args(c) for c in _commands(unit)]
    assert (backup.command, backup.dated, backup.keep) == ("db", True, 14)
    state = next(line for line in unit.read_text().splitlines()
                 if line.startswith("StateDirectory="))
    assert Path(backup.folder).name in state.split("=")[1].split()  # ProtectSystem=strict
