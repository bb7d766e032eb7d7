"""Every line logged while a mail is handled names the mail, the transport and the ticket."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from mailgateway.config import LogSettings
from mailgateway.log import configure_logging
from mailgateway.service import Gateway
from mailgateway.telemetry import TALLY
from tests.mails import TECHNICIAN, build_mail, deliver, inbox_fates, register_desk


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    configure_logging(LogSettings(level="info", format="json"))
    capsys.readouterr()

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]

    yield read
    structlog.reset_defaults()
    root = logging.getLogger()
    for ours in [h for h in root.handlers if h.get_name() == "mailgateway"]:
        root.removeHandler(ours)


def test_log_lines_carry_message_id_ticket_and_transport(gateway: Gateway, json_lines: Any,
                                                         ) -> None:
    register_desk(gateway)
    deliver(gateway, build_mail(message_id="abc@client.test"), transport="smtp")
    events = json_lines()
    processed = [e for e in events if e["event"] == "mail processed"]
    assert processed, events
    assert processed[0]["message_id"] == "abc@client.test"
    assert processed[0]["transport"] == "smtp"
    assert processed[0]["ticket"] == "2026-000001"
    stored = [e for e in events if e["event"] == "mail stored"]
    assert stored[0]["message_id"] == "abc@client.test"
    assert all("test-secret" not in json.dumps(e) for e in events)


def test_the_libraries_records_come_out_as_lines_of_the_same_format(
    json_lines: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """aiosmtpd, asyncio and SQLAlchemy log through the standard library: a JSON
    collector must be able to read their lines too, and SIGHUP's new `[log]` applies to
    them as to ours, without a second handler."""
    try:
        raise ConnectionResetError("peer gone")
    except ConnectionResetError:
        logging.getLogger("asyncio").exception("Fatal error on transport")
    [line] = json_lines()
    assert (line["logger"], line["level"], line["event"]) == (
        "asyncio", "error", "Fatal error on transport")
    assert "ConnectionResetError: peer gone" in line["exception"]
    assert "timestamp" in line

    configure_logging(LogSettings(level="info", format="console"))
    logging.getLogger("mail.log").warning("session %s refused", "X")
    [text] = capsys.readouterr().err.splitlines()
    assert "session X refused" in text and "[mail.log]" in text and not text.startswith("{")


def test_warm_up_leaves_no_line_no_count_and_no_row(gateway: Gateway, json_lines: Any) -> None:
    register_desk(gateway)
    before = TALLY.snapshot()
    gateway.warm_up()
    assert [e["event"] for e in json_lines()] == ["rules_loaded"]  # the site's own, as always
    after = TALLY.snapshot()
    assert (after.received, after.processed, after.pipeline.number) == (
        before.received, before.processed, before.pipeline.number)
    assert inbox_fates(gateway) == []
    # The desk's first ticket still gets the first number.
    deliver(gateway, build_mail(message_id="first@client.test"))
    assert inbox_fates(gateway) == [("processed", "2026-000001")]
    processed = [e for e in json_lines() if e["event"] == "mail processed"]
    assert processed and "warm_up" not in processed[0]


def test_warm_up_reads_the_sites_rules_and_logs_them(gateway: Gateway, json_lines: Any,
                                                    ) -> None:
    register_desk(gateway)
    rules = Path(gateway.settings.rules.path)
    rules.mkdir(exist_ok=True)
    (rules / "10-errori.toml").write_text(
        "[[rule]]\nname = 'errori'\nwhen.subject = '(?i)errore'\n"
        f"set.assignee = '{TECHNICIAN}'\n", encoding="utf-8")
    gateway.warm_up()
    events = json_lines()
    # The site's rules, checked against its directory (where the technician is),
    # are logged as at any start; the sample that matched them leaves nothing.
    assert [e["event"] for e in events] == ["rules_loaded"], events
    assert "warm_up" not in events[0]
    assert [r.name for r in gateway.rules.current().rules] == ["errori"]
