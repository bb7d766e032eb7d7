"""What a PEC mail leaves behind, once its decision is applied.

`pec.read_certified` already turned an envelope into the customer's mail, and
`classify` called a receipt automatic, so the decision was taken as for any
mail. Two things remain, written here in the caller's transaction:

- an envelope's facts go on the message it became (provider, certified sender
  and time, `daticert.xml` identifiers), the ticket learns the certified address
  its customer writes from, and an anomaly envelope (mail the provider could not
  certify) is an event the technicians see on the ticket;
- a receipt about a mail of ours becomes that outbox row's delivery evidence
  (`outbound.delivery`): `accettazione` and `avvenuta-consegna` mark it delivered
  at the certified time, `non-accettazione`, `errore-consegna` and
  `preavviso-errore-consegna` mark it bounced, with the event on the ticket and
  the group told once. A receipt about nothing of ours is only recorded.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select

from mailgateway.db.models import InboxMail, OutboxMail, Ticket
from mailgateway.outbound.delivery import record_bounce, record_delivered
from mailgateway.pipeline.context import Analysis, Pipeline
from mailgateway.pipeline.pec import DeliveryOutcome, PecFacts
from mailgateway.store import Store
from mailgateway.tickets import record_event

log = structlog.get_logger()

ANOMALY_EVENT = "pec_anomaly"


def keep_certified(store: Store, pipeline: Pipeline, analysis: Analysis,
                   row: InboxMail) -> None:
    """Record what the PEC envelope or receipt of `row`'s mail said, if it came in one."""
    facts = analysis.mail.pec
    if facts is None:
        return
    if facts.receipt is not None:
        _tie_receipt(store, pipeline, facts, row)
        return
    if facts.transport is None:  # an `X-Ricevuta` of a kind the rules do not name
        return
    if analysis.mail.message_id:
        # The id the customer's client knows, not the provider's envelope's (kept in the
        # message's facts): our later mails name it in their References.
        row.message_id = analysis.mail.message_id[:998]
    if row.ticket is not None:
        _keep_envelope(store, pipeline, analysis, facts, row, row.ticket)


def _keep_envelope(store: Store, pipeline: Pipeline, analysis: Analysis, facts: PecFacts,
                   row: InboxMail, ticket: Ticket) -> None:
    message = next((m for m in reversed(ticket.messages) if m.inbox is row), None)
    if message is None:  # refused, or a technician's command alone: nothing was written
        return
    message.pec = facts.record()
    if facts.anomaly:
        record_event(store.session, ticket, ANOMALY_EVENT, actor=analysis.sender.email,
                     at=pipeline.clock.now(),
                     reason=("PEC anomaly: the provider could not certify this mail "
                             f"({facts.envelope_subject})")[:2000])
    elif message.direction == "in" and analysis.mail.from_addr:
        ticket.pec_address = analysis.mail.from_addr


def _evidence(facts: PecFacts, at: datetime) -> str:
    cert = facts.daticert
    said = [f"PEC {facts.receipt} certified at {at.isoformat()}"]
    if facts.provider:
        said.append(f"by {facts.provider}")
    if cert is not None and cert.identifier:
        said.append(f"(id {cert.identifier})")
    return " ".join(said)


def _diagnostic(facts: PecFacts) -> str:
    cert = facts.daticert
    error = cert.error if cert is not None and cert.error != "nessuno" else ""
    detail = cert.error_detail if cert is not None else ""
    words = f"PEC {facts.receipt}" + (f" ({error})" if error else "")
    return f"{words}: {detail}" if detail else words


def _recipient(facts: PecFacts, outbox: OutboxMail) -> str:
    """The mailbox the receipt is about: `consegna`, else the certified recipients."""
    cert = facts.daticert
    if cert is not None and cert.delivered_to:
        return cert.delivered_to
    if cert is not None and cert.recipients:
        return ", ".join(cert.recipients)
    return ", ".join(outbox.recipients)


def _tie_receipt(store: Store, pipeline: Pipeline, facts: PecFacts, row: InboxMail) -> None:
    ids = facts.original_ids()
    outbox = store.session.scalars(
        select(OutboxMail).where(OutboxMail.message_id.in_(ids))).first() if ids else None
    if outbox is None:
        row.reason = f"PEC {facts.receipt} receipt about no mail of ours"
        log.info("pec_receipt_untied", receipt=str(facts.receipt), refers_to=ids)
        return
    row.ticket = outbox.ticket
    at = facts.certified_at or pipeline.clock.now()
    recipient = _recipient(facts, outbox)
    match facts.outcome:
        case DeliveryOutcome.DELIVERED:
            record_delivered(store, pipeline.clock, outbox, recipient, at, _evidence(facts, at))
        case DeliveryOutcome.BOUNCED:
            record_bounce(store, pipeline.settings, pipeline.clock, outbox, recipient,
                          _diagnostic(facts))
        case _:
            log.info("pec_receipt_noted", receipt=str(facts.receipt), outbox_id=outbox.id)
    row.reason = f"PEC {facts.receipt} receipt for outbox mail {outbox.id}"
