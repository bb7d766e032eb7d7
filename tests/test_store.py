"""The store seam: a plain session, made by nobody but SQLAlchemy, commits every row
a mail causes; the batch store makes what the plain one makes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.db.models import (
    Attachment,
    AutoAnswer,
    Event,
    InboxMail,
    Message,
    OutboxMail,
    ThreadRef,
    Ticket,
)
from mailgateway.ingest.batch import receive_batch
from mailgateway.pipeline.parse import parse_mail
from mailgateway.pipeline.prepare import finding_settings, prepare_mail
from mailgateway.pipeline.process import process_inbox_mail
from mailgateway.service import Gateway
from mailgateway.store import SessionStore
from tests.mails import CUSTOMER, build_mail, register_desk

_COUNTED = (Ticket, Message, Attachment, Event, OutboxMail, ThreadRef, AutoAnswer)


def _counts(gateway: Gateway) -> dict[str, int]:
    with gateway.sessions() as session:
        return {model.__name__: int(session.scalar(select(func.count()).select_from(model)) or 0)
                for model in _COUNTED}


def _process_in_plain_session(gateway: Gateway, raw: bytes) -> str:
    received = gateway.receive(raw, transport="pipe")
    with Session(gateway.engine) as session, session.begin():
        row = session.get(InboxMail, received.inbox_id)
        assert row is not None
        process_inbox_mail(SessionStore(session), gateway.pipeline, row, parse_mail(raw))
        return row.status


def _conversation() -> list[bytes]:
    """A request, then a reply to it with a file, then a reply by its tag."""
    return [
        build_mail(message_id="request@client.test"),
        build_mail(sender=CUSTOMER, subject="Re: Errore 98,20 su MOCO", body="Ecco il log.",
                   in_reply_to="request@client.test", references=["request@client.test"],
                   attachments=[("log.txt", b"errore 98,20\n", "text/plain")]),
        build_mail(subject="R: [Ticket#2026-000001] Errore", body="Ancora nulla?"),
    ]


# What the conversation causes, however it is processed.
_EXPECTED = {
    "Ticket": 1, "Message": 3, "Attachment": 1,
    "Event": 3,  # created, two customer replies
    "OutboxMail": 4,  # acknowledgment and notice, then a notice per reply
    "ThreadRef": 7,  # the three mails' ids and the four outbox rows' ids
    "AutoAnswer": 1,  # the acknowledgment
}


def _check_conversation(gateway: Gateway) -> None:
    assert _counts(gateway) == _EXPECTED
    with gateway.sessions() as session:
        [ticket] = session.scalars(select(Ticket))
        assert [m.body for m in ticket.messages][1:] == ["Ecco il log.", "Ancora nulla?"]
        assert [a.filename for a in ticket.messages[1].attachments] == ["log.txt"]
        assert {r.ticket_id for r in session.scalars(select(ThreadRef))} == {ticket.id}
        assert [e.kind for e in ticket.events] == ["created", "customer_replied",
                                                   "customer_replied"]


def test_a_plain_session_commits_every_row_a_mail_causes(gateway: Gateway) -> None:
    register_desk(gateway)
    assert [_process_in_plain_session(gateway, raw) for raw in _conversation()] == [
        "processed"] * 3
    _check_conversation(gateway)


def test_the_batch_store_writes_what_the_plain_store_writes(gateway: Gateway) -> None:
    register_desk(gateway)
    settings = finding_settings(gateway.settings)
    outcomes = receive_batch(
        gateway, [prepare_mail(raw, settings) for raw in _conversation()], "import")
    assert [o.status for o in outcomes] == ["processed"] * 3
    _check_conversation(gateway)
