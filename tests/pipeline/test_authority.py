"""What a technician's mail may do: exactly this technician, this ticket, recently.

The attacks: a staff reply address of one ticket with another ticket's tag; a
reply address that went to someone else; an old one; a forged
Authentication-Results header. Each changes nothing, leaves an event on the
ticket it tried to touch, and tells the ticket's group once.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import OutboxMail
from mailgateway.directory import add_staff
from mailgateway.pipeline.identify import Authority, StaffProof, staff_authority
from mailgateway.reply_token import (
    ReplyToken,
    TokenPurpose,
    read_reply_address,
    reply_address,
    staff_token,
)
from mailgateway.service import Gateway
from mailgateway.views import show_ticket
from tests.mails import GROUP, TECHNICIAN, build_mail, deliver, register_desk, staff_reply_address

TAG = "[Ticket#{number}]"
OTHER = "mario@example.com"  # a technician of another group
TODAY = date(2026, 3, 2)


def _ticket(gateway: Gateway, number: str) -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, TAG, number)


def _refusal_notices(gateway: Gateway) -> list[list[str]]:
    with gateway.sessions() as session:
        return [list(r) for r in session.scalars(
            select(OutboxMail.recipients).where(OutboxMail.kind == "refused_notice"))]


@pytest.fixture
def desk(gateway: Gateway) -> Gateway:
    register_desk(gateway)
    with gateway.sessions.begin() as session:
        add_staff(session, gateway.clock, name="Mario Neri", email=OTHER, group="commerciale")
    for subject in ("Primo problema", "Secondo problema"):
        assert deliver(gateway, build_mail(subject=subject)) == "processed"
    return gateway


def _technician(gateway: Gateway, to: str, subject: str, body: str,
                sender: str = TECHNICIAN) -> str:
    return deliver(gateway, build_mail(sender=sender, to=[to], subject=subject, body=body))


def test_a_reply_address_acts_on_its_own_ticket(desk: Gateway) -> None:
    status = _technician(desk, staff_reply_address("2026-000001", GROUP),
                         "Re: [Ticket#2026-000001] Primo problema", "#chiudi\nRisolto.")
    assert status == "processed"
    assert _ticket(desk, "2026-000001")["status"] == "CHIUSO"


def test_another_tickets_tag_does_not_widen_a_reply_address(desk: Gateway) -> None:
    """Ticket 1's notice, ticket 2's tag: ticket 2 is untouched, and says so."""
    for _ in range(3):
        status = _technician(desk, staff_reply_address("2026-000001", GROUP),
                             "Re: [Ticket#2026-000002] Secondo problema", "#chiudi")
        assert status == "quarantined"
    second = _ticket(desk, "2026-000002")
    assert second["status"] == "APERTO"
    refused = [e for e in second["events"] if e["kind"] == "staff_mail_refused"]
    assert len(refused) == 3
    assert "2026-000001 cannot act on ticket 2026-000002" in refused[0]["reason"]
    assert _refusal_notices(desk) == [[GROUP]]  # told once, not three times
    assert _ticket(desk, "2026-000001")["status"] == "APERTO"


def test_a_reply_address_sent_to_someone_else_grants_nothing(desk: Gateway) -> None:
    # Luca's own notice, used by Mario; the group's notice, used by Mario (not a member).
    for recipient in (TECHNICIAN, GROUP):
        status = _technician(desk, staff_reply_address("2026-000001", recipient),
                             "Re: [Ticket#2026-000001]", "#chiudi", sender=OTHER)
        assert status == "quarantined"
    first = _ticket(desk, "2026-000001")
    assert first["status"] == "APERTO"
    reasons = [e["reason"] for e in first["events"] if e["kind"] == "staff_mail_refused"]
    assert len(reasons) == 2 and all("was not sent to mario@example.com" in r for r in reasons)


def test_an_old_reply_address_answers_but_commands_nothing(
    desk: Gateway, settings: Settings
) -> None:
    old = TODAY - timedelta(days=settings.helpdesk.staff_token_max_age_days + 1)
    address = staff_reply_address("2026-000001", GROUP, issued=old)
    assert _technician(desk, address, "Re: [Ticket#2026-000001]",
                       "#chiudi\nAggiorni alla versione 12.") == "processed"
    first = _ticket(desk, "2026-000001")
    assert first["status"] == "RISPOSTO"  # answered, not closed
    assert first["messages"][-1]["body"] == "Aggiorni alla versione 12."
    [refused] = [e for e in first["events"] if e["kind"] == "staff_mail_refused"]
    assert "#close not done" in refused["reason"] and "older than 90 days" in refused["reason"]
    # A command alone, with nothing to answer, is refused whole.
    assert _technician(desk, address, "Re: [Ticket#2026-000001]", "#chiudi") == "quarantined"
    assert _ticket(desk, "2026-000001")["status"] == "RISPOSTO"


def test_a_reply_address_made_before_tokens_named_their_recipient_grants_nothing(
    desk: Gateway,
) -> None:
    legacy = reply_address("assistenza@example.com", "test-secret",
                           ReplyToken(TokenPurpose.STAFF, "2026-000001"))
    assert _technician(desk, legacy, "Re: [Ticket#2026-000001]", "#chiudi") == "quarantined"
    assert _ticket(desk, "2026-000001")["status"] == "APERTO"


_PASS = "mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
_OURS = "from client.test by mx.example.com (Postfix) with ESMTPS id 1; Mon, 2 Mar 2026"
_THEIRS = "from evil.test by relay.evil.test with SMTP; Mon, 2 Mar 2026"


def _headed(headers: list[tuple[str, str]], body: str) -> bytes:
    """A technician's mail with `headers` on top, in this order."""
    raw = build_mail(sender=TECHNICIAN, subject="Re: [Ticket#2026-000001]", body=body)
    top = "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    return top + raw


@pytest.fixture
def trusting(settings: Settings, clock: FixedClock) -> Any:
    gateway = Gateway(replace(settings, helpdesk=replace(
        settings.helpdesk, trusted_authserv_ids=("mx.example.com",))), clock)
    register_desk(gateway)
    deliver(gateway, build_mail())
    yield gateway
    gateway.close()


@pytest.mark.parametrize("headers, trusted_transport, acts", [
    ([("Authentication-Results", _PASS), ("Received", _OURS)], True, True),
    # Anyone can write the header: a transport whose MTA does not strip it is not believed.
    ([("Authentication-Results", _PASS), ("Received", _OURS)], False, False),
    # Below another host's Received line: written before our MTA saw the mail.
    ([("Received", _OURS), ("Received", _THEIRS), ("Authentication-Results", _PASS)], True,
     False),
    # Below another server's results.
    ([("Authentication-Results", "other.test; spf=pass smtp.mailfrom=example.com"),
      ("Authentication-Results", _PASS)], True, False),
    # A failure outweighs a pass.
    ([("Authentication-Results",
       "mx.example.com; dkim=fail header.d=example.com; dmarc=pass header.from=example.com")],
     True, False),
])
def test_authentication_results_count_only_from_our_own_mta(
    trusting: Gateway, headers: list[tuple[str, str]], trusted_transport: bool, acts: bool
) -> None:
    received = trusting.receive(_headed(headers, "#chiudi"), transport="lmtp",
                                trust_authentication_results=trusted_transport)
    status = trusting.process(received.inbox_id)
    first = _ticket(trusting, "2026-000001")
    assert (status, first["status"]) == (
        ("processed", "CHIUSO") if acts else ("quarantined", "APERTO"))
    assert any(e["kind"] == "staff_mail_refused" for e in first["events"]) is not acts


def _proof(token: ReplyToken | None, vouched: bool = False) -> StaffProof:
    return StaffProof(token, vouched, "s3cret", TODAY, 90)


def test_staff_authority_as_a_pure_function() -> None:
    group_token = staff_token("s3cret", "2026-000001", GROUP, TODAY)
    assert staff_authority(_proof(group_token), TECHNICIAN, GROUP, "2026-000001")[0] is (
        Authority.FULL)
    assert staff_authority(_proof(group_token), TECHNICIAN, None, "2026-000001")[0] is (
        Authority.NONE)
    assert staff_authority(_proof(group_token), TECHNICIAN, GROUP, "2026-000002")[0] is (
        Authority.NONE)
    old = staff_token("s3cret", "2026-000001", TECHNICIAN, TODAY - timedelta(days=91))
    assert staff_authority(_proof(old), TECHNICIAN, None, "2026-000001")[0] is Authority.ANSWER
    assert staff_authority(_proof(None), TECHNICIAN, None, "2026-000001")[0] is Authority.NONE
    assert staff_authority(_proof(None, vouched=True), TECHNICIAN, None,
                           "2026-000001")[0] is Authority.FULL


def test_a_staff_reply_address_reads_back_and_refuses_tampering() -> None:
    token = staff_token("s3cret", "2026-000123", GROUP, TODAY)
    address = reply_address("assistenza@example.com", "s3cret", token)
    assert len(address.partition("@")[0]) <= 64  # RFC 5321's limit for a local part
    assert read_reply_address(address.upper(), "assistenza@example.com", "s3cret") == token
    assert token.was_sent_to("Tecnici@Example.com", "s3cret")
    assert not token.was_sent_to(TECHNICIAN, "s3cret")
    for tampered in (address.replace("000123", "000124"),
                     address.replace(address.split(".")[1], "aaaaaa")):
        assert read_reply_address(tampered, "assistenza@example.com", "s3cret") is None
    assert read_reply_address(address, "assistenza@example.com", "other") is None
