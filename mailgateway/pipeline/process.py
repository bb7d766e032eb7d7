"""One inbox row → its effects, in the caller's transaction.

`analyse` reads (who is the sender, which ticket) and runs the pure stages
to a Decision; `process_inbox_mail` has `apply` write its effects and
records the inbox row's fate. The caller commits once, so a crash anywhere
leaves either all of a mail's effects or none. Every read and the writes
later reads depend on go through the `Store` the caller passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from email.utils import parseaddr

import structlog

from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, InboxStatus, Ticket
from mailgateway.pipeline import apply
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.bounces import correlate, read_report
from mailgateway.pipeline.classify import AutoKind, Classification, as_person, machine_sign
from mailgateway.pipeline.context import Analysis, Pipeline
from mailgateway.pipeline.decide import Facts, decide
from mailgateway.pipeline.facts import policy, read_facts, read_sent_mails, ticket_ref
from mailgateway.pipeline.identify import Sender, SenderKind, identify
from mailgateway.pipeline.mailbox import recovered_mailbox, valid_mailbox
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.pec_record import keep_certified
from mailgateway.pipeline.prepare import Findings, find, finding_settings, own_marks
from mailgateway.pipeline.quote import strip_quotes
from mailgateway.pipeline.thread import ThreadKeys
from mailgateway.reply_token import read_bounce_address
from mailgateway.store import Store

log = structlog.get_logger()


def analyse(
    store: Store, pipeline: Pipeline, mail: ParsedMail, envelope_from: str | None = None,
    findings: Findings | None = None, *, trusts_authentication_results: bool = False,
    envelope_to: tuple[str, ...] = (),
) -> Analysis:
    """Classify, identify, thread, read what the decision depends on, and decide;
    reads the database, writes nothing. `trusts_authentication_results`: the mail
    came through a transport whose MTA removes Authentication-Results headers of
    its name from incoming mail."""
    settings = pipeline.settings
    found = findings or find(finding_settings(settings), mail, unquote=False)
    classification = found.classification
    if envelope_from == "" and classification.may_auto_answer:
        # The null sender (MAIL FROM:<>) is how machines say "do not answer me".
        classification = replace(classification, may_auto_answer=False)
        found = replace(found, classification=classification)
    sender = _identify(store, mail, envelope_from)
    person = _a_customer_after_all(mail, settings, classification, sender, envelope_from,
                                   envelope_to)
    if person is not None:
        classification = person
        found = replace(found, classification=person)
    ticket, found_by = _find_ticket(store, found.keys, sender)
    ref = ticket_ref(ticket, found_by) if ticket is not None else None
    if classification.kind is AutoKind.BOUNCE and mail.over_limit is None:
        report = read_report(mail, helpdesk_address=settings.helpdesk.address,
                             secret=settings.helpdesk.secret, domains=settings.helpdesk.domains,
                             envelope_to=envelope_to)
        sent = read_sent_mails(store.session, report, pipeline.clock.now())
        facts = Facts(mail, classification, sender, ref, bounces=correlate(report, sent),
                      policy=policy(settings))
    elif classification.kind is not None or mail.over_limit is not None or not sender.email:
        facts = Facts(mail, classification, sender, ref, policy=policy(settings))
    else:
        body = mail.text
        if ticket is not None:
            body = found.unquoted if found.unquoted is not None else strip_quotes(mail.text)
        facts = read_facts(store, settings, pipeline.clock.now(), pipeline.rules.current(),
                           mail, found, sender, ref, body, envelope_from,
                           found.vouched and trusts_authentication_results)
    return Analysis(mail, classification, sender, ticket, decide(facts), facts.rules.matched)


# What a mail read as automatic may be, when a known customer sent it without any sign
# of a machine: their words about a bounce, or their mail through a list.
_CUSTOMER_KINDS = (SenderKind.ACCOUNT, SenderKind.PERSON)


def _a_customer_after_all(
    mail: ParsedMail, settings: Settings, classification: Classification, sender: Sender,
    envelope_from: str | None, envelope_to: tuple[str, ...],
) -> Classification | None:
    """A known customer's mail that only reads like a machine's, as a person's; else None.

    A server's report pasted into a request ("why do my mails bounce?") reads like a
    bounce, and a customer writing through a mailing list carries List-Id: neither
    may be swallowed. A bounce counts as a machine's only with a sign no person's mail
    has (`classify.machine_sign`), the null envelope sender, or our return path among
    the envelope recipients."""
    if sender.kind not in _CUSTOMER_KINDS or envelope_from == "":
        return None
    own = own_marks(settings)
    if classification.kind is AutoKind.BOUNCE and not classification.machine_sign:
        if any(read_bounce_address(a, settings.helpdesk.address, settings.helpdesk.secret)
               is not None for a in envelope_to):
            return None
        return as_person(mail, own, "a known customer's mail quoting a server's report")
    precedence = (mail.header("Precedence") or "").strip().lower()
    if classification.kind is AutoKind.BULK and mail.header("List-Id") is not None and (
            precedence not in ("bulk", "junk") and machine_sign(mail, own) is None):
        # Heard, not answered: a list may have rewritten who the mail is from.
        return Classification(None, "a known customer's mail through a mailing list "
                              "(not answered automatically)", may_auto_answer=False)
    return None


def process_inbox_mail(
    store: Store, pipeline: Pipeline, row: InboxMail, mail: ParsedMail,
    findings: Findings | None = None,
) -> Analysis:
    """Apply the decision for the stored mail `row` and record its fate on the row."""
    analysis = analyse(store, pipeline, mail, row.envelope_from, findings,
                       trusts_authentication_results=row.trusts_authentication_results,
                       envelope_to=tuple(row.envelope_to or ()))
    decision = analysis.decision
    row.subject = mail.subject[:1000]
    row.sender = analysis.sender.email[:320] or None
    status, ticket = InboxStatus.PROCESSED, None
    match decision:
        case d.Ignore(reason):
            status = InboxStatus.IGNORED
        case d.RecordDelivery(reason=reason):
            ticket = apply.record_delivery(store, pipeline, decision)
        case d.Quarantine(reason):
            status = InboxStatus.QUARANTINED
        case d.Spam(reason):
            status = InboxStatus.SPAM
        case d.Drop(reason=reason):
            status = InboxStatus.IGNORED
        case d.Reject():
            status, reason = InboxStatus.IGNORED, f"refused: {decision.reason}"
            ticket = apply.apply_reject(store, pipeline, analysis, decision)
        case d.OpenTicket(reason=reason):
            ticket = apply.open_ticket(store, pipeline, analysis, decision, row)
        case d.CustomerReply(reason=reason):
            ticket = apply.add_customer_reply(store, pipeline, analysis, decision, row)
        case d.StaffReply(reason=reason):
            ticket = apply.add_staff_reply(store, pipeline, analysis, decision, row)
        case d.StatusReport(reason=reason):
            apply.send_status_report(store, pipeline, decision)
        case d.RefuseStaffMail(reason=reason):
            status = InboxStatus.QUARANTINED
            ticket = apply.refuse_staff_mail(store, pipeline, analysis, decision)
    row.status, row.reason, row.processed_at = status.value, reason, pipeline.clock.now()
    row.ticket = ticket
    keep_certified(store, pipeline, analysis, row)  # a PEC envelope's facts, a receipt's news
    log.info("mail processed", status=row.status, reason=reason,
             ticket=ticket.number if ticket is not None else None)
    return analysis


def quarantine(row: InboxMail, error: Exception, now: datetime) -> None:
    """Keep the mail with the reason it failed, visible and re-processable (`inbox retry`)."""
    reason = f"{error.__class__.__name__}: {error}"[:2000]
    log.error("mail quarantined", reason=reason, exc_info=error)
    row.status, row.reason = InboxStatus.QUARANTINED.value, reason
    row.processed_at, row.attempts = now, row.attempts + 1


def sender_address(mail: ParsedMail, envelope_from: str | None = None) -> str:
    """Who to answer: the first valid mailbox of From, Reply-To, Sender, the envelope
    sender and Return-Path, each also read in obsolete syntax; "" when none is one
    (`test test@example.com`, `@powerupdev.com` are nobody to answer)."""
    for candidate in _sender_candidates(mail, envelope_from):
        address = candidate.strip().lower()
        if valid_mailbox(address):
            return address
    return ""


def _sender_candidates(mail: ParsedMail, envelope_from: str | None) -> Iterator[str]:
    yield mail.from_addr
    yield recovered_mailbox(mail.header("From"))
    yield from mail.reply_to
    yield _bare(mail.header("Sender"))
    yield recovered_mailbox(mail.header("Sender"))
    yield _bare(envelope_from)
    yield recovered_mailbox(mail.header("Return-Path"))


def _bare(value: str | None) -> str:
    return parseaddr(value or "")[1]


def _identify(store: Store, mail: ParsedMail, envelope_from: str | None) -> Sender:
    email = sender_address(mail, envelope_from)
    if not email:
        return identify("", mail.from_name, ())
    return identify(email, mail.from_name, store.directory(email))


def _find_ticket(store: Store, keys: ThreadKeys, sender: Sender) -> tuple[Ticket | None, str]:
    """Tag first, then the signed token, then the Message-IDs the mail answers."""
    for number, found_by in ((keys.tag_number, "subject tag"),
                             (keys.token.ticket_number if keys.token else None, "reply token")):
        if number:
            ticket = store.ticket_numbered(number)
            if ticket is not None:
                return ticket, found_by
    if keys.references:
        tickets = store.tickets_referencing(keys.references)
        if tickets:
            return next((t for t in tickets if _may_write_on(sender, t)), tickets[0]), "References"
    return None, ""


def _may_write_on(sender: Sender, ticket: Ticket) -> bool:
    """The first referenced ticket is not always the sender's: a reply to a stranger's
    mail that also references the sender's own first mail joins the sender's ticket.
    Ids come In-Reply-To first, then References newest first (`thread_keys`)."""
    if sender.kind == SenderKind.STAFF:
        return True
    return (sender.account_id is not None and ticket.account_id == sender.account_id) or (
        bool(sender.email) and sender.email in (ticket.watchers or ()))
