"""`mailgateway rules check` and `rules test`: an admin's look before rules go live.

`rules test MAIL.eml` runs the pipeline's own analysis (`process.analyse`, the
same code a received mail goes through) against the live database, in a
transaction that only reads, and shows the rules that matched and the whole
Decision: what would be opened or answered, with which fields, and which mails
would go to whom. Nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgateway.pipeline import decide as d
from mailgateway.pipeline.pec import read_mail
from mailgateway.pipeline.process import analyse
from mailgateway.pipeline.rules import load_rules
from mailgateway.service import Gateway
from mailgateway.store import SessionStore

_KINDS: dict[type[Any], str] = {
    d.OpenTicket: "new_ticket", d.CustomerReply: "reply", d.StaffReply: "reply",
    d.Drop: "drop", d.Reject: "reject", d.Ignore: "ignore", d.Quarantine: "quarantine",
    d.Spam: "spam", d.RefuseStaffMail: "refuse", d.RecordDelivery: "record_delivery",
    d.StatusReport: "status_report",
}


def describe(decision: d.Decision) -> dict[str, Any]:
    """A decision as plain values (what `rules test --json` prints)."""
    found: dict[str, Any] = {"kind": _KINDS[type(decision)], "reason": decision.reason}
    ticket = getattr(decision, "ticket", None)
    if isinstance(ticket, d.TicketRef):
        found["ticket"] = ticket.number
    if isinstance(decision, d.CustomerReply) and (decision.solved or decision.joined):
        found["closes" if decision.solved else "joins"] = True
    if isinstance(decision, d.OpenTicket):
        if decision.duplicate_of is not None:
            found["duplicate_of"] = decision.duplicate_of.number
        fields = decision.fields
        found["fields"] = {
            "product": fields.product, "request_type": fields.request_type,
            "impact": fields.impact, "group": fields.group, "assignee": fields.assignee,
            "watchers": list(fields.watchers), "language": fields.language}
    found["mails"] = [{"kind": m.kind.value, "to": list(m.to), "cc": list(m.cc),
                       "language": m.language} for m in getattr(decision, "mails", ())]
    return found


def rules_test(gateway: Gateway, raw: bytes) -> dict[str, Any]:
    """What the gateway would do with `raw`, received now; writes nothing."""
    mail = read_mail(raw)
    with gateway.reads() as session:
        analysis = analyse(SessionStore(session), gateway.pipeline, mail)
        session.rollback()
    return {"rules": list(analysis.rules), "decision": describe(analysis.decision)}


def rules_check(gateway: Gateway) -> tuple[list[str], str]:
    """Every error of the rule files, and a one-line summary of what loads."""
    path = Path(gateway.settings.rules.path)
    rules, errors = load_rules(path, gateway.desk_names())
    return errors, (f"{len(rules.files)} rule files, {len(rules.rules)} rules in "
                    f"{path} are valid.")
