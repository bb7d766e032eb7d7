"""The effects of a decision: tickets, messages, attachments, events, outbox rows.

Everything here writes into the caller's session what the `Decision` says,
and decides nothing: who is mailed, in which language, with which fields, was
settled by `decide`. Nothing commits. Each function applies one kind of
decision and returns the ticket it touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
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
from mailgateway.outbound.delivery import record_bounce, record_delay, record_delivered
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.bounces import Action
from mailgateway.pipeline.context import Analysis, Pipeline
from mailgateway.pipeline.facts import REFUSAL_EVENT
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


def _queue(
    store: Store, pipeline: Pipeline, mails: Sequence[d.PlannedMail], ticket: Ticket | None,
    files: Sequence[Attachment] = (),
) -> None:
    for mail in mails:
        pipeline.mailer(store, mail.intent(_file_refs(files)), ticket)


def apply_reject(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.Reject
) -> Ticket | None:
    ticket = analysis.ticket if decision.ticket is not None else None
    if ticket is not None:
        record_event(store.session, ticket, "refused_mail", actor=analysis.sender.email,
                     at=pipeline.clock.now(), reason=decision.reason)
    if not decision.mails:
        log.info("refusal not sent", reason=decision.reason)
    _queue(store, pipeline, decision.mails, ticket)
    return ticket


def _account(store: Store, pipeline: Pipeline, analysis: Analysis,
             customer: d.Customer) -> Account:
    if customer.account_id is not None:
        account = store.session.get(Account, customer.account_id)
        assert account is not None
        return account
    sender = analysis.sender
    account = Account(name=sender.name or sender.email, main_email=sender.email,
                      vat_number="", verified=False, created_at=pipeline.clock.now())
    store.add_account(account)
    return account


def _staff(session: Session, address: str | None) -> Staff | None:
    if address is None:
        return None
    return session.scalars(select(Staff).where(Staff.email == address)).first()


def open_ticket(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.OpenTicket,
    row: InboxMail,
) -> Ticket:
    mail, settings, now = analysis.mail, pipeline.settings, pipeline.clock.now()
    session, fields, actor = store.session, decision.fields, analysis.sender.email
    account = _account(store, pipeline, analysis, decision.customer)
    person = session.get(Person, decision.customer.person_id) if decision.customer.person_id \
        else None
    subject = clean_subject(mail.subject, settings.helpdesk.ticket_tag) or "(senza oggetto)"
    closed = analysis.ticket if decision.linked_ticket is not None else None
    repeated = (store.ticket_numbered(decision.duplicate_of.number)
                if decision.duplicate_of is not None else None)
    linked = closed or repeated
    ticket = Ticket(
        number=store.ticket_number(now.year), status=TicketStatus.APERTO.value,
        subject=subject[:1000], product=fields.product, request_type=fields.request_type,
        impact=fields.impact, group=fields.group, account=account, person=person,
        assignee=_staff(session, fields.assignee),
        linked_ticket_id=linked.id if linked is not None else None,
        language=fields.language, rules=list(decision.rules), created_at=now, updated_at=now,
        root_message_id=mail.message_id[:998] if mail.message_id else None,
        due_at=first_response_due(now, settings.sla), watchers=list(fields.watchers),
    )
    store.add_ticket(ticket)
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    _add_message(store, ticket, row, direction="in", author=actor,
                 body=_following(closed, ticket.language) + decision.description, at=now,
                 refused=decision.refused_attachments)
    record_created(session, ticket, actor=actor, at=now, reason=decision.reason)
    if decision.rules:
        record_event(session, ticket, "routed", actor=actor, at=now,
                     reason="rules: " + ", ".join(decision.rules))
    if repeated is not None:
        record_event(session, ticket, "duplicate_flagged", actor=actor, at=now,
                     reason=f"seems to repeat open ticket {repeated.number}")
    if closed is not None:  # the closed ticket says where the conversation went on
        record_event(session, closed, "followed_up", actor=actor, at=now,
                     reason=f"continued in new ticket {ticket.number}")
    _remember_message_id(store, mail, ticket)
    _queue(store, pipeline, decision.mails, ticket)
    return ticket


def _following(closed: Ticket | None, language: str) -> str:
    """The first line of a ticket opened by a reply to a closed one: which one."""
    if closed is None:
        return ""
    if language == "en":
        return f"(Follows closed ticket {closed.number}.)\n\n"
    return f"(Segue il ticket chiuso {closed.number}.)\n\n"


def _found(store: Store, analysis: Analysis, ref: d.TicketRef) -> Ticket:
    """The ticket the decision names: the one the mail threads to, or the open ticket
    a repeated request joins."""
    ticket = analysis.ticket
    if ticket is None or ticket.number != ref.number:
        ticket = store.ticket_numbered(ref.number)
    assert ticket is not None
    structlog.contextvars.bind_contextvars(ticket=ticket.number)
    return ticket


def add_customer_reply(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.CustomerReply,
    row: InboxMail,
) -> Ticket:
    now, author = pipeline.clock.now(), analysis.sender.email
    ticket = _found(store, analysis, decision.ticket)
    files, refused = _keep_attachments(store, pipeline, analysis.mail)
    _add_message(store, ticket, row, direction="in", author=author, body=decision.body,
                 at=now, refused=refused, files=files)
    if decision.joined:
        record_event(store.session, ticket, "duplicate_joined", actor=author, at=now,
                     reason=decision.reason)
    action = TicketAction.CLOSED if decision.solved else TicketAction.CUSTOMER_REPLIED
    if change_status(store.session, ticket, action, actor=author, at=now,
                     reason=decision.reason) is None:
        record_event(store.session, ticket, TicketAction.CUSTOMER_REPLIED.value, actor=author,
                     at=now, reason=decision.reason)
    _remember_message_id(store, analysis.mail, ticket)
    _queue(store, pipeline, decision.mails, ticket, files)
    return ticket


def _apply_commands(
    session: Session, ticket: Ticket, decision: d.StaffReply, actor: str, now: datetime
) -> None:
    for command in decision.commands:
        if command.name == "assign":
            staff = _staff(session, decision.assignee)
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
    ticket = _found(store, analysis, decision.ticket)
    if decision.refused:
        record_event(session, ticket, REFUSAL_EVENT, actor=actor, at=now,
                     reason=decision.refused)
    _apply_commands(session, ticket, decision, actor, now)
    files: list[Attachment] = []
    if decision.body:
        files, refused = _keep_attachments(store, pipeline, analysis.mail)
        _add_message(store, ticket, row, direction="out", author=actor, body=decision.body,
                     at=now, internal=decision.internal, refused=refused, files=files)
    for action in decision.actions:
        if action in (TicketAction.TAKEN, TicketAction.STAFF_ANSWERED) and ticket.assignee is None:
            ticket.assignee = _staff(session, actor)
        change_status(session, ticket, action, actor=actor, at=now, reason=decision.reason)
    if decision.internal:
        record_event(session, ticket, "note", actor=actor, at=now, reason=decision.reason)
    _remember_message_id(store, analysis.mail, ticket)
    _queue(store, pipeline, decision.mails, ticket, files)
    return ticket


def refuse_staff_mail(
    store: Store, pipeline: Pipeline, analysis: Analysis, decision: d.RefuseStaffMail
) -> Ticket:
    ticket = _found(store, analysis, decision.ticket)
    record_event(store.session, ticket, REFUSAL_EVENT, actor=analysis.sender.email,
                 at=pipeline.clock.now(), reason=decision.reason)
    _queue(store, pipeline, decision.mails, ticket)
    return ticket


def record_delivery(store: Store, pipeline: Pipeline, decision: d.RecordDelivery) -> Ticket | None:
    """Record each outcome of a delivery report on its outbox row; the ticket of the
    first row that has one (the report's inbox row is filed under it)."""
    ticket: Ticket | None = None
    for match in decision.outcomes:
        row = store.session.get(OutboxMail, match.outbox_id)
        if row is None:
            continue
        outcome = match.outcome
        if outcome.action == Action.FAILED:
            record_bounce(store, pipeline.settings, pipeline.clock, row, outcome.address,
                          outcome.words)
        elif outcome.action == Action.DELAYED:
            record_delay(store, pipeline.clock, row, outcome.address, outcome.words)
        elif outcome.action == Action.DELIVERED:
            record_delivered(store, pipeline.clock, row, outcome.address, pipeline.clock.now(),
                             f"delivery report: {outcome.words}")
        ticket = ticket or row.ticket
    return ticket


def send_status_report(store: Store, pipeline: Pipeline, decision: d.StatusReport) -> None:
    """The STATO page mailed back: nothing else is written."""
    if not decision.mails:
        log.info("status report not sent", reason=decision.reason)
    _queue(store, pipeline, decision.mails, None)
