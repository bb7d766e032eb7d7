"""The effects of a decision: tickets, messages, attachments, events, outbox rows.

Everything here writes into the caller's session; nothing commits. Each
function applies one kind of `Decision` and returns the ticket it touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import cache
from typing import Any, cast

import structlog
from sqlalchemy import Insert, Table, bindparam, func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from mailgateway.attachments import safe_filename, store_file_soon
from mailgateway.db.models import (
    Account,
    Attachment,
    Message,
    Person,
    Staff,
    ThreadRef,
    Ticket,
    TicketStatus,
)
from mailgateway.db.session import (
    attach_inserted,
    execute_later,
    get_held,
    transaction_cache,
    wait_before_commit,
)
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.context import (
    SENDERS,
    THREAD_REFS,
    TICKET_IDS,
    Analysis,
    InboxEntry,
    Pipeline,
)
from mailgateway.pipeline.identify import Sender
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.thread import clean_subject
from mailgateway.sla import first_response_due
from mailgateway.tickets import (
    EventRow,
    TicketAction,
    add_event,
    allocate_number,
    change_status,
    new_ticket_id,
    record_event,
)

log = structlog.get_logger()


_THREAD_REFS = cast(Table, ThreadRef.__table__)


@cache
def _remembering(dialect: str) -> Insert:
    """Built once per dialect, on first use: one runs for every mail that reaches a
    ticket, and importing PostgreSQL's dialect (with asyncio) slowed SQLite's start-up."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(_THREAD_REFS).on_conflict_do_nothing()
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(_THREAD_REFS).on_conflict_do_nothing()


def _remember_message_id(session: Session, mail: ParsedMail, ticket: Ticket) -> None:
    """Replies may reference this mail; the first ticket to know an id keeps it.

    The row is written with the commit. Until then the mails of the same batch
    find it in the transaction's cache of referenced ids, which holds every id
    the batch references (`process.look_up_batch`); a mail processed alone
    writes it before anything else could look.
    """
    if not mail.message_id:
        return
    message_id = mail.message_id[:998]
    dialect = session.get_bind().dialect.name
    execute_later(session, _remembering(dialect),
                  {"message_id": message_id, "ticket_id": ticket.id})
    known = transaction_cache(session, THREAD_REFS, forget_on_rollback=True)
    if message_id in known and known[message_id] is None:  # looked up, and no ticket knew it
        known[message_id] = ticket.id


def _keep_attachments(
    session: Session, pipeline: Pipeline, mail: ParsedMail
) -> tuple[list[dict[str, Any]], list[str]]:
    """Store what may be kept: the kept files' rows (without their message) and the
    names of the files refused for their size. The files are written while the
    pipeline goes on; the commit waits for them."""
    limit = pipeline.settings.helpdesk.max_attachment_bytes
    kept: list[dict[str, Any]] = []
    refused: list[str] = []
    for part in mail.attachments:
        name = safe_filename(part.filename, part.content_type)
        if len(part.payload) > limit:
            refused.append(name)
            continue
        digest, written = store_file_soon(pipeline.settings.data_dir, part.payload)
        wait_before_commit(session, written)
        kept.append({"filename": name, "content_type": part.content_type[:255],
                     "size": len(part.payload), "sha256": digest})
    return kept, refused


_MESSAGES = cast(Table, Message.__table__)
_ATTACHMENTS = cast(Table, Attachment.__table__)
_INSERT_MESSAGE = insert(_MESSAGES)
# A file's row names its message by the mail it came in (one message a mail), so
# that both can wait for the commit: the messages of a batch are written first.
_INSERT_ATTACHMENT = insert(_ATTACHMENTS).values(
    message_id=select(func.max(_MESSAGES.c.id))
    .where(_MESSAGES.c.inbox_id == bindparam("inbox_id")).scalar_subquery())


def _add_message(
    session: Session, ticket: Ticket, inbox: InboxEntry, *, direction: str, author: str,
    body: str, at: datetime, internal: bool = False, refused: Sequence[str] = (),
    files: Sequence[dict[str, Any]] = (),
) -> None:
    """Write a message of `ticket` and its kept files' rows with the commit.

    Rows, not ORM objects: nothing reads a message back in the transaction that
    writes it, so a batch's messages go in one statement, and its files' rows
    in another.
    """
    execute_later(session, _INSERT_MESSAGE, {
        "ticket_id": ticket.id, "inbox_id": inbox.id, "direction": direction,
        "author": author, "body": body, "internal": internal,
        "refused_attachments": list(refused), "created_at": at})
    for file in files:
        execute_later(session, _INSERT_ATTACHMENT, {"inbox_id": inbox.id, **file})


def _customer_recipients(ticket: Ticket) -> tuple[tuple[str, ...], tuple[str, ...]]:
    primary = ticket.person.email if ticket.person is not None else ticket.account.main_email
    return (primary,), tuple(w for w in ticket.watchers or () if w != primary)


def _language(pipeline: Pipeline, ticket: Ticket | None, account: Account | None = None) -> str:
    chosen = account.language if account is not None else None
    if ticket is not None:
        chosen = ticket.language
    return chosen or pipeline.settings.helpdesk.language


def _thread_ids(
    mail: ParsedMail, ticket: Ticket | None, to_customer_thread: bool
) -> tuple[str | None, tuple[str, ...]]:
    """A mail answers the mail that caused it; a technician's answer is threaded under the
    customer's first mail instead, the one id the customer's client surely knows."""
    if to_customer_thread and ticket is not None and ticket.root_message_id:
        return ticket.root_message_id, (ticket.root_message_id,)
    refs = tuple(mail.references) + ((mail.message_id,) if mail.message_id else ())
    return mail.message_id, refs


def _mail(
    session: Session, pipeline: Pipeline, analysis: Analysis, kind: MailKind,
    to: Sequence[str], ticket: Ticket | None, *, cc: Sequence[str] = (),
    to_customer_thread: bool = False, **context: Any,
) -> None:
    """Queue one mail; automatic ones are never sent in answer to a machine."""
    intent_to = tuple(a for a in to if a)
    if not intent_to:
        return
    in_reply_to, references = _thread_ids(analysis.mail, ticket, to_customer_thread)
    intent = MailIntent(
        kind=kind, to=intent_to, cc=tuple(cc), ticket_id=ticket.id if ticket else None,
        language=_language(pipeline, ticket), in_reply_to=in_reply_to,
        references=references, context=context,
    )
    if intent.automatic and not analysis.classification.may_auto_answer:
        log.info("automatic answer suppressed", kind=kind.value,
                 reason=analysis.classification.reason)
        return
    pipeline.mailer(session, intent)


def apply_reject(
    session: Session, pipeline: Pipeline, analysis: Analysis, decision: d.Reject
) -> Ticket | None:
    ticket = get_held(session, Ticket, decision.ticket.id) if decision.ticket else None
    if ticket is not None:
        add_event(session, record_event(ticket, "refused_mail", actor=analysis.sender.email,
                                        at=pipeline.clock.now(), reason=decision.reason))
    _mail(session, pipeline, analysis, decision.answer, (analysis.mail.from_addr,), ticket,
          subject=analysis.mail.subject, reason=decision.reason)
    return ticket


def _unverified_account(session: Session, pipeline: Pipeline, sender: Sender) -> Account:
    account = Account(name=sender.name or sender.email, main_email=sender.email,
                      vat_number="", verified=False, created_at=pipeline.clock.now())
    session.add(account)
    session.flush()
    transaction_cache(session, SENDERS).pop(sender.email, None)
    return account


def _watchers(session: Session, mail: ParsedMail, account: Account, primary: str) -> list[str]:
    """Collaborators in Cc who belong to the account follow the ticket."""
    candidates = [a for a in mail.cc if a != primary]
    if not candidates:
        return []
    persons = session.execute(
        select(Person.email).where(Person.email.in_(candidates),
                                   Person.account_id == account.id)).scalars()
    allowed = set(persons) | ({account.main_email} & set(candidates))
    return [a for a in candidates if a in allowed]


_TICKETS = cast(Table, Ticket.__table__)
_INSERT_TICKET = insert(_TICKETS)


def _insert_ticket(
    session: Session, account: Account, person: Person | None, **values: Any
) -> Ticket:
    """Queue the ticket row with the batch's other rows and return it as a persistent
    object, as though loaded: its id is known before the row is written
    (`new_ticket_id`), so nothing is written for it until the commit or the next
    flush, which in a bulk import takes a whole batch at a time."""
    values = {column.key: None for column in _TICKETS.c} | values
    values |= {"id": new_ticket_id(session), "account_id": account.id,
               "person_id": person.id if person else None}
    execute_later(session, _INSERT_TICKET, values)
    ticket = Ticket(**values)
    attach_inserted(session, ticket)
    for name, value in (("account", account), ("person", person), ("assignee", None)):
        set_committed_value(ticket, name, value)
    return ticket


def open_ticket(
    session: Session, pipeline: Pipeline, analysis: Analysis, decision: d.OpenTicket,
    inbox: InboxEntry,
) -> Ticket:
    mail, settings, now = analysis.mail, pipeline.settings, pipeline.clock.now()
    account = (get_held(session, Account, decision.account_id) if decision.account_id is not None
               else _unverified_account(session, pipeline, analysis.sender))
    assert account is not None
    person = get_held(session, Person, decision.person_id) if decision.person_id else None
    routing = decision.routing
    subject = clean_subject(mail.subject, settings.helpdesk.ticket_tag) or "(senza oggetto)"
    ticket = _insert_ticket(
        session, account, person,
        number=allocate_number(session, now.year), status=TicketStatus.APERTO.value,
        subject=subject[:1000], product=routing.product, request_type=routing.request_type,
        impact=routing.impact, group=routing.group,
        linked_ticket_id=decision.linked_ticket.id if decision.linked_ticket else None,
        language=account.language or settings.helpdesk.language,
        rules=list(routing.rules), created_at=now, updated_at=now,
        root_message_id=mail.message_id[:998] if mail.message_id else None,
        due_at=first_response_due(now, settings.sla),
        watchers=_watchers(session, mail, account, analysis.sender.email),
    )
    refused = [safe_filename(a.filename, a.content_type) for a in mail.attachments]
    _add_message(session, ticket, inbox, direction="in", author=analysis.sender.email,
                 body=decision.description, at=now, refused=refused)
    add_event(session, EventRow(ticket_id=ticket.id, at=now, actor=analysis.sender.email,
                                kind="created", from_status=None, to_status=ticket.status,
                                reason=decision.reason))
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    transaction_cache(session, TICKET_IDS)[ticket.number] = ticket.id
    _remember_message_id(session, mail, ticket)
    to, cc = _customer_recipients(ticket)
    _mail(session, pipeline, analysis, MailKind.ACKNOWLEDGMENT, to, ticket, cc=cc,
          refused_attachments=refused, body=decision.description,
          unverified=not account.verified)
    _mail(session, pipeline, analysis, MailKind.NEW_TICKET_NOTICE,
          (settings.group_address(ticket.group),), ticket, body=decision.description,
          author=analysis.sender.email, refused_attachments=refused,
          unverified=not account.verified)
    return ticket


def add_customer_reply(
    session: Session, pipeline: Pipeline, analysis: Analysis, decision: d.CustomerReply,
    inbox: InboxEntry,
) -> Ticket:
    now = pipeline.clock.now()
    ticket = get_held(session, Ticket, decision.ticket.id)
    assert ticket is not None
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    files, refused = _keep_attachments(session, pipeline, analysis.mail)
    _add_message(session, ticket, inbox, direction="in", author=analysis.sender.email,
                 body=decision.body, at=now, refused=refused, files=files)
    event = change_status(ticket, TicketAction.CUSTOMER_REPLIED, actor=analysis.sender.email,
                          at=now, reason=decision.reason)
    add_event(session, event or record_event(ticket, "customer_replied",
                                             actor=analysis.sender.email, at=now,
                                             reason=decision.reason))
    _remember_message_id(session, analysis.mail, ticket)
    notify = (ticket.assignee.email if ticket.assignee is not None
              else pipeline.settings.group_address(ticket.group))
    _mail(session, pipeline, analysis, MailKind.CUSTOMER_REPLY_NOTICE, (notify,), ticket,
          body=decision.body, author=analysis.sender.email, attachments=files)
    return ticket


def _apply_commands(
    session: Session, ticket: Ticket, commands: Sequence[d.StaffCommand], actor: str,
    now: datetime,
) -> None:
    for command in commands:
        if command.name == "assign":
            wanted = command.argument.lower()
            staff = session.execute(select(Staff).where(
                (Staff.email == wanted) | (Staff.name.ilike(wanted)))).scalars().first()
            if staff is None:
                add_event(session, record_event(
                    ticket, "command_refused", actor=actor, at=now,
                    reason=f"#assegna: no technician {command.argument!r}"))
                continue
            ticket.assignee = staff
        elif command.name in ("product", "type", "impact"):
            column = {"product": "product", "type": "request_type", "impact": "impact"}
            setattr(ticket, column[command.name], command.argument)
        else:
            continue
        add_event(session, record_event(ticket, command.name, actor=actor, at=now,
                                        reason=command.argument))


def add_staff_reply(
    session: Session, pipeline: Pipeline, analysis: Analysis, decision: d.StaffReply,
    inbox: InboxEntry,
) -> Ticket:
    now, actor = pipeline.clock.now(), analysis.sender.email
    ticket = get_held(session, Ticket, decision.ticket.id)
    assert ticket is not None
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    staff = get_held(session, Staff, analysis.sender.staff_id)
    _apply_commands(session, ticket, decision.commands, actor, now)
    files: list[dict[str, Any]] = []
    if decision.body:
        files, refused = _keep_attachments(session, pipeline, analysis.mail)
        _add_message(session, ticket, inbox, direction="out", author=actor,
                     body=decision.body, at=now, internal=decision.internal,
                     refused=refused, files=files)
    for action in decision.actions:
        if action in (TicketAction.TAKEN, TicketAction.STAFF_ANSWERED) and ticket.assignee is None:
            ticket.assignee = staff
        event = change_status(ticket, action, actor=actor, at=now, reason=decision.reason)
        if event is not None:
            add_event(session, event)
    if decision.internal:
        add_event(session, record_event(ticket, "note", actor=actor, at=now,
                                        reason=decision.reason))
    _remember_message_id(session, analysis.mail, ticket)
    if decision.body and not decision.internal:
        to, cc = _customer_recipients(ticket)
        answer = replace(analysis, classification=replace(
            analysis.classification, may_auto_answer=True))
        _mail(session, pipeline, answer, MailKind.ANSWER, to, ticket, cc=cc,
              to_customer_thread=True, body=decision.body, author=staff.name if staff else actor,
              attachments=files)
    return ticket
