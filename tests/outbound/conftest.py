"""Fixtures of the outbound tests: sessions on the shared test database, a ticket to
mail about, and the SMTP sink playing the relay."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import Account, OutboxMail, Person, Ticket, TicketStatus
from mailgateway.db.session import create_db_engine, session_factory
from tests.smtp_sink import SmtpSink
from tests.smtp_sink import smtp_sink as smtp_sink  # re-exported as a fixture

TicketFactory = Callable[..., Ticket]


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(settings.database)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def relay_settings(settings: Settings, smtp_sink: SmtpSink) -> Settings:
    """The test settings with the sink as the SMTP relay."""
    outbound = replace(
        settings.outbound,
        transport="smtp",
        host=smtp_sink.host,
        port=smtp_sink.port,
        timeout_seconds=5,
    )
    return replace(settings, outbound=outbound)


@pytest.fixture
def make_ticket(sessions: sessionmaker[Session], clock: FixedClock) -> TicketFactory:
    """Commit an account, a person and a ticket; returns the (detached) ticket."""
    counter = iter(range(123, 10_000))

    def make(
        *,
        language: str = "it",
        subject: str = "Errore 98,20 su MOCO: perché?",
        with_person: bool = True,
    ) -> Ticket:
        serial = next(counter)
        now = clock.now()
        with sessions.begin() as session:
            account = Account(
                name="Studio Rossi & Figli",
                main_email=f"rossi{serial}@studiorossi.it",
                vat_number="01234567890",
                language=language,
                created_at=now,
            )
            person = None
            if with_person:
                person = Person(
                    account=account,
                    name="Niccolò Bianchi",
                    email=f"niccolo{serial}@studiorossi.it",
                    created_at=now,
                )
            ticket = Ticket(
                number=f"2026-{serial:06d}",
                status=TicketStatus.APERTO.value,
                subject=subject,
                product="Multi / Lynfa Studio (Cod. 2)",
                request_type="tecnica",
                impact="bloccato",
                group="tecnica",
                account=account,
                person=person,
                language=language,
                created_at=now,
                updated_at=now,
                due_at=now + timedelta(hours=24),
                root_message_id=f"root{serial}@studiorossi.it",
            )
            session.add(ticket)
            session.flush()
            session.refresh(ticket, ["account", "person", "assignee"])
        return ticket

    return make


def outbox_ids(sessions: sessionmaker[Session], message_ids: Sequence[str]) -> list[int]:
    """The ids of committed outbox rows, in the order of `message_ids`."""
    with sessions() as session:
        found = dict(session.execute(select(OutboxMail.message_id, OutboxMail.id)
                                     .where(OutboxMail.message_id.in_(message_ids))).all())
    return [found[m] for m in message_ids]
