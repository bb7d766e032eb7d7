"""The decision for one mail, as data, complete before anything is written.

`decide` is pure. It takes what the reading stages found (`Facts`: the mail,
its classification, the sender, the ticket it threads to, the rules that
matched, and the few directory rows the outcome depends on) and returns what
should happen and why: the ticket change, the new ticket's fields, the rules
that applied, and every mail to queue with its kind, recipients and
language (`PlannedMail`). `apply` writes exactly that; `mailgateway rules
test` prints it instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from typing import Any

from mailgateway.attachments import safe_filename
from mailgateway.outbound.addressing import thread_headers
from mailgateway.outbound.intent import MailIntent, MailKind
from mailgateway.pipeline.bounces import BounceMatch
from mailgateway.pipeline.classify import Classification
from mailgateway.pipeline.commands import StaffCommand, command_problem, read_commands
from mailgateway.pipeline.identify import Authority, Sender, SenderKind
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.pec import answer_address, certified_notice
from mailgateway.pipeline.route import DEFAULT_IMPACT, DEFAULT_REQUEST_TYPE, Routing
from mailgateway.pipeline.rules import RuleOutcome
from mailgateway.pipeline.similar import Suggestion, numbers, resemblance, says_solved
from mailgateway.pipeline.spam import upstream_spam_verdict
from mailgateway.tickets import OPEN_STATES, TicketAction


@dataclass(frozen=True)
class TicketRef:
    """What the decision needs to know about the ticket a mail threads to."""

    number: str
    status: str
    account_id: int
    watchers: tuple[str, ...]
    found_by: str
    language: str = "it"
    group: str | None = None
    assignee: str | None = None        # the assignee's address
    customer: str = ""                 # the PERSONA's address, else the account's
    root_message_id: str | None = None
    # The Message-IDs of the mails the customer and the desk exchanged, oldest first,
    # and the customer's latest: what an answer threads under (read for technicians).
    conversation: tuple[str, ...] = ()
    latest_customer_mail: str | None = None


@dataclass(frozen=True)
class Customer:
    """The sender's account, as a new ticket of theirs would be opened under it."""

    account_id: int | None     # None: an unverified account is made for the sender
    person_id: int | None
    language: str | None
    verified: bool = True
    main_email: str = ""
    answer_email: str | None = None  # answers to its PEC mail go here (`Account.answer_email`)


@dataclass(frozen=True)
class Policy:
    unknown_sender: str = "reject"
    closed_reply: str = "reject"
    language: str = "it"                 # the desk's, for mails to technicians
    stranger_answers_per_hour: int = 60
    spam_subject_tags: tuple[str, ...] = ("[SPAM]", "***SPAM***")
    solved_words: tuple[str, ...] = ("risolto", "chiuso", "solved")
    duplicates: str = "thread"           # thread | flag | off
    duplicate_threshold: float = 0.7


@dataclass(frozen=True)
class RecentTicket:
    """A ticket of the sender's account, not CHIUSO, created or updated in the
    duplicates window: what a new request may repeat."""

    ref: TicketRef
    subject: str
    request: str


@dataclass(frozen=True)
class StatusLine:
    """An open ticket on the STATO page, with the signed address that answers it."""

    number: str
    subject: str
    status: str
    last_activity: Any        # a datetime
    reply_address: str
    mailto: str


@dataclass(frozen=True)
class StatusPage:
    """The portal's "I MIEI TICKET" page: counts per state, then the open tickets."""

    counts: Mapping[str, int]
    open_tickets: tuple[StatusLine, ...]
    whole_account: bool       # the main address asked: every ticket of the account
    customer: str = ""        # whom the page greets: the person, else the account


@dataclass(frozen=True)
class Facts:
    """Everything `decide` looks at, read beforehand."""

    mail: ParsedMail
    classification: Classification
    sender: Sender
    ticket: TicketRef | None = None
    body: str = ""                        # the text; a reply's without its quotes
    staff_authority: tuple[Authority, str] | None = None
    form: tuple[Routing, str] = (Routing(), "")  # the form lines' fields; the description
    rules: RuleOutcome = field(default_factory=RuleOutcome)
    customer: Customer | None = None
    collaborators: tuple[str, ...] = ()  # addresses in Cc that are the sender's account's
    group_recipients: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)
    technicians: Mapping[str, str] = field(default_factory=dict)  # #assegna name → address
    envelope_from: str | None = None
    strangers_answered: int = 0           # refusals to strangers in the last hour
    refusal_told: bool = False            # the ticket's group heard of a refusal today
    policy: Policy = field(default_factory=Policy)
    similar: tuple[Suggestion, ...] = ()  # solved tickets resembling a new request
    recent: tuple[RecentTicket, ...] = ()  # what a new request may repeat
    status_page: StatusPage | None = None  # the sender asked for STATO
    bounces: tuple[BounceMatch, ...] = ()  # a delivery report's outcomes of our mails


@dataclass(frozen=True)
class PlannedMail:
    """A mail the decision queues (see `outbound.intent.MailIntent`)."""

    kind: MailKind
    to: tuple[str, ...]
    language: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    with_files: bool = False  # it carries the files the mail's message keeps

    def intent(self, files: Sequence[Mapping[str, Any]] = ()) -> MailIntent:
        context = {**self.context, "attachments": list(files)} if self.with_files else dict(
            self.context)
        return MailIntent(kind=self.kind, to=self.to, cc=self.cc, language=self.language,
                          in_reply_to=self.in_reply_to, references=self.references,
                          context=context)


@dataclass(frozen=True)
class TicketFields:
    """A new ticket's fields: the customer's form lines, then the rules, then defaults."""

    product: str | None = None
    request_type: str = DEFAULT_REQUEST_TYPE
    impact: str = DEFAULT_IMPACT
    group: str | None = None
    assignee: str | None = None          # a technician's address
    watchers: tuple[str, ...] = ()
    language: str = "it"


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class Spam:
    """Flagged by the mail server's filter: kept, no ticket, no answer."""

    reason: str


@dataclass(frozen=True)
class Drop:
    """A rule's `action = "drop"`: recorded, nothing opened, nothing answered."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Reject:
    """No ticket; the sender told why when that may be done."""

    answer: MailKind
    reason: str
    ticket: TicketRef | None = None
    rule: str | None = None
    mails: tuple[PlannedMail, ...] = ()


@dataclass(frozen=True)
class OpenTicket:
    reason: str
    fields: TicketFields
    description: str
    customer: Customer
    rules: tuple[str, ...] = ()
    refused_attachments: tuple[str, ...] = ()
    linked_ticket: TicketRef | None = None  # the closed ticket it continues
    mails: tuple[PlannedMail, ...] = ()
    duplicate_of: TicketRef | None = None   # flagged: it seems to repeat this open ticket


@dataclass(frozen=True)
class CustomerReply:
    ticket: TicketRef
    reason: str
    body: str
    mails: tuple[PlannedMail, ...] = ()
    solved: bool = False       # the customer says it is solved: the ticket closes
    joined: bool = False       # a new request repeating this ticket, added to it


@dataclass(frozen=True)
class StatusReport:
    """The sender's tickets sent back by mail; no ticket opened."""

    reason: str
    mails: tuple[PlannedMail, ...] = ()


@dataclass(frozen=True)
class StaffReply:
    ticket: TicketRef
    reason: str
    body: str
    commands: tuple[StaffCommand, ...] = ()
    refused: str = ""   # why the mail's commands were not carried out, if they were not
    assignee: str | None = None  # the technician `#assegna` names, when found
    mails: tuple[PlannedMail, ...] = ()

    @property
    def internal(self) -> bool:
        return any(c.name == "note" for c in self.commands)

    @property
    def actions(self) -> tuple[TicketAction, ...]:
        """State changes in order: taking, answering (a non-internal text), closing."""
        result: list[TicketAction] = []
        names = {c.name for c in self.commands}
        if "take" in names:
            result.append(TicketAction.TAKEN)
        if self.body.strip() and not self.internal:
            result.append(TicketAction.STAFF_ANSWERED)
        if "close" in names:
            result.append(TicketAction.CLOSED)
        return tuple(result)


@dataclass(frozen=True)
class RefuseStaffMail:
    """A technician's address without the proof to act on the ticket it names:
    nothing is done, the refusal is recorded on that ticket and its group told."""

    ticket: TicketRef
    reason: str
    mails: tuple[PlannedMail, ...] = ()


@dataclass(frozen=True)
class RecordDelivery:
    """A delivery report about mails of ours: each outcome is recorded on its outbox
    row (`outbound.delivery`); nothing is answered."""

    reason: str
    outcomes: tuple[BounceMatch, ...]


Decision = (Ignore | Quarantine | Spam | Drop | Reject | OpenTicket | CustomerReply | StaffReply
            | RefuseStaffMail | RecordDelivery | StatusReport)


def decide(facts: Facts) -> Decision:
    """What to do with a mail, and every mail it causes."""
    mail, sender, ticket = facts.mail, facts.sender, facts.ticket
    if mail.over_limit is not None:
        return Quarantine(f"not read: {mail.over_limit}")
    spam = upstream_spam_verdict(mail, facts.policy.spam_subject_tags)
    if spam is not None:
        return Spam(spam)
    if facts.classification.kind is not None:
        reason = f"{facts.classification.kind.value}: {facts.classification.reason}"
        if facts.bounces:
            rows = ", ".join(sorted({str(b.outbox_id) for b in facts.bounces}))
            return RecordDelivery(f"{reason}; about outbox {rows}", facts.bounces)
        return Ignore(reason)
    if not sender.email:
        return Quarantine("no valid sender address (From, Reply-To, Sender, envelope, "
                          "Return-Path; a mailbox of at most 254 characters): nobody to answer")
    if sender.kind == SenderKind.STAFF:
        return _decide_staff(facts)
    if ticket is not None and _belongs(sender, ticket):
        if ticket.status in OPEN_STATES:
            return _customer_reply(facts, ticket)
        if facts.policy.closed_reply == "reject":
            return _closed_ticket_reject(facts, ticket)
    outcome = facts.rules
    if outcome.action == "drop":
        return Drop(outcome.action_rule or "", f"dropped by rule {outcome.action_rule}")
    if outcome.action == "reject":
        reason = f"refused by rule {outcome.action_rule}"
        return Reject(MailKind.REJECTED, reason, rule=outcome.action_rule,
                      mails=_refusal(facts, MailKind.REJECTED, reason))
    if sender.kind == SenderKind.UNKNOWN and facts.policy.unknown_sender == "reject":
        reason = f"unknown sender {sender.email}"
        return Reject(MailKind.UNKNOWN_SENDER, reason,
                      mails=_refusal(facts, MailKind.UNKNOWN_SENDER, reason))
    if facts.status_page is not None and ticket is None:
        return _status_report(facts, facts.status_page)
    linked = ticket if ticket is not None and _belongs(sender, ticket) else None
    repeated = duplicate_of(facts) if linked is None else None
    if repeated is not None and facts.policy.duplicates == "thread":
        return _joined(facts, repeated)
    return _open_ticket(facts, linked, repeated)


def ticket_fields(facts: Facts) -> TicketFields:
    """The form lines win; rules fill what they left; then the desk's defaults."""
    form, chosen = facts.form[0], facts.rules.fields
    request_type = form.request_type or chosen.request_type or DEFAULT_REQUEST_TYPE
    impact = form.impact or chosen.impact or DEFAULT_IMPACT
    customer = facts.customer
    language = chosen.language or (customer.language if customer else None)
    return TicketFields(
        product=form.product or chosen.product, request_type=request_type, impact=impact,
        group=chosen.group or request_type, assignee=chosen.assignee,
        watchers=tuple(dict.fromkeys((*facts.collaborators, *chosen.watchers))),
        language=language or facts.policy.language)


def continues_open_ticket(sender: Sender, ticket: TicketRef | None) -> bool:
    """The customer (or a watcher) writing again on an open ticket: a reply, which
    routing rules, made for new requests, do not look at."""
    return ticket is not None and ticket.status in OPEN_STATES and _belongs(sender, ticket)


def _belongs(sender: Sender, ticket: TicketRef) -> bool:
    return sender.account_id == ticket.account_id or sender.email in ticket.watchers


def duplicate_of(facts: Facts) -> TicketRef | None:
    """The open ticket of the account a new request repeats: the same numbers in the
    subject, subject and text alike (`Policy.duplicate_threshold`), the most alike."""
    if facts.policy.duplicates == "off" or not facts.recent:
        return None
    threshold, text = facts.policy.duplicate_threshold, facts.form[1] or facts.mail.text
    best, best_score = None, 0.0
    for recent in facts.recent:
        if numbers(facts.mail.subject) != numbers(recent.subject):
            continue  # another error code, invoice, year: another incident
        subject = resemblance(facts.mail.subject, recent.subject)
        body = resemblance(text, recent.request)
        if subject >= threshold and body >= threshold and subject + body > best_score:
            best, best_score = recent.ref, subject + body
    return best


def _open_ticket(facts: Facts, linked: TicketRef | None,
                 repeated: TicketRef | None = None) -> OpenTicket:
    mail, sender = facts.mail, facts.sender
    fields = ticket_fields(facts)
    customer = facts.customer or Customer(None, None, None, verified=False)
    reason = "new ticket"
    if sender.kind == SenderKind.UNKNOWN:
        reason = "new ticket from an unknown sender (unverified account)"
    elif linked is not None:
        reason = f"new ticket: {linked.number} is closed"
    elif repeated is not None:
        reason = f"new ticket, flagged: it seems to repeat open ticket {repeated.number}"
    # An encrypted mail's parts are its sealed text, not files of the customer's:
    # the customer is told the desk cannot read it instead.
    refused = () if mail.encrypted else tuple(
        safe_filename(a.filename, a.content_type) for a in mail.attachments)
    rules = tuple(r for r in (*facts.form[0].rules, *facts.rules.matched) if r)
    similar = [s.context() for s in facts.similar]
    description = facts.form[1]
    in_reply_to, references = _answering(mail)
    watchers = tuple(w for w in fields.watchers if w != sender.email)
    mails: list[PlannedMail] = []
    if facts.classification.may_auto_answer:
        mails.append(PlannedMail(
            MailKind.ACKNOWLEDGMENT, (answer_address(mail, sender.email, customer.answer_email),),
            fields.language, watchers, in_reply_to,
            references, {"refused_attachments": list(refused), "body": description,
                         "unverified": not customer.verified, "encrypted": mail.encrypted,
                         # Echoed only as the customer chose it, never a default.
                         "impact_stated": facts.form[0].impact is not None,
                         "similar": similar,
                         "solved_words": [w.upper() for w in facts.policy.solved_words]}))
    technicians = (fields.assignee,) if fields.assignee else facts.group_recipients.get(
        fields.group, ())
    mails += [PlannedMail(
        MailKind.NEW_TICKET_NOTICE, (address,), facts.policy.language, (), in_reply_to,
        references, {"body": description, "author": sender.email,
                     "refused_attachments": list(refused), "unverified": not customer.verified,
                     "encrypted": mail.encrypted, "pec": certified_notice(mail),
                     "similar": similar,
                     "duplicate_of": repeated.number if repeated is not None else None})
        for address in technicians]
    return OpenTicket(reason, fields, description, customer, rules, refused, linked,
                      tuple(mails), repeated)


def _joined(facts: Facts, ticket: TicketRef) -> CustomerReply:
    """A repeated request added to the open ticket it repeats; the customer told which."""
    body = facts.form[1] or facts.body
    reply = _customer_reply(replace(facts, ticket=ticket, body=body), ticket)
    told = _answer_sender(facts, MailKind.DUPLICATE_JOINED, ticket.language,
                          joined=ticket.number, body=body)
    return replace(reply, reason=f"repeats open ticket {ticket.number}: added to it",
                   joined=True, mails=(*reply.mails, *told))


def _status_report(facts: Facts, page: StatusPage) -> StatusReport:
    language = (facts.customer.language if facts.customer else None) or facts.policy.language
    lines = [{"number": line.number, "subject": line.subject, "status": line.status,
              "last_activity": line.last_activity, "reply_address": line.reply_address,
              "mailto": line.mailto} for line in page.open_tickets]
    mails = _answer_sender(facts, MailKind.STATUS_REPORT, language, counts=dict(page.counts),
                           open_tickets=lines, whole_account=page.whole_account,
                           customer=page.customer)
    return StatusReport(f"status report to {facts.sender.email}", mails)


def _closed_ticket_reject(facts: Facts, ticket: TicketRef) -> Reject:
    """The customer told the ticket is closed (under the ticket's own subject, since
    the answer is about it), and whoever handled it given the customer's words, so
    that nothing the customer wrote is lost."""
    reason = f"ticket {ticket.number} is closed"
    mails = list(_answer_sender(facts, MailKind.CLOSED_TICKET, ticket.language,
                                reason=reason, body=facts.body))
    in_reply_to, references = _answering(facts.mail)
    technicians = ((ticket.assignee,) if ticket.assignee
                   else facts.group_recipients.get(ticket.group, ()))
    mails += [PlannedMail(
        MailKind.CUSTOMER_REPLY_NOTICE, (address,), facts.policy.language, (), in_reply_to,
        references, {"body": facts.body, "author": facts.sender.email, "closed": True,
                     "refused_attachments": [safe_filename(a.filename, a.content_type)
                                             for a in facts.mail.attachments]})
        for address in technicians]
    return Reject(MailKind.CLOSED_TICKET, reason, ticket, mails=tuple(mails))


def signed_off(text: str, name: str, email: str) -> bool:
    """Whether a technician's text already ends with their own name (a sign-off),
    so that the answer does not sign it a second time."""
    tail = [line.strip().lower() for line in text.strip().splitlines()[-3:] if line.strip()]
    names = {n.lower() for n in (name, name.split()[0] if name.split() else "",
                                 email.partition("@")[0]) if len(n) > 1}
    return any(line.strip(" ,.-") in names or (name and name.lower() in line)
               for line in tail)


def _customer_reply(facts: Facts, ticket: TicketRef) -> CustomerReply:
    in_reply_to, references = _answering(facts.mail)
    technicians = ((ticket.assignee,) if ticket.assignee
                   else facts.group_recipients.get(ticket.group, ()))
    mails = tuple(PlannedMail(
        MailKind.CUSTOMER_REPLY_NOTICE, (address,), facts.policy.language, (), in_reply_to,
        references, {"body": facts.body, "author": facts.sender.email,
                     "encrypted": facts.mail.encrypted,
                     "pec": certified_notice(facts.mail)}, with_files=True)
        for address in technicians)
    if facts.mail.encrypted:
        # The technicians are told by their notice; the customer, who cannot know
        # that the desk reads no encrypted mail, is told here.
        mails += _answer_sender(facts, MailKind.ENCRYPTED_MAIL, ticket.language,
                                encrypted=facts.mail.encrypted)
    solved = says_solved(facts.body, facts.policy.solved_words)
    reason = f"reply to {ticket.number} ({ticket.found_by})"
    if solved:
        reason = f"the customer says {ticket.number} is solved ({ticket.found_by})"
    return CustomerReply(ticket, reason, facts.body, mails, solved=solved)


def _decide_staff(facts: Facts) -> Decision:
    sender, ticket, authority = facts.sender, facts.ticket, facts.staff_authority
    if ticket is None or authority is None:
        return Quarantine(f"mail from technician {sender.email} matches no ticket: "
                          "nothing done")
    level, why = authority
    if level is Authority.NONE:
        reason = f"refused, possibly forged: {why}"
        return RefuseStaffMail(ticket, reason, _refusal_notice(facts, ticket, reason))
    commands, text = read_commands(facts.body)
    problem = command_problem(commands)
    if problem:
        return Quarantine(f"technician command refused: {problem}")
    refused = ""
    if commands and level is Authority.ANSWER:
        refused = f"{' '.join('#' + c.name for c in commands)} not done: {why}"
        if not text:
            return RefuseStaffMail(ticket, refused, _refusal_notice(facts, ticket, refused))
        commands = ()
    if ticket.status not in OPEN_STATES and text:
        # A closed ticket is never reopened: what a technician adds is kept as a note.
        return StaffReply(ticket, f"note on closed ticket {ticket.number}", text,
                          (StaffCommand("note"),), refused,
                          mails=_refusal_notice(facts, ticket, refused))
    if not text and not commands:
        return Ignore(f"empty mail from technician {sender.email}")
    assign = next((c.argument.lower() for c in commands if c.name == "assign"), None)
    assignee = facts.technicians.get(assign) if assign else None
    reply = StaffReply(ticket, f"technician {sender.email} on {ticket.number} ({why})", text,
                       commands, refused, assignee)
    mails = list(_refusal_notice(facts, ticket, refused))
    if text and not reply.internal:
        # Under the customer mail it answers, in the thread the customer's client built.
        in_reply_to, references = thread_headers(
            ticket.conversation or tuple(filter(None, (ticket.root_message_id,))),
            ticket.latest_customer_mail or ticket.root_message_id)
        mails.append(PlannedMail(
            MailKind.ANSWER, (ticket.customer,), ticket.language,
            tuple(w for w in ticket.watchers if w != ticket.customer), in_reply_to,
            references, {"body": text, "author": sender.name or sender.email,
                         "signed_off": signed_off(text, sender.name, sender.email)},
            with_files=True))
    return StaffReply(ticket, reply.reason, text, commands, refused, assignee, tuple(mails))


def _refusal_notice(facts: Facts, ticket: TicketRef, reason: str) -> tuple[PlannedMail, ...]:
    """The ticket's group told of a refused technician's mail, once a day at most."""
    if not reason or facts.refusal_told:
        return ()
    return tuple(PlannedMail(MailKind.REFUSED_NOTICE, (address,), facts.policy.language,
                             context={"author": facts.sender.email, "reason": reason})
                 for address in facts.group_recipients.get(ticket.group, ()))


def _answering(mail: ParsedMail) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References of an answer to `mail`."""
    return mail.message_id, (*mail.references, *((mail.message_id,) if mail.message_id else ()))


def _answer_sender(facts: Facts, kind: MailKind, language: str,
                   **context: Any) -> tuple[PlannedMail, ...]:
    """An automatic answer to a known sender's From, unless the mail is a machine's."""
    if not facts.classification.may_auto_answer:
        return ()
    in_reply_to, references = _answering(facts.mail)
    return (PlannedMail(kind, (facts.mail.from_addr,), language, (), in_reply_to, references,
                        context),)


def _refusal(facts: Facts, kind: MailKind, reason: str) -> tuple[PlannedMail, ...]:
    """A refusal of a mail that opens nothing. To a sender we know: its From. To a
    stranger: only when its From is its envelope sender too (anyone can write any
    From: answering it would mail our refusals to third parties), quoting nothing of
    the mail, and not past the hourly cap."""
    language = (facts.customer.language if facts.customer else None) or facts.policy.language
    if facts.sender.kind != SenderKind.UNKNOWN:
        return _answer_sender(facts, kind, language, reason=reason)
    if not facts.classification.may_auto_answer:
        return ()
    to = _stranger_address(facts.mail, facts.envelope_from)
    if to is None or facts.strangers_answered >= facts.policy.stranger_answers_per_hour:
        return ()
    in_reply_to, references = _answering(facts.mail)
    return (PlannedMail(kind, (to,), language, (), in_reply_to, references,
                        {"sender": to, "reason": reason}),)


def _stranger_address(mail: ParsedMail, envelope_from: str | None) -> str | None:
    envelope = envelope_from if envelope_from is not None else mail.header("Return-Path")
    bare = parseaddr(envelope or "")[1].strip().lower()
    return mail.from_addr if bare and bare == mail.from_addr.lower() else None
