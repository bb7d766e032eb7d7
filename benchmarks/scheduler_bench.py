"""One scheduler pass over a desk of 100,000 tickets, 1,000 of them due; then a pass
with nothing due.

The desk is written straight into a fresh site's database (one statement per table):
a thousand accounts, and tickets in every state a desk accumulates — mostly closed,
some answered and waiting, some waiting for their first answer. The due ones are
400 reminders, 300 auto-closes and 300 overdue signals. Both passes run in this
process at a fixed instant, as `mailgateway --now … scheduler --once` would.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import Account, Ticket
from mailgateway.db.session import create_db_engine
from mailgateway.scheduler import Due, run_pass

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)


def _tickets(total: int, due: int, accounts: list[int]) -> list[dict[str, Any]]:
    rng = random.Random(5)
    day = timedelta(days=1)
    kinds = (["reminder"] * (due * 4 // 10) + ["autoclose"] * (due * 3 // 10)
             + ["overdue"] * (due - due * 4 // 10 - due * 3 // 10))
    kinds += rng.choices(["closed", "waiting", "reminded", "working", "fresh"],
                         weights=[60, 15, 10, 10, 5], k=total - len(kinds))
    rng.shuffle(kinds)
    rows = []
    for number, kind in enumerate(kinds, start=1):
        created = NOW - day * rng.uniform(10, 400)
        answered: datetime | None = NOW - day * rng.uniform(10, 300)
        status, reminded, due_at = "CHIUSO", None, created + day
        if kind == "reminder":
            status, answered = "RISPOSTO", NOW - day * rng.uniform(5.01, 6.9)
        elif kind == "autoclose":
            status, answered = "RISPOSTO", NOW - day * rng.uniform(7.01, 9)
            reminded = answered + day * 5
        elif kind == "overdue":
            status, answered, due_at = "APERTO", None, NOW - day * rng.uniform(0.01, 3)
        elif kind == "waiting":
            status, answered = "RISPOSTO", NOW - day * rng.uniform(0.1, 4.9)
        elif kind == "reminded":
            status, answered = "RISPOSTO", NOW - day * rng.uniform(5.1, 6.9)
            reminded = answered + day * 5
        elif kind == "working":
            status = "IN_GESTIONE"
        elif kind == "fresh":
            status, answered, due_at = "APERTO", None, NOW + day * rng.uniform(0.01, 1)
        rows.append({
            "number": f"2026-{number:06d}", "status": status, "subject": f"Richiesta {number}",
            "request_type": "tecnica", "impact": "difficolta", "group": "tecnica",
            "account_id": rng.choice(accounts), "language": "it", "rules": [],
            "watchers": [], "created_at": created, "updated_at": created,
            "due_at": due_at, "answered_at": answered, "reminded_at": reminded,
            "overdue_signalled_at": None,
        })
    return rows


def bench_scheduler(
    settings: Settings, tickets: int = 100_000, due: int = 1_000
) -> dict[str, Any]:
    """Seconds of a pass handling `due` of `tickets`, and of the next one (nothing due)."""
    engine = create_db_engine(settings.database)
    try:
        with engine.begin() as connection:
            connection.execute(insert(Account), [
                {"name": f"Studio {n}", "main_email": f"studio{n}@bench.example",
                 "vat_number": "", "verified": True, "created_at": NOW} for n in range(1000)])
            ids = list(connection.execute(select(Account.id)).scalars())
            rows = _tickets(tickets, due, ids)
            for start in range(0, tickets, 20_000):
                connection.execute(insert(Ticket), rows[start:start + 20_000])
        clock = FixedClock(NOW)
        started = time.perf_counter()
        handled = run_pass(engine, settings, clock)
        busy = time.perf_counter() - started
        started = time.perf_counter()
        again = run_pass(engine, settings, clock)
        idle = time.perf_counter() - started
    finally:
        engine.dispose()
    counts = {d.value: sum(h.due is d for h in handled) for d in Due}
    if len(handled) != due or again:
        raise RuntimeError(f"the pass handled {counts}, then {len(again)} more; expected {due}")
    return {"tickets": tickets, "due": due, "pass_seconds": round(busy, 3),
            "idle_pass_ms": round(idle * 1000, 1), **counts}
