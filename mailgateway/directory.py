"""The desk's directory: accounts (studi / aziende), their PERSONE, technicians.

Addresses are stored lower-cased and validated once here, so every lookup
in the pipeline is a plain equality on an indexed column.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgateway.clock import Clock
from mailgateway.config import Settings
from mailgateway.db.models import Account, Person, Staff
from mailgateway.errors import ConfigError, UserError

_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_VAT = re.compile(r"^(?:IT)?(\d{11})$")
# The groups new tickets go to when no rule names one: the request types.
ROUTED_GROUPS = ("tecnica", "commerciale", "amministrativa")


def normal_address(address: str) -> str:
    """A lower-cased bare address; a user mistake when it is not one."""
    value = address.strip().lower()
    if not _ADDRESS.match(value):
        raise UserError(f"{address!r} is not an e-mail address.")
    return value


def normal_vat(vat: str) -> str:
    """An Italian partita IVA as 11 digits (an `IT` prefix and spaces are dropped);
    empty stays empty (the account has none on file)."""
    value = re.sub(r"[\s.-]", "", vat).upper()
    if not value:
        return ""
    found = _VAT.match(value)
    if found is None:
        raise UserError(f"{vat!r} is not an Italian VAT number (partita IVA): 11 digits, "
                        "optionally after IT.")
    return found[1]


def _taken(session: Session, email: str) -> str | None:
    if session.execute(select(Account.id).where(Account.main_email == email)).first():
        return "an account's main address"
    if session.execute(select(Person.id).where(Person.email == email)).first():
        return "a person's address"
    return None


def add_account(
    session: Session, clock: Clock, *, name: str, email: str, vat: str = "",
    language: str | None = None, answer_email: str | None = None,
) -> Account:
    email = normal_address(email)
    if (taken := _taken(session, email)) is not None:
        raise UserError(f"{email} is already {taken}.")
    if language not in (None, "", "it", "en"):
        raise UserError(f"Language must be it or en, not {language!r}.")
    if not name.strip():
        raise UserError("An account needs a name.")
    account = Account(name=name.strip(), main_email=email, vat_number=normal_vat(vat),
                      language=language or None, verified=True, created_at=clock.now(),
                      answer_email=normal_address(answer_email) if answer_email else None)
    session.add(account)
    session.flush()
    return account


def set_answer_email(session: Session, email: str, answer_email: str | None) -> Account:
    """Where answers go when the account writes by PEC: `answer_email`, an ordinary
    address of the account; None: the certified address it wrote from."""
    account = find_account(session, email)
    account.answer_email = normal_address(answer_email) if answer_email else None
    return account


@dataclass(frozen=True)
class AccountsImport:
    added: int
    skipped: list[str]


def import_accounts(session: Session, clock: Clock, path: Path) -> AccountsImport:
    """Accounts from a CSV with a header: name, email, vat, language and answers_to (the
    last three optional)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"File {path} does not exist.") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 "
                        "CSV.") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror}.") from None
    reader = csv.DictReader(text.splitlines())
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise UserError(f"{path}, line {reader.line_num}: not CSV ({exc}).") from None
    if reader.fieldnames is None or not {"name", "email"} <= set(reader.fieldnames):
        raise UserError(f"{path} needs the columns name and email (and optionally vat, language).")
    added, skipped = 0, []
    for line, row in rows:
        if None in row or None in row.values():
            skipped.append(f"line {line}: {len(row.get(None) or ()) + len(row) - 1} fields "
                           f"where the header has {len(reader.fieldnames)}; not read")
            continue
        try:
            with session.begin_nested():
                add_account(session, clock, name=row.get("name") or "",
                            email=row.get("email") or "", vat=row.get("vat") or "",
                            language=row.get("language") or None,
                            answer_email=row.get("answers_to") or None)
            added += 1
        except UserError as exc:
            skipped.append(f"line {line}: {exc}")
    return AccountsImport(added, skipped)


def find_account(session: Session, email: str) -> Account:
    email = normal_address(email)
    account = session.execute(
        select(Account).where(Account.main_email == email)).scalar_one_or_none()
    if account is None:
        raise UserError(f"There is no account with main address {email}.")
    return account


def add_person(session: Session, clock: Clock, *, account_email: str, name: str,
               email: str) -> Person:
    account = find_account(session, account_email)
    email = normal_address(email)
    if (taken := _taken(session, email)) is not None:
        raise UserError(f"{email} is already {taken}.")
    person = Person(account=account, name=name.strip(), email=email, created_at=clock.now())
    session.add(person)
    session.flush()
    return person


def add_staff(session: Session, clock: Clock, *, name: str, email: str,
              group: str | None = None, groups: Collection[str] | None = None) -> Staff:
    """A technician; `group`, when given, must be one of `groups` (the configured ones
    and those new tickets are routed to), since a member of a group nothing is routed
    to would never hear of a ticket."""
    email = normal_address(email)
    if group and groups is not None and group not in groups:
        raise UserError(f"There is no group {group!r}: use one of {', '.join(sorted(groups))}, "
                        f"or configure [groups.{group}] first.")
    if session.execute(select(Staff.id).where(Staff.email == email)).first():
        raise UserError(f"{email} is already a technician.")
    staff = Staff(name=name.strip(), email=email, group=group or None, active=True,
                  created_at=clock.now())
    session.add(staff)
    session.flush()
    return staff


def list_accounts(session: Session) -> Iterable[Account]:
    return session.execute(select(Account).order_by(Account.main_email)).scalars()


def list_persons(session: Session) -> Iterable[Person]:
    return session.execute(select(Person).order_by(Person.email)).scalars()


def list_staff(session: Session) -> Iterable[Staff]:
    return session.execute(select(Staff).order_by(Staff.email)).scalars()


def check_notices_reach(session: Session, settings: Settings) -> None:
    """Refuse a desk whose new tickets would be told to nobody: no group that new
    tickets go to has an address or an active member. A group that alone reaches
    nobody is logged, since its tickets would wait unseen."""
    from mailgateway.outbound.addressing import group_recipients

    groups = sorted({*ROUTED_GROUPS, *settings.groups})
    silent = [g for g in groups if not group_recipients(session, settings, g)]
    if len(silent) == len(groups):
        raise ConfigError(
            "groups: new tickets would reach nobody. Give each group an address "
            "([groups.tecnica] address = \"tecnici@example.com\") or members "
            "(mailgateway staff add --name N --email E --group tecnica).")
    for group in silent:
        structlog.get_logger().warning(
            "group_reaches_nobody", group=group,
            hint=f"[groups.{group}] address, or staff add --group {group}")
