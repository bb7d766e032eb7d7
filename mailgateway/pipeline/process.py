"""One inbox row → its effects, in the caller's transaction.

`analyse` reads (who is the sender, which ticket) and runs the pure stages
to a Decision; `process_inbox_mail` has `apply` write its effects and
records the inbox row's fate. The caller commits once, so a crash anywhere
leaves either all of a mail's effects or none. Every read and the writes
later reads depend on go through the `Store` the caller passes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from email.utils import parseaddr

import structlog

from mailgateway.db.models import InboxMail, InboxStatus, Ticket
from mailgateway.pipeline import apply
from mailgateway.pipeline import decide as d
from mailgateway.pipeline.context import Analysis, Pipeline
from mailgateway.pipeline.decide import Facts, decide
from mailgateway.pipeline.facts import read_facts, ticket_ref
from mailgateway.pipeline.identify import Sender, identify
from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.prepare import Findings, find, finding_settings
from mailgateway.pipeline.quote import strip_quotes
from mailgateway.pipeline.thread import ThreadKeys
from mailgateway.store import Store

log = structlog.get_logger()


def analyse(
    store: Store, pipeline: Pipeline, mail: ParsedMail, envelope_from: str | None = None,
    findings: Findings | None = None, *, trusts_authentication_results: bool = False,
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
    ticket, found_by = _find_ticket(store, found.keys)
    ref = ticket_ref(ticket, found_by) if ticket is not None else None
    if classification.kind is not None or mail.over_limit is not None or not sender.email:
        facts = Facts(mail, classification, sender, ref)
    else:
        body = mail.text
        if ticket is not None:
            body = found.unquoted if found.unquoted is not None else strip_quotes(mail.text)
        facts = read_facts(store, settings, pipeline.clock.now(), pipeline.rules.current(),
                           mail, found, sender, ref, body, envelope_from,
                           found.vouched and trusts_authentication_results)
    return Analysis(mail, classification, sender, ticket, decide(facts), facts.rules.matched)


def process_inbox_mail(
    store: Store, pipeline: Pipeline, row: InboxMail, mail: ParsedMail,
    findings: Findings | None = None,
) -> Analysis:
    """Apply the decision for the stored mail `row` and record its fate on the row."""
    analysis = analyse(store, pipeline, mail, row.envelope_from, findings,
                       trusts_authentication_results=row.trusts_authentication_results)
    decision = analysis.decision
    row.subject = mail.subject[:1000]
    row.sender = analysis.sender.email[:320] or None
    status, ticket = InboxStatus.PROCESSED, None
    match decision:
        case d.Ignore(reason):
            status = InboxStatus.IGNORED
        case d.Quarantine(reason):
            status = InboxStatus.QUARANTINED
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
    log.info("mail processed", status=row.status, reason=reason,
             ticket=ticket.number if ticket is not None else None)
    return analysis


def quarantine(row: InboxMail, error: Exception, now: datetime) -> None:
    """Keep the mail with the reason it failed, visible and re-processable (`inbox retry`)."""
    reason = f"{error.__class__.__name__}: {error}"[:2000]
    log.error("mail quarantined", reason=reason, exc_info=error)
    row.status, row.reason = InboxStatus.QUARANTINED.value, reason
    row.processed_at, row.attempts = now, row.attempts + 1


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


def _identify(store: Store, mail: ParsedMail, envelope_from: str | None) -> Sender:
    email = sender_address(mail, envelope_from)
    if not email:
        return identify("", mail.from_name, ())
    return identify(email, mail.from_name, store.directory(email))


def _find_ticket(store: Store, keys: ThreadKeys) -> tuple[Ticket | None, str]:
    """Tag first, then the signed token, then any Message-ID the ticket already knows."""
    for number, found_by in ((keys.tag_number, "subject tag"),
                             (keys.token.ticket_number if keys.token else None, "reply token")):
        if number:
            ticket = store.ticket_numbered(number)
            if ticket is not None:
                return ticket, found_by
    if keys.references:
        tickets = store.tickets_referencing(keys.references)
        if tickets:
            return tickets[0], "References"
    return None, ""
