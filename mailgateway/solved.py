"""Solved tickets as a search index: written when a ticket closes, read for a new one.

A new request is compared with the CHIUSO tickets of the same account (or, with
`similar.scope = "all"`, of every account) by the database's own full-text
search: SQLite's FTS5 over Snowball Italian stems written here with the row,
PostgreSQL's `to_tsvector('italian', …)` kept by the database in a generated
column. Both rank by relevance (BM25, `ts_rank`). The row is written by
`index_solved` in the transaction that closes the ticket (`tickets.change_status`),
so a ticket is suggested from the moment it is closed, and never half-written.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, select, text
from sqlalchemy.orm import Session

from mailgateway.db.models import SEARCH_TABLE, Message, SolvedTicket, Ticket, TicketStatus
from mailgateway.pipeline.similar import STOP_WORDS, Suggestion, distinct_stems, stems

_REQUEST_CHARS = 4000   # what the search reads of a request: its subject and first lines
_QUERY_WORDS = 40


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _answer(messages: Sequence[Message]) -> str | None:
    """The last technician answer the customer received (notes are not)."""
    for message in reversed(messages):
        if message.direction == "out" and not message.internal and message.body.strip():
            return message.body
    return None


def _request(ticket: Ticket, messages: Sequence[Message]) -> str:
    first = next((m.body for m in messages if m.direction == "in"), "")
    return f"{ticket.subject}\n{first}"[:_REQUEST_CHARS]


def index_solved(session: Session, ticket: Ticket) -> None:
    """Make a closed ticket findable. A ticket closed before any answer has nothing
    to offer another customer and stays out."""
    messages = ticket.messages
    answer = _answer(messages)
    if answer is None or ticket.closed_at is None:
        return
    request = _request(ticket, messages)
    session.merge(SolvedTicket(ticket_id=ticket.id, account_id=ticket.account_id,
                               closed_at=ticket.closed_at, request=request, answer=answer))
    if _sqlite(session):
        session.execute(text(f"DELETE FROM {SEARCH_TABLE} WHERE rowid = :id"), {"id": ticket.id})
        session.execute(
            text(f"INSERT INTO {SEARCH_TABLE} (rowid, words, account) "
                 "VALUES (:id, :words, :account)"),
            {"id": ticket.id, "words": " ".join(stems(request)),
             "account": _account_token(ticket.account_id)})


def forget_solved(session: Session, ticket_id: int) -> None:
    """Take a ticket out of the suggestions (a ticket deleted or reopened by hand)."""
    session.execute(delete(SolvedTicket).where(SolvedTicket.ticket_id == ticket_id))
    if _sqlite(session):
        session.execute(text(f"DELETE FROM {SEARCH_TABLE} WHERE rowid = :id"), {"id": ticket_id})


def index_all_closed(connection: Connection, batch: int = 500) -> int:
    """Index every CHIUSO ticket not indexed yet (migration 0008 on an existing desk)."""
    session = Session(bind=connection)
    done = 0
    last = 0
    while True:
        tickets = session.scalars(
            select(Ticket).where(Ticket.status == TicketStatus.CHIUSO.value, Ticket.id > last)
            .order_by(Ticket.id).limit(batch)).all()
        if not tickets:
            break
        for ticket in tickets:
            index_solved(session, ticket)
            done += 1
        last = tickets[-1].id
        session.flush()
        session.expunge_all()
    session.close()
    return done


def _account_token(account_id: int) -> str:
    return f"a{account_id}"


def similar_solved(
    session: Session, account_id: int | None, request: str, *, scope: str = "account",
    limit: int = 3,
) -> tuple[Suggestion, ...]:
    """Up to `limit` solved tickets whose request resembles `request`, best first:
    the account's own (scope "account"), or any account's (scope "all"), another
    account's shown by its answer alone."""
    if scope == "off" or limit <= 0 or (account_id is None and scope != "all"):
        return ()
    only = account_id if scope != "all" else None
    ids = (_sqlite_search(session, only, request, limit) if _sqlite(session)
           else _postgresql_search(session, only, request, limit))
    if not ids:
        return ()
    rows = session.execute(
        select(SolvedTicket.ticket_id, SolvedTicket.account_id, SolvedTicket.answer,
               Ticket.number, Ticket.subject)
        .join(Ticket, Ticket.id == SolvedTicket.ticket_id)
        .where(SolvedTicket.ticket_id.in_(ids))).all()
    by_id = {row.ticket_id: row for row in rows}
    found = []
    for ticket_id in ids:
        row = by_id.get(ticket_id)
        if row is None:
            continue
        own = row.account_id == account_id
        found.append(Suggestion(row.answer, row.number if own else None,
                                row.subject if own else None))
    return tuple(found)


def _sqlite_search(session: Session, account_id: int | None, request: str,
                   limit: int) -> list[int]:
    words = distinct_stems(request, _QUERY_WORDS)
    if not words:
        return []
    query = "words : (" + " OR ".join(f'"{w}"' for w in words) + ")"
    if account_id is not None:
        query = f'account : "{_account_token(account_id)}" AND {query}'
    return list(session.scalars(
        text(f"SELECT rowid FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH :query "
             "ORDER BY rank LIMIT :limit"), {"query": query, "limit": limit}))


def _query_words(request: str) -> list[str]:
    """The words PostgreSQL is asked for, unstemmed: its `italian` configuration
    stems them and drops its own stop words."""
    words: list[str] = []
    for word in request.lower().replace("'", " ").replace("’", " ").split():
        bare = "".join(c for c in word if c.isalnum())
        if bare and bare not in STOP_WORDS and bare not in words and len(bare) <= 30:
            words.append(bare)
    return words[:_QUERY_WORDS]


def _postgresql_search(session: Session, account_id: int | None, request: str,
                       limit: int) -> list[int]:
    words = _query_words(request)
    if not words:
        return []
    account = "AND account_id = :account " if account_id is not None else ""
    return list(session.scalars(text(
        "SELECT ticket_id FROM solved_tickets, to_tsquery('italian', :query) AS query "
        f"WHERE search @@ query {account}"
        "ORDER BY ts_rank(search, query) DESC, ticket_id DESC LIMIT :limit"),
        {"query": " | ".join(words), "account": account_id, "limit": limit}))
