"""Every line logged while a mail is handled names the mail, the transport and the ticket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from mailgateway.config import LogSettings
from mailgateway.log import configure_logging
from mailgateway.service import Gateway
from mailgateway.telemetry import TALLY
from tests.mails import build_mail, deliver, inbox_fates, register_desk


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    configure_logging(LogSettings(level="info", format="json"))
    capsys.readouterr()

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]

    yield read
    structlog.reset_defaults()


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


def test_warm_up_leaves_no_line_no_count_and_no_row(gateway: Gateway, json_lines: Any) -> None:
    register_desk(gateway)
    before = TALLY.snapshot()
    gateway.warm_up()
    assert json_lines() == []
    after = TALLY.snapshot()
    assert (after.received, after.processed, after.pipeline.number) == (
        before.received, before.processed, before.pipeline.number)
    assert inbox_fates(gateway) == []
    # The desk's first ticket still gets the first number.
    deliver(gateway, build_mail(message_id="first@client.test"))
    assert inbox_fates(gateway) == [("processed", "2026-000001")]
    processed = [e for e in json_lines() if e["event"] == "mail processed"]
    assert processed and "warm_up" not in processed[0]
