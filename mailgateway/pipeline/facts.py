"""What the decision reads: the few directory rows and counts a mail's outcome depends
on, gathered before `decide` runs, so that deciding reads nothing and writes nothing.

Everything here goes through the caller's `Store` (its session for the rows
no batch needs to cache), and is asked only for mail a person wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import String, bindparam, cast, func, select
from sqlalchemy.orm import Session, aliased

from mailgateway.config import Settings
from mailgateway.db.models import (
    Account,
    BouncingAddress,
    Event,
    Message,
    OutboxMail,
    OutboxStatus,
    Person,
    Staff,
    Ticket,
    TicketStatus,
)
from mailgateway.outbound.addressing import (
    CUSTOMER_KINDS,
    conversations,
    customer_address,
    customer_recipients,
    group_recipients,
    latest_customer_mail,
)
from mailgateway.outbound.intent import MailKind
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.bounces import Action, BounceMatch, BounceReport, SentMail
from mailgateway.pipeline.commands import assignees
from mailgateway.pipeline.identify import (
    Authority,
    Sender,
    SenderKind,
    StaffProof,
    staff_authority,
)
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.pec import PecFacts, receipt_outcome
from mailgateway.pipeline.prepare import Findings
from mailgateway.pipeline.route import route_new_ticket
from mailgateway.pipeline.rules import MailFacts, RuleOutcome, RuleSet, headers_of, match
from mailgateway.pipeline.similar import asks_status
from mailgateway.reply_token import ReplyToken, TokenPurpose, reply_address
from mailgateway.solved import similar_solved
from mailgateway.store import Store
from mailgateway.tickets import format_tag

_REFUSALS_TOLD_EVERY = timedelta(hours=24)
REFUSAL_EVENT = "staff_mail_refused"


def ticket_ref(ticket: Ticket, found_by: str) -> d.TicketRef:
    (customer,), _ = customer_recipients(ticket)
    return d.TicketRef(
        ticket.number, ticket.status, ticket.account.id, tuple(ticket.watchers or ()),
        found_by, ticket.language, ticket.group,
        ticket.assignee.email if ticket.assignee is not None else None, customer,
        ticket.root_message_id)


def policy(settings: Settings) -> d.Policy:
    helpdesk = settings.helpdesk
    return d.Policy(helpdesk.unknown_sender, helpdesk.closed_reply, helpdesk.language,
                    settings.outbound.stranger_answers_per_hour, helpdesk.spam_subject_tags,
                    helpdesk.solved_words, settings.duplicates.action,
                    settings.duplicates.threshold, settings.outbound.bounce_limit)


def read_facts(
    store: Store, settings: Settings, now: datetime, rules: RuleSet, mail: ParsedMail,
    found: Findings, sender: Sender, ticket: d.TicketRef | None, body: str,
    envelope_from: str | None, vouched: bool,
) -> d.Facts:
    """The facts of a mail a person wrote (see `decide.Facts`)."""
    facts = d.Facts(mail, found.classification, sender, ticket, body,
                    envelope_from=envelope_from, policy=policy(settings),
                    form=found.new_ticket or route_new_ticket(mail.text))
    if sender.kind is SenderKind.STAFF:
        authority = (_authority(settings, now, sender, ticket, found, vouched)
                     if ticket is not None else None)
        if ticket is not None:
            facts = replace(facts, ticket=_with_conversation(store, ticket))
        return replace(
            facts, staff_authority=authority,
            technicians=_technicians(store, assignees(body)),
            refusal_told=ticket is not None and _refusal_told(store, ticket, now),
            group_recipients=_groups(store, settings, (ticket.group if ticket else None,)))
    customer = _customer(store, sender)
    if not d.continues_open_ticket(sender, ticket):
        facts = replace(facts, rules=_rules(rules, mail, sender, customer))
        facts = replace(facts, **_new_request(store, settings, now, mail, sender, ticket,
                                              customer, facts.form[1]))
    facts = replace(facts, customer=customer,
                    collaborators=_collaborators(store, mail, sender, customer))
    groups = (d.ticket_fields(facts).group, ticket.group if ticket else None)
    strangers = (_strangers_answered(store, now) if sender.kind is SenderKind.UNKNOWN
                 else 0)
    return replace(facts, group_recipients=_groups(store, settings, groups),
                   strangers_answered=strangers)


def _new_request(
    store: Store, settings: Settings, now: datetime, mail: ParsedMail, sender: Sender,
    ticket: d.TicketRef | None, customer: d.Customer | None, description: str,
) -> dict[str, Any]:
    """What a mail that opens no existing ticket's thread may be: a request for the
    STATO page, a repeat of a recent open ticket, or a new request with solved
    tickets like it."""
    account = customer.account_id if customer is not None else None
    if account is None or sender.kind is SenderKind.UNKNOWN or store.archive:
        return {}
    if ticket is None and asks_status(mail.subject):
        return {"status_page": status_page(store, settings, sender, customer)}
    request = f"{mail.subject}\n{description or mail.text}"
    similar = similar_solved(store.session, account, request, scope=settings.similar.scope,
                             limit=settings.similar.limit)
    recent: tuple[d.RecentTicket, ...] = ()
    if settings.duplicates.action != "off" and ticket is None:
        recent = _recent_open(store, account, now - timedelta(
            hours=settings.duplicates.window_hours))
    return {"similar": similar, "recent": recent}


_RECENT_AT_MOST = 20
_ASSIGNEE = aliased(Staff)
_FIRST_REQUEST = (select(Message.body)
                  .where(Message.ticket_id == Ticket.id, Message.direction == "in")
                  .order_by(Message.id).limit(1).scalar_subquery())
# Built once: it runs for every new request. Rows rather than objects: an account
# that writes often has many open tickets.
_RECENT_OPEN = (
    select(Ticket.number, Ticket.status, Ticket.watchers, Ticket.language, Ticket.group,
           Ticket.root_message_id, Ticket.pec_address, Ticket.subject,
           _ASSIGNEE.email.label("assignee"), Person.email.label("person"),
           Account.main_email, Account.answer_email, _FIRST_REQUEST.label("request"))
    .join(Account, Account.id == Ticket.account_id)
    .outerjoin(Person, Person.id == Ticket.person_id)
    .outerjoin(_ASSIGNEE, _ASSIGNEE.id == Ticket.assignee_id)
    .where(Ticket.account_id == bindparam("account"),
           Ticket.status != TicketStatus.CHIUSO.value, Ticket.updated_at >= bindparam("since"))
    .order_by(Ticket.updated_at.desc()).limit(_RECENT_AT_MOST))


def _recent_open(store: Store, account_id: int, since: datetime) -> tuple[d.RecentTicket, ...]:
    rows = store.session.execute(
        _RECENT_OPEN, {"account": account_id, "since": since}).all()
    return tuple(d.RecentTicket(
        d.TicketRef(row.number, row.status, account_id, tuple(row.watchers or ()), "duplicate",
                    row.language, row.group, row.assignee,
                    customer_address(row.person, row.main_email, row.answer_email,
                                     row.pec_address), row.root_message_id),
        row.subject, row.request or "") for row in rows)


def status_page(store: Store, settings: Settings, sender: Sender,
                customer: d.Customer | None) -> d.StatusPage:
    """The portal's page for the sender: the whole account's tickets for its main
    address, a collaborator's own and watched tickets otherwise; never another
    account's."""
    assert customer is not None and customer.account_id is not None
    whole = sender.email == customer.main_email.lower() or sender.person_id is None
    rows = store.session.execute(
        select(Ticket.number, Ticket.subject, Ticket.status, Ticket.updated_at,
               Ticket.person_id, Ticket.watchers)
        .where(Ticket.account_id == customer.account_id)
        .order_by(Ticket.updated_at.desc())).all()
    if not whole:
        rows = [r for r in rows if r.person_id == sender.person_id
                or sender.email in (w.lower() for w in r.watchers or ())]
    counts = {state.value: 0 for state in TicketStatus}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    helpdesk = settings.helpdesk
    lines = []
    for row in rows:
        if row.status == TicketStatus.CHIUSO.value:
            continue
        address = reply_address(helpdesk.address, helpdesk.secret,
                                ReplyToken(TokenPurpose.CUSTOMER, row.number))
        subject = f"Re: {format_tag(helpdesk.ticket_tag, row.number)} {row.subject}"
        lines.append(d.StatusLine(row.number, row.subject, row.status, row.updated_at,
                                  address, f"mailto:{address}?subject={quote(subject)}"))
    return d.StatusPage({"TUTTI": len(rows), **counts}, tuple(lines), whole,
                        sender.name or customer.main_email)


def _with_conversation(store: Store, ticket: d.TicketRef) -> d.TicketRef:
    """The ticket with the mails exchanged on it: a technician's answer threads there."""
    row = store.ticket_numbered(ticket.number)
    if row is None:
        return ticket
    thread = conversations(store.session, [row])[row.id]
    return replace(ticket, conversation=tuple(thread),
                   latest_customer_mail=latest_customer_mail(store.session, row.id))


def _authority(
    settings: Settings, now: datetime, sender: Sender, ticket: d.TicketRef, found: Findings,
    vouched: bool,
) -> tuple[Authority, str]:
    helpdesk, groups = settings.helpdesk, settings.groups
    proof = StaffProof(found.keys.token, vouched, helpdesk.secret, now.date(),
                       helpdesk.staff_token_max_age_days)
    group = groups[sender.group].address if sender.group and sender.group in groups else None
    return staff_authority(proof, sender.email, group, ticket.number)


def _customer(store: Store, sender: Sender) -> d.Customer | None:
    if sender.kind is SenderKind.UNKNOWN:
        return None
    account = store.session.get(Account, sender.account_id)
    if account is None:
        return None
    return d.Customer(account.id, sender.person_id, account.language, account.verified,
                      account.main_email, account.answer_email)


def _rules(rules: RuleSet, mail: ParsedMail, sender: Sender,
           customer: d.Customer | None) -> RuleOutcome:
    if not rules.rules:
        return RuleOutcome()
    account = customer.main_email if customer is not None else None
    return match(rules, MailFacts(
        subject=mail.subject, body=mail.text, sender=sender.email,
        recipients=tuple(a.lower() for a in (*mail.to, *mail.cc)),
        headers=headers_of(mail.headers),
        attachments=tuple(a.filename for a in mail.attachments), account=account))


def _collaborators(
    store: Store, mail: ParsedMail, sender: Sender, customer: d.Customer | None
) -> tuple[str, ...]:
    """Addresses in Cc that are the sender's account's: they follow the new ticket."""
    candidates = [a for a in mail.cc if a != sender.email]
    if not candidates or customer is None or customer.account_id is None:
        return ()
    persons = set(store.session.scalars(select(Person.email).where(
        Person.email.in_(candidates), Person.account_id == customer.account_id)))
    allowed = persons | {customer.main_email}
    return tuple(a for a in candidates if a in allowed)


def _technicians(store: Store, names: Sequence[str]) -> dict[str, str]:
    """The technician each `#assegna` name or address names."""
    found: dict[str, str] = {}
    for name in names:
        staff = store.session.scalars(select(Staff).where(
            (Staff.email == name) | (func.lower(Staff.name) == name))).first()
        if staff is not None:
            found[name] = staff.email
    return found


def _groups(store: Store, settings: Settings,
            groups: Sequence[str | None]) -> dict[str | None, tuple[str, ...]]:
    return {group: group_recipients(store.session, settings, group) for group in set(groups)}


def _strangers_answered(store: Store, now: datetime) -> int:
    kinds = (MailKind.UNKNOWN_SENDER.value, MailKind.REJECTED.value)
    return store.session.scalar(
        select(func.count()).select_from(OutboxMail).where(
            OutboxMail.kind.in_(kinds), OutboxMail.ticket_id.is_(None),
            OutboxMail.created_at > now - timedelta(hours=1))) or 0


def _refusal_told(store: Store, ticket: d.TicketRef, now: datetime) -> bool:
    return store.session.scalar(
        select(func.count()).select_from(Event).join(Ticket, Ticket.id == Event.ticket_id)
        .where(Ticket.number == ticket.number, Event.kind == REFUSAL_EVENT,
               Event.at > now - _REFUSALS_TOLD_EVERY)) != 0


# A hard bounce that names neither the row nor the mail is tied to the latest mail to
# its recipient, among those sent this long ago at most.
BOUNCE_LOOKBACK = timedelta(days=14)
_SENT_STATES = (OutboxStatus.SENT.value, OutboxStatus.BOUNCED.value,
                OutboxStatus.DELIVERED.value)
_MOST_IDS = 50


def read_sent_mails(
    session: Session, report: BounceReport, now: datetime
) -> tuple[SentMail, ...]:
    """The outbox rows a delivery report may be about, newest first: the row its
    return path names, the rows of the Message-IDs it returns, and else the latest
    mail sent to each recipient it says failed. One query each, by primary key,
    by the unique Message-ID, and by the (status, next_attempt_at) index."""
    columns = (OutboxMail.id, OutboxMail.message_id, OutboxMail.recipients)
    rows: dict[int, SentMail] = {}

    def keep(found: Iterable[Any]) -> None:
        for id_, message_id, recipients in found:
            rows[id_] = SentMail(id_, message_id, tuple(recipients or ()))

    if report.outbox_id is not None:
        keep(session.execute(select(*columns).where(OutboxMail.id == report.outbox_id)))
    if not rows and report.message_ids:
        keep(session.execute(select(*columns).where(
            OutboxMail.message_id.in_(list(report.message_ids[:_MOST_IDS])))))
    if not rows:
        recipients_text = cast(OutboxMail.recipients, String)
        for outcome in report.recipients:
            if outcome.action != Action.FAILED:
                continue
            keep(session.execute(
                select(*columns).where(
                    OutboxMail.status.in_(_SENT_STATES),
                    OutboxMail.next_attempt_at >= now - BOUNCE_LOOKBACK,
                    recipients_text.contains(f'"{outcome.address}"', autoescape=True))
                .order_by(OutboxMail.id.desc()).limit(1)))
    return tuple(sorted(rows.values(), key=lambda s: -s.id))


def read_receipt(session: Session, receipt: PecFacts) -> tuple[BounceMatch, ...]:
    """A PEC receipt's outcome for the outbox row of the Message-ID it names, if ours."""
    ids = list(receipt.original_ids())
    found = session.execute(select(OutboxMail.id, OutboxMail.message_id, OutboxMail.recipients)
                            .where(OutboxMail.message_id.in_(ids))).first() if ids else None
    if found is None:
        return ()
    return (receipt_outcome(receipt, SentMail(found[0], found[1], tuple(found[2] or ()))),)


_TELL_GROUP = frozenset(k.value for k in CUSTOMER_KINDS)


def read_delivered(
    session: Session, settings: Settings, matches: tuple[BounceMatch, ...]
) -> dict[str, Any]:
    """The `Facts` of the outcomes of our mails: the rows they are about, and the runs
    of bounces of the addresses that bounced."""
    sent: dict[int, d.SentRef] = {}
    for found in matches:
        row = session.get(OutboxMail, found.outbox_id)
        if row is None or row.id in sent:
            continue
        ticket = row.ticket
        group = (group_recipients(session, settings, ticket.group) or (
            settings.helpdesk.address,)) if ticket is not None else ()
        sent[row.id] = d.SentRef(ticket.number if ticket is not None else None, row.kind,
                                 row.kind in _TELL_GROUP,
                                 row.status == OutboxStatus.BOUNCED.value, row.sent_at, group)
    addresses = {m.outcome.address for m in matches if m.outcome.action == Action.FAILED}
    bouncing = {b.address: (b.bounces, b.flagged_at is not None) for b in session.scalars(
        select(BouncingAddress).where(BouncingAddress.address.in_(addresses)))} if addresses \
        else {}
    return {"bounces": matches, "sent": sent, "bouncing": bouncing}
