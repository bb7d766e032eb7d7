"""Routing: what a new ticket's fields are.

A customer who writes the portal's form fields as lines at the top of the
body (`Articolo: …`, `Tipo di richiesta: …`, `Impatto: …`) sets those fields
and the lines leave the description; what the customer did not state takes
rules and then the desk's defaults (`decide.ticket_fields`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

REQUEST_TYPES = ("tecnica", "commerciale", "amministrativa")
IMPACTS = ("bloccato", "difficolta")
DEFAULT_REQUEST_TYPE = "tecnica"
DEFAULT_IMPACT = "difficolta"

_FIELD_LINE = re.compile(
    r"^\s*(?P<key>articolo|prodotto|product|tipo(?:\s+di)?\s+richiesta|request\s+type|"
    r"impatto|impact)\s*[:=]\s*(?P<value>.+?)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Routing:
    """The fields the customer stated in form lines; None for those not stated."""

    product: str | None = None
    request_type: str | None = None
    impact: str | None = None
    rules: tuple[str, ...] = field(default_factory=tuple)  # ("form-fields",) when any


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def request_type_from_text(value: str) -> str | None:
    """'Assistenza tecnica' / 'commerciale' / 'amministrativa' (and English) → the code."""
    plain = _plain(value)
    for code, words in (("tecnica", ("tecnic", "technic")),
                        ("commerciale", ("commercial", "sales")),
                        ("amministrativa", ("amministrativ", "administrativ", "billing"))):
        if any(w in plain for w in words):
            return code
    return None


def impact_from_text(value: str) -> str | None:
    """'Sono bloccato' / 'Riesco a lavorare, con difficoltà' (and English) → the code."""
    plain = _plain(value)
    if "bloccat" in plain or "blocked" in plain:
        return "bloccato"
    if "difficolt" in plain or "difficult" in plain or "riesco" in plain:
        return "difficolta"
    return None


def read_form_fields(body: str) -> tuple[dict[str, str], str]:
    """Leading `Key: value` lines → fields; returns them and the rest of the body."""
    lines = body.splitlines()
    found: dict[str, str] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() and not found:
            index += 1
            continue
        match = _FIELD_LINE.match(line)
        if not match:
            break
        key = _plain(match["key"])
        value = match["value"]
        if key.startswith(("articolo", "prodotto", "product")):
            found["product"] = value
        elif key.startswith("impa"):
            if (impact := impact_from_text(value)) is not None:
                found["impact"] = impact
        elif (request_type := request_type_from_text(value)) is not None:
            found["request_type"] = request_type
        index += 1
    if not found:
        return {}, body
    return found, "\n".join(lines[index:]).strip("\n")


def route_new_ticket(body: str) -> tuple[Routing, str]:
    """What the customer stated of a new ticket's fields, and its description."""
    fields, description = read_form_fields(body)
    routing = Routing(product=fields.get("product"), request_type=fields.get("request_type"),
                      impact=fields.get("impact"), rules=("form-fields",) if fields else ())
    return routing, description
