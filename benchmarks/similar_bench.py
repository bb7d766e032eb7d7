"""Suggestion lookup time on a large desk: the solved tickets a new request resembles.

100,000 CHIUSO tickets of the generated desk (`solved_desk`: 50 problems in varied
words) over 400 accounts are written with their index rows, then 500 new requests
are looked up one by one as `facts` does for a new ticket (the sender's account,
`similar.scope = "account"`): the database's full-text ranking finds the candidates,
`similar.rank` orders them. The stems of the new requests are computed once before
timing, as in a running desk whose stem cache is warm. The lookups run three rounds:
p50/p99 of every lookup, and of each request's best round (on a shared machine a
lookup of 4 ms sometimes waits 100 ms for a core; its best round shows the work).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from benchmarks.solved_desk import desk_accounts, load_desk, new_requests, solved_desk
from mailgateway.config import Settings
from mailgateway.db.session import create_db_engine
from mailgateway.pipeline.similar import request_text, stems
from mailgateway.solved import similar_solved

ACCOUNTS = 400
BATCH = 10_000
ROUNDS = 3


def bench_similar(settings: Settings, solved: int = 100_000, lookups: int = 500,
                  scope: str = "account") -> dict[str, Any]:
    """p50/p99 milliseconds of one suggestion lookup among `solved` closed tickets."""
    engine = create_db_engine(settings.database)
    try:
        desk = solved_desk(solved, ACCOUNTS)
        started = time.perf_counter()
        accounts: dict[str, int] = {}
        done = 0
        while done < solved:
            batch = [next(desk) for _ in range(min(BATCH, solved - done))]
            with Session(engine) as session, session.begin():
                accounts = load_desk(session, batch, first_id=done + 1, bulk=True)
            done += len(batch)
        load_seconds = time.perf_counter() - started
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:  # what autovacuum does after a bulk load
                connection.execute(text("ANALYZE solved_tickets"))
                connection.commit()
        asked = new_requests(lookups, desk_accounts(ACCOUNTS))
        for request in asked:
            stems(f"{request.subject}\n{request_text(request.body)}")
        rounds: list[list[float]] = []
        with Session(engine) as session:
            for _ in range(ROUNDS):
                timings = []
                for request in asked:
                    asking = f"{request.subject}\n{request.body}"
                    began = time.perf_counter()
                    similar_solved(session, accounts[request.account.email], asking,
                                   scope=scope)
                    timings.append(1000 * (time.perf_counter() - began))
                    session.rollback()
                rounds.append(timings)
    finally:
        engine.dispose()
    every = sorted(t for timings in rounds for t in timings)
    best = sorted(min(times) for times in zip(*rounds, strict=True))
    return {"solved": solved, "lookups": lookups, "rounds": ROUNDS,
            "load_seconds": load_seconds, "p50_ms": statistics.median(every),
            "p99_ms": _p99(every), "best_p50_ms": statistics.median(best),
            "best_p99_ms": _p99(best)}


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
