"""One inbox row → its effects, in the caller's transaction.

`analyse` reads (who is the sender, which ticket) and runs the pure stages
to a Decision; `process_inbox_mail` has `apply` write its effects and
records the inbox row's fate. The caller commits once, so a crash anywhere
leaves either all of a mail's effects or none.
"""

from __future__ import annotations

from dataclasses import replace
from email.utils import parseaddr
from typing import Any

import structlog
from sqlalchemy import CompoundSelect, literal, null, select, true, union_all
from sqlalchemy.orm import Session

from mailgateway.db.models import Account, InboxMail, InboxStatus, Person, Staff, ThreadRef, Ticket
from mailgateway.db.session import get_held, transaction_cache, write_later
from mailgateway.pipeline import apply
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.classify import classify
from mailgateway.pipeline.context import SENDERS, Analysis, Pipeline
from mailgateway.pipeline.identify import (
    DirectoryMatch,
    Sender,
    SenderKind,
    identify,
    staff_authority,
)
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.quote import strip_quotes
from mailgateway.pipeline.route import route_new_ticket
from mailgateway.pipeline.thread import ThreadKeys, thread_keys
from mailgateway.tickets import find_by_number

log = structlog.get_logger()

def analyse(
    session: Session, pipeline: Pipeline, mail: ParsedMail, envelope_from: str | None = None,
) -> Analysis:
    """Classify, identify, thread and decide;
    reads the database, writes nothing."""
    settings = pipeline.settings
    classification = classify(mail, pipeline.own)
    if envelope_from == "" and classification.may_auto_answer:
        # The null sender (MAIL FROM:<>) is how machines say "do not answer me".
        classification = replace(classification, may_auto_answer=False)
    sender = _identify(session, mail, envelope_from)
    keys = thread_keys(
        mail.subject, (*mail.to, *mail.cc, *mail.header_all("Delivered-To")),
        mail.in_reply_to, mail.references, ticket_tag=settings.helpdesk.ticket_tag,
        helpdesk_address=settings.helpdesk.address, secret=settings.helpdesk.secret,
    )
    ticket = _find_ticket(session, keys)
    decision: d.Decision
    if classification.kind is not None:
        decision = d.Ignore(f"{classification.kind.value}: {classification.reason}")
    else:
        body = strip_quotes(mail.text) if ticket is not None else mail.text
        decision = d.decide(
            sender=sender,
            staff_authority=staff_authority(
                mail, keys.token, settings.helpdesk.trusted_authserv_ids),
            ticket=ticket,
            body=body,
            new_ticket=route_new_ticket(mail.text),
            policy=d.Policy(settings.helpdesk.unknown_sender, settings.helpdesk.closed_reply),
        )
    return Analysis(mail, classification, sender, ticket, decision)


def process_inbox_mail(
    session: Session, pipeline: Pipeline, inbox: InboxMail, mail: ParsedMail,
    *, flush: bool = True,
) -> Analysis:
    """Apply the decision for `inbox` and record its fate on the row.

    Autoflush is off: the stages query a handful of indexed rows and flush
    explicitly where an id is needed, instead of flushing before every query.
    A caller processing many mails in one transaction passes `flush=False` and
    lets the changes of several mails go to the database together, the rows
    queued with `db.session.insert_later` included.
    """
    with session.no_autoflush:
        analysis = _process(session, pipeline, inbox, mail)
    if flush:
        write_later(session)
        session.flush()
    return analysis


def _process(
    session: Session, pipeline: Pipeline, inbox: InboxMail, parsed: ParsedMail
) -> Analysis:
    analysis = analyse(session, pipeline, parsed, inbox.envelope_from)
    mail, decision = analysis.mail, analysis.decision
    inbox.subject = mail.subject[:1000]
    inbox.sender = analysis.sender.email[:320] or None
    now = pipeline.clock.now()
    status, ticket = InboxStatus.PROCESSED, None
    match decision:
        case d.Ignore(reason):
            status = InboxStatus.IGNORED
        case d.Quarantine(reason):
            status = InboxStatus.QUARANTINED
        case d.Reject():
            status, reason = InboxStatus.IGNORED, f"refused: {decision.reason}"
            ticket = apply.apply_reject(session, pipeline, analysis, decision)
        case d.OpenTicket(reason=reason):
            ticket = apply.open_ticket(session, pipeline, analysis, decision, inbox)
        case d.CustomerReply(reason=reason):
            ticket = apply.add_customer_reply(session, pipeline, analysis, decision, inbox)
        case d.StaffReply(reason=reason):
            ticket = apply.add_staff_reply(session, pipeline, analysis, decision, inbox)
    inbox.status, inbox.reason, inbox.processed_at = status.value, reason, now
    inbox.ticket_id = ticket.id if ticket is not None else None
    log.info("mail processed", status=inbox.status, reason=reason,
             ticket=ticket.number if ticket is not None else None)
    return analysis


# RFC 5321 caps a path at 256 octets with its brackets: no one can answer a longer one,
# and the columns that keep an address hold 320 characters.
_LONGEST_ADDRESS = 254


def sender_address(mail: ParsedMail, envelope_from: str | None = None) -> str:
    """Who to answer: From, else Reply-To, else Sender, else the envelope sender."""
    for candidate in (mail.from_addr, *mail.reply_to, _bare(mail.header("Sender")),
                      _bare(envelope_from)):
        if candidate and "@" in candidate and len(candidate) <= _LONGEST_ADDRESS:
            return candidate.lower()
    return ""


def _bare(value: str | None) -> str:
    return parseaddr(value or "")[1]


def _identify(session: Session, mail: ParsedMail, envelope_from: str | None) -> Sender:
    email = sender_address(mail, envelope_from)
    if not email:
        return identify("", mail.from_name, ())
    return identify(email, mail.from_name, _directory_matches(session, email))


def _directory_matches(session: Session, email: str) -> list[DirectoryMatch]:
    """Every directory row with this address, in one round trip, once per transaction."""
    known = transaction_cache(session, SENDERS)
    if email in known:
        return list(known[email])
    query: CompoundSelect[Any] = union_all(
        select(literal(SenderKind.STAFF.value), Staff.id, Staff.name, null(), Staff.active)
        .where(Staff.email == email),
        select(literal(SenderKind.PERSON.value), Person.id, Person.name, Person.account_id,
               true()).where(Person.email == email),
        select(literal(SenderKind.ACCOUNT.value), Account.id, Account.name, Account.id,
               true()).where(Account.main_email == email),
    )
    matches = [DirectoryMatch(SenderKind(kind), id_, name, account_id, bool(active))
               for kind, id_, name, account_id, active in session.execute(query).all()]
    known[email] = tuple(matches)
    return matches


def _ref(ticket: Ticket, found_by: str) -> d.TicketRef:
    return d.TicketRef(ticket.id, ticket.number, ticket.status, ticket.account_id,
                       tuple(ticket.watchers or ()), found_by)


def _ticket_numbered(session: Session, number: str) -> Ticket | None:
    """`find_by_number`, remembering the id for the rest of the transaction; a ticket
    created and rolled back since is told apart by its number."""
    known = transaction_cache(session, "ticket ids")
    if number in known:
        ticket = get_held(session, Ticket, known[number])
        if ticket is not None and ticket.number == number:
            return ticket
    ticket = find_by_number(session, number)
    if ticket is not None:
        known[number] = ticket.id
    return ticket


def _find_ticket(session: Session, keys: ThreadKeys) -> d.TicketRef | None:
    """Tag first, then the signed token, then any Message-ID the ticket already knows."""
    for number, found_by in ((keys.tag_number, "subject tag"),
                             (keys.token.ticket_number if keys.token else None, "reply token")):
        if number:
            ticket = _ticket_numbered(session, number)
            if ticket is not None:
                return _ref(ticket, found_by)
    if keys.references:
        rows = dict(session.execute(
            select(ThreadRef.message_id, ThreadRef.ticket_id)
            .where(ThreadRef.message_id.in_(keys.references))).all())
        for message_id in keys.references:
            if message_id in rows:
                ticket = get_held(session, Ticket, rows[message_id])
                if ticket is not None:
                    return _ref(ticket, "References")
    return None

