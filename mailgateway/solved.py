"""Solved tickets as a search index: written when a ticket closes, read for a new one.

A new request is compared with the CHIUSO tickets of the same account (or, with
`similar.scope = "all"`, of every account) by the database's own full-text
search: SQLite's FTS5 over Snowball Italian stems written here with the row,
PostgreSQL's `to_tsvector('italian', …)` kept by the database in a generated
column. Their rankings (BM25, `ts_rank`) pick the candidates, which
`pipeline.similar.rank` orders by TF-IDF cosine. The row is written by
`index_solved` in the transaction that closes the ticket (`tickets.change_status`),
so a ticket is suggested from the moment it is closed, and never half-written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, event, func, insert, select, text
from sqlalchemy.orm import Session

from mailgateway.db.models import (
    SEARCH_TABLE,
    SEARCH_TERMS,
    Message,
    SolvedTicket,
    Ticket,
    TicketStatus,
)
from mailgateway.pipeline.similar import (
    STOP_WORDS,
    SUBJECT_WEIGHT,
    Candidate,
    Suggestion,
    rank,
    request_text,
    stems,
    weighted_terms,
)

_REQUEST_CHARS = 4000   # what the search reads of a request's first message
_QUERY_WORDS = 40


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def _answer(messages: Sequence[Message]) -> str | None:
    """The last technician answer the customer received (notes are not)."""
    for message in reversed(messages):
        if message.direction == "out" and not message.internal and message.body.strip():
            return message.body
    return None


def index_solved(session: Session, ticket: Ticket) -> None:
    """Make a closed ticket findable. A ticket closed before any answer has nothing
    to offer another customer and stays out. The row takes the ticket's id when it is
    written (a ticket of an import batch has none yet); its stems follow it into the
    SQLite index then (`_write_stems`)."""
    messages = ticket.messages
    answer = _answer(messages)
    if answer is None or ticket.closed_at is None:
        return
    first = next((m.body for m in messages if m.direction == "in"), "")
    request = request_text(first)[:_REQUEST_CHARS]
    row = session.get(SolvedTicket, ticket.id) if ticket.id is not None else None
    if row is None:
        account = ticket.account_id if ticket.account_id is not None else ticket.account.id
        row = SolvedTicket(ticket=ticket, account_id=account)
        session.add(row)
    row.closed_at, row.subject, row.request, row.answer = (
        ticket.closed_at, ticket.subject, request, answer)


@event.listens_for(SolvedTicket, "after_insert")
@event.listens_for(SolvedTicket, "after_update")
def _write_stems(_mapper: Any, connection: Connection, row: SolvedTicket) -> None:
    """Every SolvedTicket the ORM writes has its stems in SQLite's index, in the same
    transaction."""
    if connection.dialect.name == "sqlite":
        _write_search(connection, [(row.ticket_id, row.account_id, row.subject, row.request)])


def write_search_words(session: Session, rows: Sequence[tuple[int, int, str, str]]) -> None:
    """SQLite: the stems of each `(ticket_id, account_id, subject, request)` into the
    FTS5 table, for rows written without the ORM (a migration, a benchmark's bulk
    load). PostgreSQL computes its own (the generated column)."""
    if rows and _sqlite(session):
        _write_search(session.connection(), rows)


def _write_search(connection: Connection, rows: Sequence[tuple[int, int, str, str]]) -> None:
    connection.execute(text(f"DELETE FROM {SEARCH_TABLE} WHERE rowid = :id"),
                       [{"id": row[0]} for row in rows])
    values = []
    for ticket_id, account_id, subject, request in rows:
        subject_stems, request_stems = stems(subject), stems(request)
        prefix = _account_prefix(account_id)
        values.append({
            "id": ticket_id, "subject": " ".join(subject_stems),
            "words": " ".join(request_stems),
            "own_subject": " ".join(prefix + w for w in subject_stems),
            "own_words": " ".join(prefix + w for w in request_stems)})
    connection.execute(
        text(f"INSERT INTO {SEARCH_TABLE} (rowid, subject, words, own_subject, own_words) "
             "VALUES (:id, :subject, :words, :own_subject, :own_words)"), values)


def index_all_closed(connection: Connection, batch: int = 500) -> int:
    """Index every CHIUSO ticket closed before the index existed (migration 0007).
    Reads named columns only: a later migration may add columns the models know and
    this schema does not have yet."""
    session = Session(bind=connection)
    done, last = 0, 0
    while True:
        tickets = session.execute(
            select(Ticket.id, Ticket.account_id, Ticket.subject, Ticket.closed_at)
            .where(Ticket.status == TicketStatus.CHIUSO.value, Ticket.id > last)
            .order_by(Ticket.id).limit(batch)).all()
        if not tickets:
            break
        last = tickets[-1].id
        messages: dict[int, list[tuple[str, bool, str]]] = {}
        for row in session.execute(
                select(Message.ticket_id, Message.direction, Message.internal, Message.body)
                .where(Message.ticket_id.in_([t.id for t in tickets])).order_by(Message.id)):
            messages.setdefault(row.ticket_id, []).append((row.direction, row.internal,
                                                            row.body))
        rows, words = [], []
        for ticket in tickets:
            kept = messages.get(ticket.id, [])
            answers = [b for d, internal, b in kept if d == "out" and not internal and b.strip()]
            if not answers or ticket.closed_at is None:
                continue
            first = next((b for d, _, b in kept if d == "in"), "")
            request = request_text(first)[:_REQUEST_CHARS]
            rows.append({"ticket_id": ticket.id, "account_id": ticket.account_id,
                         "closed_at": ticket.closed_at, "subject": ticket.subject,
                         "request": request, "answer": answers[-1]})
            words.append((ticket.id, ticket.account_id, ticket.subject, request))
        if rows:
            session.execute(insert(SolvedTicket), rows)
            write_search_words(session, words)
            done += len(rows)
    session.close()
    return done


def _account_prefix(account_id: int) -> str:
    return f"a{account_id}_"


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
    subject, _, body = request.partition("\n")
    body = request_text(body)[:_REQUEST_CHARS]
    ids = (_sqlite_search(session, only, subject, body, limit) if _sqlite(session)
           else _postgresql_search(session, only, subject, body, limit))
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


# How many tickets the database's ranking hands over to `similar.rank`.
_CANDIDATES = 30
_WIDE_POOL = 300


def _solved_count(session: Session, account_id: int | None) -> int:
    query = select(func.count()).select_from(SolvedTicket)
    if account_id is not None:
        query = query.where(SolvedTicket.account_id == account_id)
    return session.scalar(query) or 0


def _sqlite_search(session: Session, account_id: int | None, subject: str, body: str,
                   limit: int) -> list[int]:
    prefix = _account_prefix(account_id) if account_id is not None else ""
    subject_stems = [prefix + w for w in stems(subject)]
    body_stems = [prefix + w for w in stems(body)]
    words = list(dict.fromkeys([*subject_stems, *body_stems]))[:_QUERY_WORDS]
    if not words:
        return []
    columns = "{own_subject own_words}" if prefix else "{subject words}"
    weights = f"0, 0, {SUBJECT_WEIGHT}, 1" if prefix else f"{SUBJECT_WEIGHT}, 1, 0, 0"
    match = f"{columns} : (" + " OR ".join(f'"{w}"' for w in words) + ")"
    # The best rowids by BM25, then their stems from the FTS5 table's own content table
    # (`<table>_content`, columns c0… in the table's order): sorting the text of every
    # matching row, or reading it through the FTS5 cursor row by row, costs several
    # times more.
    stored = "c2, c3" if prefix else "c0, c1"
    rows = session.execute(
        text(f"SELECT id, {stored} FROM {SEARCH_TABLE}_content WHERE id IN "
             f"(SELECT rowid FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH :match "
             f"ORDER BY bm25({SEARCH_TABLE}, {weights}) LIMIT :candidates)"),
        {"match": match, "candidates": _CANDIDATES}).all()
    candidates = [Candidate(row[0], weighted_terms(row[1].split(), row[2].split()))
                  for row in rows]
    documents: dict[str, int] = dict((row[0], row[1]) for row in session.execute(
        text(f"SELECT term, doc FROM {SEARCH_TERMS} WHERE term IN :terms")
        .bindparams(bindparam("terms", expanding=True)), {"terms": words}).all())
    return rank(weighted_terms(subject_stems, body_stems), candidates, documents,
                _solved_count(session, account_id), limit)


def _query_words(request: str) -> list[str]:
    """The words PostgreSQL is asked for, unstemmed: its `italian` configuration
    stems them and drops its own stop words."""
    words: list[str] = []
    for word in request.lower().replace("'", " ").replace("’", " ").split():
        bare = "".join(c for c in word if c.isalnum())
        if bare and bare not in STOP_WORDS and bare not in words and len(bare) <= 30:
            words.append(bare)
    return words[:_QUERY_WORDS]


# ts_rank's weights of D, C, B, A: the request (D) a third of the subject (A).
_RANK_WEIGHTS = "{0.33, 0.2, 0.4, 1.0}"
_LEXEME = re.compile(r"'((?:[^']|'')*)'(?::([0-9A-D,]+))?")


def _lexemes(vector: str) -> dict[str, int]:
    """A tsvector's text as term counts, positions weighted A (the subject) counted
    `SUBJECT_WEIGHT` times."""
    counts: dict[str, int] = {}
    for lexeme, positions in _LEXEME.findall(vector):
        term = lexeme.replace("''", "'")
        weight = sum(SUBJECT_WEIGHT if p.endswith("A") else 1
                     for p in positions.split(",")) if positions else 1
        counts[term] = counts.get(term, 0) + weight
    return counts


def _postgresql_search(session: Session, account_id: int | None, subject: str, body: str,
                       limit: int) -> list[int]:
    words = _query_words(f"{subject}\n{body}")
    if not words:
        return []
    own = f"WHERE account_id = {int(account_id)}" if account_id is not None else ""
    asked = session.execute(text(
        "SELECT setweight(to_tsvector('italian', :subject), 'A')::text, "
        "to_tsvector('italian', :body)::text, "
        f"(SELECT count(*) FROM solved_tickets {own})"),
        {"subject": subject, "body": body}).one()
    if not asked[2]:
        return []  # nothing solved yet to resemble
    query = _lexemes(asked[0])
    for term, count in _lexemes(asked[1]).items():
        query[term] = query.get(term, 0) + count
    # One pass over the tickets the query matches: the best by ts_rank with their
    # lexemes, and how many hold each of the query's terms. The account's tickets are
    # read first (OFFSET 0 keeps the planner from merging the two filters): they are
    # few, where the terms' postings span the whole desk.
    # Across every account the matches are most of the desk: the counts are taken
    # among the best `_WIDE_POOL` of them.
    tickets = (f"(SELECT ticket_id, search FROM solved_tickets {own} OFFSET 0) AS own"
               if own else "solved_tickets")
    pool = "" if own else f"ORDER BY score DESC LIMIT {_WIDE_POOL}"
    rows = session.execute(text(
        "WITH asked AS (SELECT to_tsquery('italian', :query) AS query), "
        "matching AS MATERIALIZED (SELECT ticket_id, search, "
        f"ts_rank('{_RANK_WEIGHTS}', search, query) AS score FROM {tickets}, asked "
        f"WHERE search @@ query {pool}) "
        "(SELECT 0, ticket_id, search::text FROM (SELECT ticket_id, search FROM matching "
        " ORDER BY score DESC, ticket_id DESC LIMIT :candidates) AS best) "
        "UNION ALL "
        "(SELECT 1, count(*), term FROM matching, unnest(tsvector_to_array(search)) AS term "
        " WHERE term = ANY(:terms) GROUP BY term)"),
        {"query": " | ".join(words), "candidates": _CANDIDATES, "terms": list(query)}).all()
    candidates = [Candidate(row[1], _lexemes(row[2])) for row in rows if row[0] == 0]
    documents = {row[2]: row[1] for row in rows if row[0] == 1}
    total = asked[2] if own else min(asked[2], _WIDE_POOL)
    return rank(query, candidates, documents, total, limit)
