"""Ticket numbers: consecutive, never twice, also when a transaction counts on by itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.config import DatabaseSettings
from mailgateway.db.models import TicketCounter
from mailgateway.db.session import create_db_engine, session_factory
from mailgateway.tickets import allocate_number


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(DatabaseSettings(url=database_url))
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def _counter(sessions: sessionmaker[Session]) -> int | None:
    with sessions() as session:
        return session.scalar(select(TicketCounter.last).where(TicketCounter.year == 2026))


def test_a_transaction_counts_on_and_a_rolled_back_savepoint_gives_its_numbers_back(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        numbers = [allocate_number(session, 2026) for _ in range(3)]
        with pytest.raises(RuntimeError), session.begin_nested():
            numbers.append(allocate_number(session, 2026))
            raise RuntimeError("this mail failed")
        numbers += [allocate_number(session, 2026) for _ in range(2)]
    assert numbers == ["2026-000001", "2026-000002", "2026-000003", "2026-000004",
                       "2026-000004", "2026-000005"]
    assert _counter(sessions) == 5

    with sessions.begin() as session:
        assert allocate_number(session, 2026) == "2026-000006"
    with sessions.begin() as session:
        with pytest.raises(RuntimeError), session.begin_nested():
            allocate_number(session, 2026)
            raise RuntimeError("the first mail of the transaction failed")
        assert allocate_number(session, 2026) == "2026-000007"
    assert _counter(sessions) == 7


def test_a_rolled_back_transaction_leaves_the_counter_as_it_was(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        allocate_number(session, 2026)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        for _ in range(3):
            allocate_number(session, 2026)
        raise RuntimeError("the batch failed")
    assert _counter(sessions) == 1
