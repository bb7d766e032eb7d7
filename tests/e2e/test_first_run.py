"""The first run, and errors in one line: every command on a fresh, empty data
directory and on a database it cannot reach; configuration mistakes caught when the
configuration is loaded; no public default secret."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailgateway.cli import main
from mailgateway.config import load_settings
from mailgateway.reply_token import ReplyToken, TokenPurpose, read_reply_address, reply_address
from mailgateway.signing_secret import secret_path, with_secret
from tests.conftest import write_toml
from tests.mails import build_mail

UNREACHABLE = "postgresql+psycopg://postgres:hidden@127.0.0.1:9/none"


def _config(tmp_path: Path, database: str | None = None, **sections: dict[str, object]) -> Path:
    """A configuration for a bare machine in `tmp_path`: everything under var/."""
    var = tmp_path / "var"
    data: dict[str, dict[str, object]] = {
        "helpdesk": {"data_dir": str(var)},
        "database": {"url": database or f"sqlite:///{var}/mailgateway.db"},
        "outbound": {"maildir": str(var / "sent")},
        "rules": {"path": str(tmp_path / "rules")},
        "log": {"level": "warning"},
    }
    for name, values in sections.items():
        data[name] = data.get(name, {}) | values
    return write_toml(data, tmp_path / "mailgateway.toml")


def _commands(tmp_path: Path) -> list[tuple[list[str], int]]:
    """Every command but `serve`, with the exit code it has on a fresh database."""
    mail = tmp_path / "mail.eml"
    mail.write_bytes(build_mail())
    archive = tmp_path / "archive"
    archive.mkdir(exist_ok=True)
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("name,email,vat\nStudio Verdi,info@verdi.it,12345678901\n")
    return [
        (["tickets", "list"], 0),
        (["tickets", "list", "--json"], 0),
        (["tickets", "show", "1"], 1),
        (["tickets", "attachment", "1", "--all"], 1),
        (["accounts", "list"], 0),
        (["accounts", "add", "--name", "Studio Rossi", "--email", "rossi@studiorossi.it"], 0),
        (["accounts", "import", str(accounts)], 0),
        (["persons", "list"], 0),
        (["persons", "add", "--account", "nobody@x.it", "--name", "N", "--email", "n@x.it"], 1),
        (["staff", "list"], 0),
        (["staff", "add", "--name", "Luca", "--email", "luca@example.com", "--group", "tecnica"],
         0),
        (["inbox", "list"], 0),
        (["inbox", "show", "99"], 1),
        (["inbox", "retry", "99"], 1),
        (["outbox", "list"], 0),
        (["outbox", "retry", "99"], 1),
        (["dispatch", "--once"], 0),
        (["scheduler", "--once"], 0),
        (["rules", "check"], 0),
        (["rules", "test", str(mail)], 0),
        (["import", str(archive)], 0),
        (["ingest", str(mail)], 0),
        (["db", "upgrade"], 0),
    ]


def _run(capsys: pytest.CaptureFixture[str], config: Path, args: list[str]) -> tuple[int, str]:
    code = main(["--config", str(config), *args])
    return code, capsys.readouterr().err


def test_every_command_works_on_a_fresh_data_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No `db upgrade` first: each command creates the schema it needs, and a mistake is
    one line."""
    for number, (args, expected) in enumerate(_commands(tmp_path)):
        fresh = tmp_path / f"desk-{number}"
        fresh.mkdir()
        code, err = _run(capsys, _config(fresh), args)
        assert code == expected, (args, err)
        assert "Traceback" not in err, args
        if expected:
            assert len(err.strip().splitlines()) == 1 and err.startswith("mailgateway: "), err


def test_every_command_says_an_unreachable_database_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, UNREACHABLE)
    for args, _ in _commands(tmp_path):
        code, err = _run(capsys, config, args)
        assert "Traceback" not in err, args
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        assert "127.0.0.1:9/none" in lines[0] and "hidden" not in lines[0], lines
        # The MTA keeps a mail it could not hand over, and tries again later.
        assert code == (75 if args[0] == "ingest" else 1), (args, err)


def test_serve_waits_for_its_database_and_says_so(tmp_path: Path) -> None:
    """One line per attempt; a reload asked for meanwhile does not end it, SIGTERM does."""
    config = _config(tmp_path, UNREACHABLE, smtp={"port": 0})
    process = subprocess.Popen(
        [sys.executable, "-m", "mailgateway", "--config", str(config), "serve"],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        env=os.environ | {"MAILGATEWAY_SECRET": "a-secret-long-enough-to-serve"})
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("mailgateway: the database postgresql+psycopg://postgres:***@")
        assert first.rstrip().endswith("retrying in 1 s."), first
        process.send_signal(signal.SIGHUP)  # `systemctl reload` while it starts: no end
        second = process.stderr.readline()
        assert second.rstrip().endswith("retrying in 2 s."), second
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.parametrize(("section", "values", "key"), [
    ("smtp", {"port": 70000}, "smtp.port must be a port number from 0 to 65535"),
    ("outbound", {"port": 65536}, "outbound.port must be a port number"),
    ("sla", {"timezone": "Europe/Roma"}, "sla.timezone 'Europe/Roma' is not a known time zone"),
    ("sla", {"business_hours": "lun-ven 9-18"}, "sla.business_hours must look like"),
    ("sla", {"business_hours": "mon-fri 09:00-25:00"}, "sla.business_hours has an hour"),
    ("sla", {"holidays": "XX"}, "sla.holidays 'XX' is not a known country code"),
    ("groups", {"tecnica": {"address": "assistenza@example.com"}},
     "groups.tecnica.address must not be the helpdesk's own address"),
])
def test_configuration_mistakes_are_caught_when_it_is_loaded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str,
        values: dict[str, object], key: str) -> None:
    config = _config(tmp_path, **{section: values})
    code, err = _run(capsys, config, ["tickets", "list"])
    assert code == 2
    [line] = err.strip().splitlines()
    assert key in line and "Traceback" not in err


def test_a_database_directory_that_cannot_be_made_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = _run(capsys, _config(tmp_path, f"sqlite:///{blocker}/db/x.db"),
                     ["tickets", "list"])
    assert code == 1
    [line] = err.strip().splitlines()
    assert "cannot be created (database.url)" in line


def test_serve_refuses_a_desk_whose_new_tickets_reach_nobody(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, _config(tmp_path, smtp={"port": 0}), ["serve"])
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("mailgateway: groups: new tickets would reach nobody")


def test_staff_join_only_groups_that_get_tickets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, groups={"sistemi": {"address": "sistemi@example.com"}})
    add = ["staff", "add", "--name", "Luca", "--email", "luca@example.com", "--group"]
    code, err = _run(capsys, config, [*add, "tecnico"])
    assert code == 1
    assert err.strip() == ("mailgateway: There is no group 'tecnico': use one of amministrativa, "
                           "commerciale, sistemi, tecnica, or configure [groups.tecnico] first.")
    assert _run(capsys, config, [*add, "sistemi"])[0] == 0


def test_no_public_default_secret(tmp_path: Path) -> None:
    for old_default in ("", "change-me"):
        config = _config(tmp_path, helpdesk={"secret": old_default})
        settings = with_secret(load_settings(config))
        assert settings.helpdesk.secret not in ("", "change-me")
        assert len(settings.helpdesk.secret) >= 32
        path = secret_path(settings)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # The same secret on every later start.
        assert with_secret(load_settings(config)).helpdesk.secret == settings.helpdesk.secret
        # A reply address signed with the old public default does not verify.
        forged = reply_address("assistenza@example.com", "change-me",
                               ReplyToken(TokenPurpose.CUSTOMER, "2026-000001"))
        assert read_reply_address(forged, "assistenza@example.com",
                                  settings.helpdesk.secret) is None


def test_serve_beyond_loopback_needs_a_configured_secret(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, smtp={"host": "0.0.0.0", "port": 0})
    code, err = _run(capsys, config, ["serve"])
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("mailgateway: helpdesk.secret must be set to serve on 0.0.0.0")
    assert not secret_path(load_settings(config)).exists()
