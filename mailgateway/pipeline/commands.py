"""A technician's commands: `#prendi`, `#chiudi`, `#assegna NOME`… on their own lines at
the top of a mail, in Italian or English. Pure: text in, commands and the rest out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgateway.pipeline.route import (
    IMPACTS,
    REQUEST_TYPES,
    impact_from_text,
    request_type_from_text,
)


@dataclass(frozen=True)
class StaffCommand:
    name: str        # take | close | note | assign | product | type | impact
    argument: str = ""


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


def command_problem(commands: tuple[StaffCommand, ...]) -> str | None:
    """Why the commands cannot be carried out as written, or None."""
    for command in commands:
        if command.name == "type" and command.argument not in REQUEST_TYPES:
            return f"#tipo needs one of {', '.join(REQUEST_TYPES)}, not {command.argument!r}"
        if command.name == "impact" and command.argument not in IMPACTS:
            return f"#impatto needs one of {', '.join(IMPACTS)}, not {command.argument!r}"
        if command.name in ("assign", "product") and not command.argument:
            return f"#{command.name} needs a value"
    return None


def assignees(body: str) -> list[str]:
    """The names or addresses a mail's `#assegna` lines name (lower case): what the
    directory must be asked before deciding."""
    return [c.argument.lower() for c in read_commands(body)[0] if c.name == "assign"]
