"""Routing rules: matching (pure), validation, and their effect through the pipeline."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailgateway.cli import main
from mailgateway.config import Settings, settings_from_mapping
from mailgateway.db.models import Event, InboxMail, OutboxMail, Ticket
from mailgateway.dry_run import rules_test
from mailgateway.pipeline.rules import (
    DeskNames,
    MailFacts,
    RuleBook,
    RuleFields,
    load_rules,
    match,
)
from mailgateway.service import Gateway
from mailgateway.views import list_inbox, show_ticket
from tests.mails import CUSTOMER, PERSON, TECHNICIAN, build_mail, deliver, register_desk

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
DESK = DeskNames(groups={"tecnica", "commerciale", "amministrativa"},
                 staff={TECHNICIAN})


def _rules(tmp_path: Path, text: str, name: str = "50-test.toml",
           desk: DeskNames = DESK) -> tuple[Any, list[str]]:
    (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules(tmp_path, desk)


def _facts(**values: Any) -> MailFacts:
    defaults: dict[str, Any] = {
        "subject": "Errore su MOCO", "body": "Buongiorno, errore 98,20.",
        "sender": PERSON, "recipients": ("assistenza@example.com",), "headers": {},
        "attachments": (), "account": CUSTOMER}
    return MailFacts(**(defaults | values))


@pytest.mark.parametrize("condition, holds, fails", [
    ("when.subject = '(?i)moco'", {}, {"subject": "Stampa F24"}),
    ("when.body = 'errore \\d+,\\d+'", {}, {"body": "tutto bene"}),
    ("when.from = '*@studiorossi.it'", {}, {"sender": "mario@altrove.it"}),
    ("when.to = 'commerciale@*'", {"recipients": ("x@y.it", "commerciale@example.com")},
     {"recipients": ("assistenza@example.com", "x@commerciale.it")}),
    ("when.header.\"X-Priority\" = '^1'", {"headers": {"x-priority": ("1 (Highest)",)}},
     {"headers": {"x-priority": ("3",)}}),
    ("when.attachment = '(?i)\\.pdf$'", {"attachments": ("fattura.PDF",)},
     {"attachments": ("foto.png",)}),
    ("when.account = 'rossi@studiorossi.it'", {}, {"account": "bianchi@studio.it"}),
])
def test_each_condition(tmp_path: Path, condition: str, holds: dict[str, Any],
                        fails: dict[str, Any]) -> None:
    rules, errors = _rules(tmp_path, f"""
        [[rule]]
        name = "prova"
        {condition}
        set.product = "Prodotto"
    """)
    assert errors == []
    assert match(rules, _facts(**holds)).matched == ("prova",)
    assert match(rules, _facts(**(holds | fails))).matched == ()


def test_every_set_key_and_a_rule_without_when(tmp_path: Path) -> None:
    rules, errors = _rules(tmp_path, """
        [[rule]]
        name = "tutto"
        set.product = "Multi / Lynfa Studio (Cod. 2)"
        set.request_type = "commerciale"
        set.impact = "bloccato"
        set.group = "commerciale"
        set.assignee = "luca@example.com"
        set.watchers = ["segreteria@studiorossi.it"]
        set.language = "en"
    """)
    assert errors == []
    assert match(rules, _facts()).fields == RuleFields(
        "Multi / Lynfa Studio (Cod. 2)", "commerciale", "bloccato", "commerciale",
        TECHNICIAN, ("segreteria@studiorossi.it",), "en")


def test_the_first_match_decides_unless_it_continues(tmp_path: Path) -> None:
    rules, _ = _rules(tmp_path, """
        [[rule]]
        name = "prodotto"
        when.subject = '(?i)moco'
        set.product = "Lynfa"
        continue = true

        [[rule]]
        name = "impatto"
        when.body = 'errore'
        set.impact = "bloccato"
        set.product = "Altro"

        [[rule]]
        name = "mai"
        set.group = "amministrativa"
    """)
    outcome = match(rules, _facts())
    assert outcome.matched == ("prodotto", "impatto")
    # What the first set stays; the second fills what it left; the third never runs.
    assert (outcome.fields.product, outcome.fields.impact, outcome.fields.group) == (
        "Lynfa", "bloccato", None)


def test_an_action_decides_the_course(tmp_path: Path) -> None:
    rules, _ = _rules(tmp_path, """
        [[rule]]
        name = "prodotto"
        set.product = "Lynfa"
        continue = true

        [[rule]]
        name = "scarta"
        when.from = "*@newsletter.test"
        action = "drop"
    """)
    outcome = match(rules, _facts(sender="info@newsletter.test"))
    assert (outcome.action, outcome.action_rule, outcome.fields) == ("drop", "scarta",
                                                                     RuleFields())


@pytest.mark.parametrize("text, said", [
    ("[[rule]]\nname = 'x'\nwhen.subject = 'a\n", "50-test.toml: not valid TOML: "),
    ("[[rule]]\nname = 'x'\nwhen.subject = 'a'\nset.colore = 'blu'\n",
     "rule 'x': unknown key set.colore"),
    ("[[rule]]\nname = 'x'\nwhen.oggetto = 'a'\n", "rule 'x': unknown condition when.oggetto"),
    ("[[rule]]\nname = 'x'\nwhen.subject = '(unclosed'\n",
     "rule 'x': when.subject: bad regular expression"),
    ("[[rule]]\nname = 'x'\nset.group = 'marketing'\n",
     "rule 'x': set.group 'marketing' is not a configured group"),
    ("[[rule]]\nname = 'x'\nset.assignee = 'nessuno@example.com'\n",
     "rule 'x': set.assignee 'nessuno@example.com' is not a technician"),
    ("[[rule]]\nname = 'x'\nset.impact = 'grave'\n",
     "rule 'x': set.impact must be one of bloccato, difficolta"),
    ("[[rule]]\nname = 'Con Spazi'\n", "rule 1: needs a name in kebab-case"),
    ("[[rule]]\nname = 'x'\naction = 'archive'\n", "rule 'x': action must be drop or reject"),
    ("[[rule]]\nname = 'x'\n[[rule]]\nname = 'x'\n", "rule 'x': two rules have this name"),
])
def test_every_kind_of_error_names_file_rule_and_reason(tmp_path: Path, text: str,
                                                        said: str) -> None:
    (tmp_path / "10-buono.toml").write_text("[[rule]]\nname = 'buona'\nset.product = 'P'\n")
    rules, errors = _rules(tmp_path, text)
    assert len(errors) == 1 and errors[0].startswith("50-test.toml") and said in errors[0]
    assert [r.name for r in rules.rules] == ["buona"]  # a broken file contributes nothing


def test_a_toml_error_says_its_line(tmp_path: Path) -> None:
    _, errors = _rules(tmp_path, "[[rule]]\nname = 'x'\n\nwhen.subject = ?\n")
    assert "line 4" in errors[0]


def test_the_example_rules_are_valid() -> None:
    rules, errors = load_rules(REPO_RULES, DeskNames(
        groups={"tecnica", "commerciale", "amministrativa"}))
    assert errors == [] and len(rules.rules) >= 6


def test_the_rule_book_picks_up_changes_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    now = [0.0]
    book = RuleBook(tmp_path, lambda: DESK, clock=lambda: now[0])
    assert book.current().rules == ()
    (tmp_path / "20-a.toml").write_text("[[rule]]\nname = 'a'\nset.product = 'A'\n")
    assert book.current().rules == ()  # looked at less than a second ago
    now[0] += 1.0
    assert [r.name for r in book.current().rules] == ["a"]
    (tmp_path / "30-b.toml").write_text("[[rule]]\nname = 'b'\nset.group = 'nessuno'\n")
    now[0] += 1.0
    assert [r.name for r in book.current().rules] == ["a"]  # the last good set runs on
    assert "set.group 'nessuno'" in book.errors[0]
    (tmp_path / "30-b.toml").write_text("[[rule]]\nname = 'b'\nset.group = 'tecnica'\n")
    book.reload()  # as on SIGHUP: at once
    assert [r.name for r in book.current().rules] == ["a", "b"] and book.errors == []
    (tmp_path / "20-a.toml").unlink()
    now[0] += 1.0
    assert [r.name for r in book.current().rules] == ["b"]


# --- through the pipeline, on both backends ----------------------------------------


@pytest.fixture
def ruled(config_data: dict[str, Any], clock: Any, tmp_path: Path) -> Any:
    rules = tmp_path / "rules"
    shutil.copytree(REPO_RULES, rules, ignore=shutil.ignore_patterns("README.md"))
    config_data["rules"] = {"path": str(rules)}
    config_data["groups"] = {name: {"address": f"{name}@example.com"}
                             for name in ("tecnica", "commerciale", "amministrativa")}
    gateway = Gateway(settings_from_mapping(config_data), clock)
    register_desk(gateway)
    yield gateway
    gateway.close()


def _ticket(gateway: Gateway, number: str = "2026-000001") -> dict[str, Any]:
    with gateway.sessions() as session:
        return show_ticket(session, "[Ticket#{number}]", number)


def _sent(gateway: Gateway) -> list[tuple[str, list[str]]]:
    with gateway.sessions() as session:
        return [(k, list(r)) for k, r in session.execute(
            select(OutboxMail.kind, OutboxMail.recipients).order_by(OutboxMail.id))]


def test_the_example_rules_route_a_stuck_lynfa_customer(ruled: Gateway) -> None:
    deliver(ruled, build_mail(subject="Errore su MOCO",
                              body="Sono bloccato: errore 98,20 all'avvio."))
    data = _ticket(ruled)
    assert (data["product"], data["request_type"], data["impact"], data["group"]) == (
        "Multi / Lynfa Studio (Cod. 2)", "tecnica", "bloccato", "tecnica")
    assert data["rules"] == ["lynfa", "lynfa-errore-cobol", "cliente-bloccato"]
    [routed] = [e for e in data["events"] if e["kind"] == "routed"]
    assert routed["reason"] == "rules: lynfa, lynfa-errore-cobol, cliente-bloccato"


def test_form_lines_beat_rules(ruled: Gateway) -> None:
    deliver(ruled, build_mail(subject="Fattura di marzo", body=(
        "Tipo di richiesta: Assistenza tecnica\nImpatto: Riesco a lavorare, con difficoltà\n\n"
        "Sono bloccato sulla fattura.")))
    data = _ticket(ruled)
    # The customer said tecnica and difficolta; the rules' group and impact give way.
    assert (data["request_type"], data["impact"]) == ("tecnica", "difficolta")
    assert data["group"] == "amministrativa"  # set by "fatturazione": the customer said none
    assert data["rules"] == ["form-fields", "cliente-bloccato", "fatturazione"]


def test_a_rules_group_and_assignee_receive_the_notice(ruled: Gateway) -> None:
    deliver(ruled, build_mail(to=["commerciale@example.com"], subject="Preventivo modulo"))
    data = _ticket(ruled)
    assert (data["request_type"], data["group"]) == ("commerciale", "commerciale")
    assert ("new_ticket_notice", ["commerciale@example.com"]) in _sent(ruled)


def test_drop_records_and_answers_nothing(ruled: Gateway) -> None:
    raw = build_mail(sender="info@newsletter.softwarecontabile.example", subject="Novità")
    assert deliver(ruled, raw) == "ignored"
    with ruled.sessions() as session:
        [row] = list_inbox(session)
        tickets = session.scalar(select(func.count()).select_from(Ticket))
    assert row["reason"] == "dropped by rule newsletter-fornitore"
    assert tickets == 0 and _sent(ruled) == []


def test_an_example_reject_answers_a_stranger_at_its_proven_address(ruled: Gateway) -> None:
    stranger = "vendite@offerte.example"
    raw = build_mail(sender=stranger, subject="Sconto esclusivo per il vostro studio")
    received = ruled.receive(raw, transport="smtp", envelope_from=stranger)
    assert ruled.process(received.inbox_id) == "ignored"
    assert _sent(ruled) == [("rejected", [stranger])]
    with ruled.sessions() as session:
        [row] = list_inbox(session)
    assert row["reason"] == "refused: refused by rule offerte-commerciali-non-richieste"


def test_a_list_s_mail_is_not_answered_whatever_the_rules(ruled: Gateway) -> None:
    raw = build_mail(subject="Offerta imperdibile", headers={"Precedence": "list"})
    assert deliver(ruled, raw) == "ignored"
    assert _sent(ruled) == []


def test_a_reply_on_an_open_ticket_is_not_routed_again(ruled: Gateway) -> None:
    """Rules route new requests: the customer writing "urgente" on an open ticket, or
    from an address a drop rule names, is heard on that ticket."""
    deliver(ruled, build_mail(subject="Stampa", message_id="first@studiorossi.it"))
    (Path(ruled.settings.rules.path) / "05-scarta.toml").write_text(
        "[[rule]]\nname = 'scarta-anna'\nwhen.from = 'anna@*'\naction = 'drop'\n")
    ruled.rules.reload()
    assert deliver(ruled, build_mail(subject="Re: Stampa [Ticket#2026-000001]",
                                     in_reply_to="first@studiorossi.it",
                                     body="Urgente: ancora fermo.")) == "processed"
    data = _ticket(ruled)
    assert data["impact"] == "difficolta" and data["rules"] == []
    assert [e["kind"] for e in data["events"]].count("customer_replied") == 1


def test_reject_of_a_person_is_answered(ruled: Gateway, tmp_path: Path) -> None:
    (Path(ruled.settings.rules.path) / "05-rifiuta.toml").write_text(
        "[[rule]]\nname = 'rifiuta-pec'\nwhen.subject = 'POSTA CERTIFICATA'\n"
        "action = 'reject'\n")
    ruled.rules.reload()
    assert deliver(ruled, build_mail(subject="POSTA CERTIFICATA: richiesta")) == "ignored"
    assert _sent(ruled) == [("rejected", [PERSON])]
    with ruled.sessions() as session:
        [row] = list_inbox(session)
    assert row["reason"] == "refused: refused by rule rifiuta-pec"


def _counts(gateway: Gateway) -> tuple[int, ...]:
    with gateway.sessions() as session:
        return tuple(int(session.scalar(select(func.count()).select_from(m)) or 0)
                     for m in (Ticket, Event, OutboxMail, InboxMail))


def test_rules_test_shows_what_ingesting_then_does_and_writes_nothing(
    ruled: Gateway, tmp_path: Path, config_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import write_toml

    raw = build_mail(subject="Errore su MOCO", cc=[CUSTOMER],
                     body="Urgente: errore 98,20 all'avvio.")
    before = _counts(ruled)
    report = rules_test(ruled, raw)
    assert _counts(ruled) == before
    mail = tmp_path / "mail.eml"
    mail.write_bytes(raw)
    config = write_toml(config_data, tmp_path / "ruled.toml")
    capsys.readouterr()
    assert main(["--config", str(config), "rules", "test", str(mail), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert _counts(ruled) == before

    assert report["rules"] == ["lynfa", "lynfa-errore-cobol", "cliente-bloccato"]
    decision = report["decision"]
    assert decision["kind"] == "new_ticket"
    deliver(ruled, raw)
    data = _ticket(ruled)
    fields = decision["fields"]
    assert [fields[k] for k in ("product", "request_type", "impact", "group", "watchers",
                                "language")] == [
        data["product"], data["request_type"], data["impact"], data["group"],
        data["watchers"], data["language"]]
    assert [(m["kind"], m["to"] + m["cc"]) for m in decision["mails"]] == _sent(ruled)


def test_rules_check_on_the_command_line(
    ruled: Gateway, tmp_path: Path, config_data: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import write_toml

    config = write_toml(config_data, tmp_path / "ruled.toml")
    assert main(["--config", str(config), "rules", "check"]) == 0
    assert "4 rule files, 7 rules" in capsys.readouterr().out
    rules = Path(config_data["rules"]["path"])
    (rules / "60-rotta.toml").write_text("[[rule]]\nname = 'rotta'\nwhen.subject = '('\n"
                                         "[[rule]]\nname = 'x'\nset.group = 'nessuno'\n")
    (rules / "70-rotta.toml").write_text("[[rule]\n")
    assert main(["--config", str(config), "rules", "check"]) == 1
    err = capsys.readouterr().err
    assert "60-rotta.toml: rule 'rotta': when.subject: bad regular expression" in err
    assert "70-rotta.toml: not valid TOML" in err


def test_settings_fixture_is_untouched(settings: Settings) -> None:
    assert settings.rules.path.endswith("rules")


def test_serve_picks_up_rule_files_and_runs_on_the_last_good_set(
    ruled: Gateway, tmp_path: Path, config_data: dict[str, Any],
) -> None:
    """A new file is in force within 2 s, a broken one is refused once while the rules
    last read in full keep routing, and SIGHUP reads the files at once."""
    import signal
    import time

    from mailgateway.server import default_workers
    from tests.conftest import write_toml
    from tests.ingest.test_smtp import Serve, free_port, send, wait_until

    port = free_port()
    config_data["smtp"] = {**config_data["smtp"], "port": port}
    config_data["log"] = {"level": "info"}
    log = tmp_path / "serve.log"
    server = Serve(write_toml(config_data, tmp_path / "serve.toml"), port, log).start()
    rules = Path(config_data["rules"]["path"])
    try:
        def lines(event: str) -> int:
            return log.read_text(errors="replace").count(event)

        # The watcher reads the files once at start, maybe after the listener is up.
        wait_until(lambda: lines("rules_loaded") >= 1, timeout=10, what="the rules at start")
        loaded = lines("rules_loaded")
        (rules / "05-stampanti.toml").write_text(
            "[[rule]]\nname = 'stampanti'\nwhen.subject = '(?i)stampante'\n"
            "set.product = 'Stampanti'\n", encoding="utf-8")
        written = time.monotonic()
        wait_until(lambda: lines("rules_loaded") > loaded, timeout=5, what="the new file read")
        assert time.monotonic() - written < 2.5
        time.sleep(1.0)  # every process that reads rules (the workers too) has looked since
        send(port, build_mail(subject="La stampante non va", message_id="s1@example.com"))
        wait_until(lambda: _has_ticket(ruled, "2026-000001"), timeout=30, what="the ticket")
        assert _ticket(ruled)["product"] == "Stampanti"

        (rules / "06-rotta.toml").write_text("[[rule]]\nname = 'rotta'\nwhen.body = '('\n",
                                             encoding="utf-8")
        wait_until(lambda: lines("rule_file_refused") >= 1, timeout=5, what="the refusal")
        send(port, build_mail(subject="Stampante ferma", message_id="s2@example.com"))
        wait_until(lambda: _has_ticket(ruled, "2026-000002"), timeout=30, what="the ticket")
        assert _ticket(ruled, "2026-000002")["product"] == "Stampanti"
        # Said once by each process that reads the rules (serve and its workers), not
        # every second: the watchers look every second.
        readers = 1 + default_workers()
        wait_until(lambda: lines("rule_file_refused") >= readers, timeout=10,
                   what=f"the refusal from each of {readers} processes")
        time.sleep(1.0)  # each watcher has looked again since
        assert lines("rule_file_refused") == readers

        (rules / "06-rotta.toml").unlink()
        (rules / "05-stampanti.toml").write_text(
            "[[rule]]\nname = 'stampanti'\nwhen.subject = '(?i)stampante'\n"
            "set.product = 'Stampanti laser'\n", encoding="utf-8")
        loaded = lines("rules_loaded")
        server.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(lambda: lines("rules_loaded") > loaded, timeout=5, what="SIGHUP's reading")
        time.sleep(1.0)  # the workers, told by serve, read them too
        send(port, build_mail(subject="Stampante rotta", message_id="s3@example.com"))
        wait_until(lambda: _has_ticket(ruled, "2026-000003"), timeout=30, what="the ticket")
        assert _ticket(ruled, "2026-000003")["product"] == "Stampanti laser"
        assert server.signal(signal.SIGTERM) == 0, server.tail()
    finally:
        server.kill()


def _has_ticket(gateway: Gateway, number: str) -> bool:
    with gateway.sessions() as session:
        return session.scalar(select(Ticket.id).where(Ticket.number == number)) is not None
