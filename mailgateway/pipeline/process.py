"""One inbox row → its effects, in the caller's transaction.

`analyse` reads (who is the sender, which ticket) and runs the pure stages
to a Decision; `process_inbox_mail` has `apply` write its effects and
records the inbox row's fate. The caller commits once, so a crash anywhere
leaves either all of a mail's effects or none.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from email.utils import parseaddr
from typing import Any, cast

import structlog
from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Table,
    bindparam,
    literal,
    null,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from mailgateway.db.models import Account, InboxMail, InboxStatus, Person, Staff, ThreadRef, Ticket
from mailgateway.db.session import execute_later, get_held, transaction_cache, write_later
from mailgateway.pipeline import apply
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.context import (
    SENDERS,
    THREAD_REFS,
    TICKET_IDS,
    Analysis,
    BatchEntry,
    InboxEntry,
    Pipeline,
)
from mailgateway.pipeline.identify import (
    DirectoryMatch,
    Sender,
    SenderKind,
    identify,
)
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.prepare import Findings, find, finding_settings
from mailgateway.pipeline.quote import strip_quotes
from mailgateway.pipeline.route import route_new_ticket
from mailgateway.pipeline.thread import ThreadKeys
from mailgateway.tickets import find_by_number

log = structlog.get_logger()

def analyse(
    session: Session, pipeline: Pipeline, mail: ParsedMail, envelope_from: str | None = None,
    findings: Findings | None = None,
) -> Analysis:
    """Classify, identify, thread and decide;
    reads the database, writes nothing."""
    settings = pipeline.settings
    found = findings or find(finding_settings(settings), mail, unquote=False)
    classification = found.classification
    if envelope_from == "" and classification.may_auto_answer:
        # The null sender (MAIL FROM:<>) is how machines say "do not answer me".
        classification = replace(classification, may_auto_answer=False)
    sender = _identify(session, mail, envelope_from)
    ticket = _find_ticket(session, found.keys)
    decision: d.Decision
    if classification.kind is not None:
        decision = d.Ignore(f"{classification.kind.value}: {classification.reason}")
    else:
        body = mail.text
        if ticket is not None:
            body = found.unquoted if found.unquoted is not None else strip_quotes(mail.text)
        decision = d.decide(
            sender=sender,
            staff_authority=found.staff_authority,
            ticket=ticket,
            body=body,
            new_ticket=found.new_ticket or route_new_ticket(mail.text),
            policy=d.Policy(settings.helpdesk.unknown_sender, settings.helpdesk.closed_reply),
        )
    return Analysis(mail, classification, sender, ticket, decision)


def process_inbox_mail(
    session: Session, pipeline: Pipeline, inbox: InboxEntry, mail: ParsedMail,
    *, flush: bool = True, findings: Findings | None = None,
) -> Analysis:
    """Apply the decision for `inbox` and record its fate on the row.

    Autoflush is off: the stages query a handful of indexed rows and flush
    explicitly where an id is needed, instead of flushing before every query.
    A caller processing many mails in one transaction passes `flush=False` and
    lets the changes of several mails go to the database together, the rows
    queued with `db.session.execute_later` included.
    """
    with session.no_autoflush:
        analysis = _process(session, pipeline, inbox, mail, findings)
    if isinstance(inbox, BatchEntry):
        record_fate(session, inbox)
    if flush:
        write_later(session)
        session.flush()
    return analysis


_INBOX = cast(Table, InboxMail.__table__)
_RECORD_FATE = update(_INBOX).where(_INBOX.c.id == bindparam("entry_id"))


def record_fate(session: Session, entry: BatchEntry) -> None:
    """Queue the write of what became of a batch's mail (`db.session.execute_later`)."""
    execute_later(session, _RECORD_FATE, {
        "entry_id": entry.id, "status": entry.status, "reason": entry.reason,
        "subject": entry.subject, "sender": entry.sender, "ticket_id": entry.ticket_id,
        "processed_at": entry.processed_at, "attempts": entry.attempts,
    })


def _process(
    session: Session, pipeline: Pipeline, inbox: InboxEntry, parsed: ParsedMail,
    findings: Findings | None,
) -> Analysis:
    analysis = analyse(session, pipeline, parsed, inbox.envelope_from, findings)
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


_EMAILS: BindParameter[Any] = bindparam("emails", expanding=True)
# Built once: every directory row with one of the addresses, in one round trip.
_DIRECTORY: CompoundSelect[Any] = union_all(
    select(literal(SenderKind.STAFF.value), Staff.email, Staff.id, Staff.name, null(),
           Staff.active).where(Staff.email.in_(_EMAILS)),
    select(literal(SenderKind.PERSON.value), Person.email, Person.id, Person.name,
           Person.account_id, true()).where(Person.email.in_(_EMAILS)),
    select(literal(SenderKind.ACCOUNT.value), Account.main_email, Account.id, Account.name,
           Account.id, true()).where(Account.main_email.in_(_EMAILS)),
)


def _load_directory(session: Session, emails: Collection[str]) -> None:
    """The directory rows of `emails` into the transaction's cache, none left out:
    an address with no row is cached as unknown."""
    found: dict[str, list[DirectoryMatch]] = {email: [] for email in emails}
    for kind, email, id_, name, account_id, active in session.execute(
            _DIRECTORY, {"emails": list(emails)}):
        found[email].append(DirectoryMatch(SenderKind(kind), id_, name, account_id, bool(active)))
    known = transaction_cache(session, SENDERS)
    known.update((email, tuple(matches)) for email, matches in found.items())


def _directory_matches(session: Session, email: str) -> list[DirectoryMatch]:
    """Every directory row with this address, once per transaction."""
    known = transaction_cache(session, SENDERS)
    if email not in known:
        _load_directory(session, [email])
    return list(known[email])


def _ref(ticket: Ticket, found_by: str) -> d.TicketRef:
    return d.TicketRef(ticket.id, ticket.number, ticket.status, ticket.account_id,
                       tuple(ticket.watchers or ()), found_by)


def _ticket_numbered(session: Session, number: str) -> Ticket | None:
    """`find_by_number`, remembering the id for the rest of the transaction; a ticket
    created and rolled back since is told apart by its number."""
    known = transaction_cache(session, TICKET_IDS)
    if number in known:
        ticket = get_held(session, Ticket, known[number])
        if ticket is not None and ticket.number == number:
            return ticket
    write_later(session)  # a ticket the transaction opened may still be queued
    ticket = find_by_number(session, number)
    if ticket is not None:
        known[number] = ticket.id
    return ticket


def _tickets_referencing(session: Session, message_ids: Sequence[str]) -> dict[str, int | None]:
    """The ticket that knows each Message-ID (None: none), from the transaction's cache
    and, for the ids it has not seen (or forgot when a savepoint rolled back), from
    the database, once what the transaction queued is written."""
    known = transaction_cache(session, THREAD_REFS, forget_on_rollback=True)
    missing = [m for m in message_ids if m not in known]
    if missing:
        write_later(session)  # the ids the transaction learnt and has not written yet
        known.update(dict.fromkeys(missing))
        known.update(session.execute(
            select(ThreadRef.message_id, ThreadRef.ticket_id)
            .where(ThreadRef.message_id.in_(missing))).all())
    return {m: known[m] for m in message_ids}


def _find_ticket(session: Session, keys: ThreadKeys) -> d.TicketRef | None:
    """Tag first, then the signed token, then any Message-ID the ticket already knows."""
    for number, found_by in ((keys.tag_number, "subject tag"),
                             (keys.token.ticket_number if keys.token else None, "reply token")):
        if number:
            ticket = _ticket_numbered(session, number)
            if ticket is not None:
                return _ref(ticket, found_by)
    if keys.references:
        for ticket_id in _tickets_referencing(session, keys.references).values():
            ticket = get_held(session, Ticket, ticket_id)
            if ticket is not None:
                return _ref(ticket, "References")
    return None


def _hold_customers(session: Session, senders: Collection[str]) -> None:
    """Load the accounts and persons the senders are, for the tickets they will open."""
    known = transaction_cache(session, SENDERS)
    matches = [match for email in senders for match in known[email]]
    accounts = {m.account_id for m in matches if m.account_id is not None}
    persons = {m.id for m in matches if m.kind is SenderKind.PERSON}
    if accounts:
        for account in session.execute(select(Account).where(Account.id.in_(accounts))).scalars():
            get_held(session, Account, account.id)  # from the identity map, kept for the batch
    if persons:
        for person in session.execute(select(Person).where(Person.id.in_(persons))).scalars():
            get_held(session, Person, person.id)


def look_up_batch(session: Session, mails: Sequence[tuple[ParsedMail, Findings]]) -> set[str]:
    """Read in a few queries what a batch of mails will look up one by one: the
    senders' directory rows (and their accounts and persons), the tickets their tags
    and tokens name, and the tickets that know the Message-IDs they reference.
    Processing then finds it all in the transaction's caches. Returns the senders'
    addresses."""
    senders: set[str] = set()
    numbers: set[str] = set()
    references: set[str] = set()
    for mail, findings in mails:
        senders.add(sender_address(mail))
        keys = findings.keys
        numbers.update(n for n in (keys.tag_number,
                                   keys.token.ticket_number if keys.token else None) if n)
        references.update(keys.references)
    senders.discard("")
    if senders:
        _load_directory(session, senders)
        _hold_customers(session, senders)
    if numbers:
        known = transaction_cache(session, TICKET_IDS)
        for ticket in session.execute(
                select(Ticket).where(Ticket.number.in_(numbers))).scalars():
            known[ticket.number] = ticket.id
            get_held(session, Ticket, ticket.id)  # held for the batch: no second load
    if references:
        _tickets_referencing(session, sorted(references))
    return senders
