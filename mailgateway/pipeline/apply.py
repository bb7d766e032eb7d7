"""The effects of a decision: tickets, messages, attachments, events, outbox rows.

Everything here writes into the caller's session; nothing commits. Each
function applies one kind of `Decision` and returns the ticket it touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgateway.attachments import safe_filename
from mailgateway.db.models import (
    Account,
    Attachment,
    InboxMail,
    Message,
    OutboxMail,
    Person,
    Staff,
    Ticket,
    TicketStatus,
)
from mailgateway.outbound.addressing import customer_recipients, group_recipients
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.context import Analysis, Pipeline
from mailgateway.pipeline.identify import Sender
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.thread import clean_subject
from mailgateway.sla import first_response_due
from mailgateway.store import Store
from mailgateway.tickets import (
    TicketAction,
    change_status,
    record_created,
    record_event,
)

log = structlog.get_logger()


def _remember_message_id(store: Store, mail: ParsedMail, ticket: Ticket) -> None:
    """Replies may reference this mail; the first ticket to know an id keeps it."""
    if mail.message_id:
        store.remember_message_id(mail.message_id[:998], ticket)


def _keep_attachments(
    store: Store, pipeline: Pipeline, mail: ParsedMail
) -> tuple[list[Attachment], list[str]]:
    """Store what may be kept: the kept files' rows, and the names of the files
    refused for their size."""
    limit = pipeline.settings.helpdesk.max_attachment_bytes
    kept: list[Attachment] = []
    refused: list[str] = []
    for part in mail.attachments:
        name = safe_filename(part.filename, part.content_type)
        if len(part.payload) > limit:
            refused.append(name)
            continue
        digest = store.keep_file(pipeline.settings.data_dir, part.payload)
        kept.append(Attachment(filename=name, content_type=part.content_type[:255],
                               size=len(part.payload), sha256=digest))
    return kept, refused


def _add_message(
    store: Store, ticket: Ticket, row: InboxMail, *, direction: str, author: str, body: str,
    at: datetime, internal: bool = False, refused: Sequence[str] = (),
    files: Sequence[Attachment] = (),
) -> Message:
    message = Message(ticket=ticket, inbox=row, direction=direction, author=author,
                      body=body, internal=internal, refused_attachments=list(refused),
                      created_at=at)
    if files:
        message.attachments = list(files)
    store.session.add(message)
    return message


def _file_refs(files: Sequence[Attachment]) -> list[dict[str, Any]]:
    """The kept files as the templates and the dispatcher read them."""
    return [{"filename": f.filename, "content_type": f.content_type, "size": f.size,
             "sha256": f.sha256} for f in files]


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
    store: Store, pipeline: Pipeline, analysis: Analysis, kind: MailKind,
    to: Sequence[str], ticket: Ticket | None, *, cc: Sequence[str] = (),
    to_customer_thread: bool = False, **context: Any,
) -> None:
    """Queue one mail; automatic ones are never sent in answer to a machine."""
    intent_to = tuple(a for a in to if a)
    if not intent_to:
        return
    in_reply_to, references = _thread_ids(analysis.mail, ticket, to_customer_thread)
    language = ticket.language if ticket is not None else pipeline.settings.helpdesk.language
    intent = MailIntent(kind=kind, to=intent_to, cc=tuple(cc), language=language,
                        in_reply_to=in_reply_to, references=references, context=context)
    if intent.answers_mail and not analysis.classification.may_auto_answer:
        log.info("automatic answer suppressed", kind=kind.value,
                 reason=analysis.classification.reason)
        return
    pipeline.mailer(store, intent, ticket)


def _notify(
    store: Store, pipeline: Pipeline, analysis: Analysis, kind: MailKind,
    technicians: Sequence[str], ticket: Ticket, **context: Any,
) -> None:
    """A notice to technicians, one mail each: its signed reply address names the one
    it went to (a group's address, or a member)."""
    for address in technicians:
        _mail(store, pipeline, analysis, kind, (address,), ticket, **context)


def apply_reject(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.Reject, row: InboxMail
) -> Ticket | None:
    ticket = analysis.ticket if decision.ticket is not None else None
    if ticket is not None:
        record_event(store.session, ticket, "refused_mail", actor=analysis.sender.email,
                     at=pipeline.clock.now(), reason=decision.reason)
        _mail(store, pipeline, analysis, decision.answer, (analysis.mail.from_addr,), ticket,
              subject=analysis.mail.subject, reason=decision.reason)
        return ticket
    # No ticket: the sender is a stranger, and From may be anyone's.
    to = _stranger_address(analysis.mail, row.envelope_from)
    limit = pipeline.settings.outbound.stranger_answers_per_hour
    if to is None:
        log.info("refusal not sent", reason="From does not match the envelope sender")
    elif _strangers_answered(store, pipeline) >= limit:
        log.warning("refusal not sent", reason="hourly limit of answers to strangers reached")
    else:
        _mail(store, pipeline, analysis, decision.answer, (to,), None, sender=to,
              reason=decision.reason)
    return None


def _stranger_address(mail: ParsedMail, envelope_from: str | None) -> str | None:
    """Where a refusal to a sender we do not know may go: its From, only when the
    envelope sender (or the Return-Path its MTA wrote) is that same address. Anyone
    can write any From: answering it would mail our refusals to third parties."""
    envelope = envelope_from if envelope_from is not None else mail.header("Return-Path")
    bare = parseaddr(envelope or "")[1].strip().lower()
    return mail.from_addr if bare and bare == mail.from_addr.lower() else None


def _strangers_answered(store: Store, pipeline: Pipeline) -> int:
    since = pipeline.clock.now() - timedelta(hours=1)
    return store.session.scalar(
        select(func.count()).select_from(OutboxMail).where(
            OutboxMail.kind.in_(_STRANGER_KINDS), OutboxMail.ticket_id.is_(None),
            OutboxMail.created_at > since)) or 0


_STRANGER_KINDS = (MailKind.UNKNOWN_SENDER.value, MailKind.REJECTED.value)


def _unverified_account(store: Store, pipeline: Pipeline, sender: Sender) -> Account:
    account = Account(name=sender.name or sender.email, main_email=sender.email,
                      vat_number="", verified=False, created_at=pipeline.clock.now())
    store.add_account(account)
    return account


def _watchers(store: Store, mail: ParsedMail, account: Account, primary: str) -> list[str]:
    """Collaborators in Cc who belong to the account follow the ticket."""
    candidates = [a for a in mail.cc if a != primary]
    if not candidates:
        return []
    persons = store.session.execute(
        select(Person.email).where(Person.email.in_(candidates),
                                   Person.account_id == account.id)).scalars()
    allowed = set(persons) | ({account.main_email} & set(candidates))
    return [a for a in candidates if a in allowed]


def open_ticket(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.OpenTicket,
    row: InboxMail,
) -> Ticket:
    mail, settings, now = analysis.mail, pipeline.settings, pipeline.clock.now()
    session = store.session
    account = (session.get(Account, decision.account_id) if decision.account_id is not None
               else _unverified_account(store, pipeline, analysis.sender))
    assert account is not None
    person = session.get(Person, decision.person_id) if decision.person_id else None
    routing = decision.routing
    subject = clean_subject(mail.subject, settings.helpdesk.ticket_tag) or "(senza oggetto)"
    ticket = Ticket(
        number=store.ticket_number(now.year), status=TicketStatus.APERTO.value,
        subject=subject[:1000], product=routing.product, request_type=routing.request_type,
        impact=routing.impact, group=routing.group, account=account, person=person,
        assignee=None,
        linked_ticket_id=analysis.ticket.id if decision.linked_ticket and analysis.ticket else None,
        language=account.language or settings.helpdesk.language,
        rules=list(routing.rules), created_at=now, updated_at=now,
        root_message_id=mail.message_id[:998] if mail.message_id else None,
        due_at=first_response_due(now, settings.sla),
        watchers=_watchers(store, mail, account, analysis.sender.email),
    )
    store.add_ticket(ticket)
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    refused = [safe_filename(a.filename, a.content_type) for a in mail.attachments]
    closed = analysis.ticket if decision.linked_ticket else None
    _add_message(store, ticket, row, direction="in", author=analysis.sender.email,
                 body=_following(closed, ticket.language) + decision.description, at=now,
                 refused=refused)
    record_created(session, ticket, actor=analysis.sender.email, at=now, reason=decision.reason)
    if closed is not None:  # the closed ticket says where the conversation went on
        record_event(session, closed, "followed_up", actor=analysis.sender.email, at=now,
                     reason=f"continued in new ticket {ticket.number}")
    _remember_message_id(store, mail, ticket)
    to, cc = customer_recipients(ticket)
    _mail(store, pipeline, analysis, MailKind.ACKNOWLEDGMENT, to, ticket, cc=cc,
          refused_attachments=refused, body=decision.description,
          unverified=not account.verified)
    _notify(store, pipeline, analysis, MailKind.NEW_TICKET_NOTICE,
            group_recipients(session, settings, ticket.group), ticket, body=decision.description,
          author=analysis.sender.email, refused_attachments=refused,
          unverified=not account.verified)
    return ticket


def _following(closed: Ticket | None, language: str) -> str:
    """The first line of a ticket opened by a reply to a closed one: which one."""
    if closed is None:
        return ""
    if language == "en":
        return f"(Follows closed ticket {closed.number}.)\n\n"
    return f"(Segue il ticket chiuso {closed.number}.)\n\n"


def _found(analysis: Analysis) -> Ticket:
    """The ticket the mail threads to: a reply's decision always has one."""
    assert analysis.ticket is not None
    structlog.contextvars.bind_contextvars(ticket=analysis.ticket.number)
    return analysis.ticket


def add_customer_reply(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.CustomerReply,
    row: InboxMail,
) -> Ticket:
    now, author = pipeline.clock.now(), analysis.sender.email
    ticket = _found(analysis)
    files, refused = _keep_attachments(store, pipeline, analysis.mail)
    _add_message(store, ticket, row, direction="in", author=author, body=decision.body,
                 at=now, refused=refused, files=files)
    if change_status(store.session, ticket, TicketAction.CUSTOMER_REPLIED, actor=author,
                     at=now, reason=decision.reason) is None:
        record_event(store.session, ticket, TicketAction.CUSTOMER_REPLIED.value, actor=author,
                     at=now, reason=decision.reason)
    _remember_message_id(store, analysis.mail, ticket)
    notify = ((ticket.assignee.email,) if ticket.assignee is not None
              else group_recipients(store.session, pipeline.settings, ticket.group))
    _notify(store, pipeline, analysis, MailKind.CUSTOMER_REPLY_NOTICE, notify, ticket,
          body=decision.body, author=author, attachments=_file_refs(files))
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
                record_event(session, ticket, "command_refused", actor=actor, at=now,
                             reason=f"#assegna: no technician {command.argument!r}")
                continue
            ticket.assignee = staff
        elif command.name in ("product", "type", "impact"):
            column = {"product": "product", "type": "request_type", "impact": "impact"}
            setattr(ticket, column[command.name], command.argument)
        else:
            continue
        record_event(session, ticket, command.name, actor=actor, at=now,
                     reason=command.argument)


def add_staff_reply(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.StaffReply,
    row: InboxMail,
) -> Ticket:
    now, actor, session = pipeline.clock.now(), analysis.sender.email, store.session
    ticket = _found(analysis)
    staff = session.get(Staff, analysis.sender.staff_id)
    _apply_commands(session, ticket, decision.commands, actor, now)
    files: list[Attachment] = []
    if decision.body:
        files, refused = _keep_attachments(store, pipeline, analysis.mail)
        _add_message(store, ticket, row, direction="out", author=actor, body=decision.body,
                     at=now, internal=decision.internal, refused=refused, files=files)
    if decision.refused:
        _record_refusal(store, pipeline, analysis, ticket, decision.refused)
    for action in decision.actions:
        if action in (TicketAction.TAKEN, TicketAction.STAFF_ANSWERED) and ticket.assignee is None:
            ticket.assignee = staff
        change_status(session, ticket, action, actor=actor, at=now, reason=decision.reason)
    if decision.internal:
        record_event(session, ticket, "note", actor=actor, at=now, reason=decision.reason)
    _remember_message_id(store, analysis.mail, ticket)
    if decision.body and not decision.internal:
        to, cc = customer_recipients(ticket)
        answer = replace(analysis, classification=replace(
            analysis.classification, may_auto_answer=True))
        _mail(store, pipeline, answer, MailKind.ANSWER, to, ticket, cc=cc,
              to_customer_thread=True, body=decision.body, author=staff.name if staff else actor,
              attachments=_file_refs(files))
    return ticket


_REFUSAL = "staff_mail_refused"
_REFUSALS_TOLD_EVERY = timedelta(hours=24)


def _record_refusal(
    store: Store, pipeline: Pipeline, analysis: Analysis, ticket: Ticket, reason: str
) -> None:
    """An event on the ticket the mail tried to touch, and a word to its group,
    once a day at most: a forger sending a thousand mails makes one notice."""
    now = pipeline.clock.now()
    told = any(e.kind == _REFUSAL and e.at > now - _REFUSALS_TOLD_EVERY for e in ticket.events)
    record_event(store.session, ticket, _REFUSAL, actor=analysis.sender.email, at=now,
                 reason=reason)
    if not told:
        _notify(store, pipeline, analysis, MailKind.REFUSED_NOTICE,
                group_recipients(store.session, pipeline.settings, ticket.group), ticket,
              author=analysis.sender.email, reason=reason)


def refuse_staff_mail(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.RefuseStaffMail
) -> Ticket:
    ticket = _found(analysis)
    _record_refusal(store, pipeline, analysis, ticket, decision.reason)
    return ticket
