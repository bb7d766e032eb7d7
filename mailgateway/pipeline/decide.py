"""The decision for one mail, as data, before anything is written.

`decide` is pure: it takes what parsing, classification, identification and
threading found, and returns what should happen and why; `process.py`
has `apply` write it in one transaction. Being data, a decision can be
shown, logged or tested without anything being written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailgateway.outbound.intent import MailKind
from mailgateway.pipeline.identify import Authority, Sender, SenderKind
from mailgateway.pipeline.route import (
    IMPACTS,
    REQUEST_TYPES,
    Routing,
    impact_from_text,
    request_type_from_text,
)
from mailgateway.tickets import OPEN_STATES, TicketAction


@dataclass(frozen=True)
class TicketRef:
    """What the decision needs to know about the ticket a mail threads to."""

    number: str
    status: str
    account_id: int
    watchers: tuple[str, ...]
    found_by: str


@dataclass(frozen=True)
class Policy:
    unknown_sender: str
    closed_reply: str


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class Reject:
    """No ticket; the sender is told why (when it is a human we may answer)."""

    answer: MailKind
    reason: str
    ticket: TicketRef | None = None


@dataclass(frozen=True)
class OpenTicket:
    reason: str
    routing: Routing
    description: str
    account_id: int | None          # None: open an unverified account for the sender
    person_id: int | None
    linked_ticket: TicketRef | None = None


@dataclass(frozen=True)
class StaffCommand:
    name: str        # take | close | note | assign | product | type | impact
    argument: str = ""


@dataclass(frozen=True)
class CustomerReply:
    ticket: TicketRef
    reason: str
    body: str


@dataclass(frozen=True)
class StaffReply:
    ticket: TicketRef
    reason: str
    body: str
    commands: tuple[StaffCommand, ...] = field(default_factory=tuple)
    refused: str = ""  # why the mail's commands were not carried out, if they were not

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


Decision = (Ignore | Quarantine | Reject | OpenTicket | CustomerReply | StaffReply
            | RefuseStaffMail)

_COMMANDS = {
    "prendi": "take", "take": "take",
    "chiudi": "close", "close": "close",
    "nota": "note", "note": "note",
    "assegna": "assign", "assign": "assign",
    "articolo": "product", "product": "product",
    "tipo": "type", "type": "type",
    "impatto": "impact", "impact": "impact",
}
_COMMAND_LINE = re.compile(r"^\s*#(?P<word>[a-z]+)\b[ \t:]*(?P<arg>.*?)\s*$", re.IGNORECASE)


def read_commands(body: str) -> tuple[tuple[StaffCommand, ...], str]:
    """Commands on their own lines at the top of a technician's mail, and the rest."""
    lines = body.splitlines()
    commands: list[StaffCommand] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            index += 1
            continue
        match = _COMMAND_LINE.match(line)
        if not match or match["word"].lower() not in _COMMANDS:
            break
        name = _COMMANDS[match["word"].lower()]
        argument = match["arg"]
        if name == "type":
            argument = request_type_from_text(argument) or argument.lower()
        elif name == "impact":
            argument = impact_from_text(argument) or argument.lower()
        commands.append(StaffCommand(name, argument))
        index += 1
    return tuple(commands), "\n".join(lines[index:]).strip()


def _check_commands(commands: tuple[StaffCommand, ...]) -> str | None:
    for command in commands:
        if command.name == "type" and command.argument not in REQUEST_TYPES:
            return f"#tipo needs one of {', '.join(REQUEST_TYPES)}, not {command.argument!r}"
        if command.name == "impact" and command.argument not in IMPACTS:
            return f"#impatto needs one of {', '.join(IMPACTS)}, not {command.argument!r}"
        if command.name in ("assign", "product") and not command.argument:
            return f"#{command.name} needs a value"
    return None


def _belongs(sender: Sender, ticket: TicketRef) -> bool:
    return sender.account_id == ticket.account_id or sender.email in ticket.watchers


def decide(
    *,
    sender: Sender,
    staff_authority: tuple[Authority, str] | None,
    ticket: TicketRef | None,
    body: str,
    new_ticket: tuple[Routing, str],
    policy: Policy,
) -> Decision:
    """What to do with a human's mail (automatic mail was set aside before)."""
    if not sender.email:
        return Quarantine("no sender address (From, Reply-To, Sender, envelope; at most 254 "
                          "characters): nobody to answer")
    if sender.kind == SenderKind.STAFF:
        return _decide_staff(sender, staff_authority, ticket, body)
    if ticket is not None and _belongs(sender, ticket):
        if ticket.status in OPEN_STATES:
            return CustomerReply(ticket, f"reply to {ticket.number} ({ticket.found_by})", body)
        if policy.closed_reply == "reject":
            return Reject(MailKind.CLOSED_TICKET, f"ticket {ticket.number} is closed", ticket)
    routing, description = new_ticket
    linked = ticket if ticket is not None and _belongs(sender, ticket) else None
    if sender.kind == SenderKind.UNKNOWN:
        if policy.unknown_sender == "reject":
            return Reject(MailKind.UNKNOWN_SENDER, f"unknown sender {sender.email}")
        return OpenTicket("new ticket from an unknown sender (unverified account)", routing,
                          description, None, None, linked)
    reason = "new ticket"
    if linked is not None:
        reason = f"new ticket: {linked.number} is closed"
    return OpenTicket(reason, routing, description, sender.account_id, sender.person_id, linked)


def _decide_staff(
    sender: Sender, authority: tuple[Authority, str] | None, ticket: TicketRef | None,
    body: str,
) -> Decision:
    if ticket is None or authority is None:
        return Quarantine(f"mail from technician {sender.email} matches no ticket: "
                          "nothing done")
    level, why = authority
    if level is Authority.NONE:
        return RefuseStaffMail(ticket, f"refused, possibly forged: {why}")
    commands, text = read_commands(body)
    problem = _check_commands(commands)
    if problem:
        return Quarantine(f"technician command refused: {problem}")
    refused = ""
    if commands and level is Authority.ANSWER:
        refused = f"{' '.join('#' + c.name for c in commands)} not done: {why}"
        if not text:
            return RefuseStaffMail(ticket, refused)
        commands = ()
    if ticket.status not in OPEN_STATES and text:
        # A closed ticket is never reopened: what a technician adds is kept as a note.
        return StaffReply(ticket, f"note on closed ticket {ticket.number}", text,
                          (StaffCommand("note"),), refused)
    if not text and not commands:
        return Ignore(f"empty mail from technician {sender.email}")
    return StaffReply(ticket, f"technician {sender.email} on {ticket.number} ({why})",
                      text, commands, refused)
