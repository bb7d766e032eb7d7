"""The suggestions are relevant: on a generated desk of 5,000 solved tickets about 50
problems written in varied words, a solved ticket of the same problem is among the 3
suggestions for at least 80% of 500 new requests, and another account's ticket is
never suggested unless `similar.scope` is "all" (and then anonymised)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from benchmarks.solved_desk import desk_accounts, load_desk, new_requests, solved_desk
from mailgateway.config import DatabaseSettings
from mailgateway.db.models import Ticket
from mailgateway.db.session import create_db_engine
from mailgateway.solved import similar_solved

SOLVED, ASKED, ASKED_WIDE = 5_000, 500, 100


def test_suggestions_find_the_same_problem(database_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    engine = create_db_engine(DatabaseSettings(url=database_url))
    desk = list(solved_desk(SOLVED))
    try:
        with Session(engine) as session, session.begin():
            accounts = load_desk(session, desk)
        problem = {f"2025-{i + 1:06d}": r.problem for i, r in enumerate(desk)}
        owner = {f"2025-{i + 1:06d}": accounts[r.account.email] for i, r in enumerate(desk)}
        asked = new_requests(ASKED, desk_accounts())
        hits = wide_hits = 0
        with Session(engine) as session:
            assert len(session.scalars(select(Ticket.id)).all()) == SOLVED
            started = time.perf_counter()
            for request in asked:
                account = accounts[request.account.email]
                found = similar_solved(session, account, f"{request.subject}\n{request.body}")
                assert 0 < len(found) <= 3
                assert all(s.number is not None and owner[s.number] == account for s in found)
                hits += any(problem[s.number or ""] == request.problem for s in found)
            elapsed = (time.perf_counter() - started) / ASKED
            for request in asked[:ASKED_WIDE]:
                account = accounts[request.account.email]
                wide = similar_solved(session, account, f"{request.subject}\n{request.body}",
                                      scope="all")
                assert len(wide) == 3
                assert all((s.number is None) == (s.subject is None) for s in wide)
                assert all(s.number is None or owner[s.number] == account for s in wide)
                wide_hits += any(problem[s.number or ""] == request.problem for s in wide
                                 if s.number is not None)
    finally:
        engine.dispose()
    with capsys.disabled():
        print(f"\nsuggestion relevance ({engine.dialect.name}): same problem among the 3 "
              f"suggestions for {hits}/{ASKED} = {hits / ASKED:.1%} of new requests "
              f"(scope all: {wide_hits}/{ASKED_WIDE} with the account's own); "
              f"{elapsed * 1000:.2f} ms a lookup on {SOLVED} solved tickets")
    assert hits / ASKED >= 0.80
