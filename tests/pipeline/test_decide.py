"""`identify`, `route` and `decide` as pure functions: facts in, a complete decision out.

No database here: each test states the facts a mail was found with and reads the
decision, with every mail it plans (kind, recipients, language).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mailgateway.db.models import TicketStatus
from mailgateway.outbound.intent import MailKind
from mailgateway.pipeline.classify import AutoKind, Classification
from mailgateway.pipeline.decide import (
    Customer,
    CustomerReply,
    Drop,
    Facts,
    Ignore,
    OpenTicket,
    Policy,
    Quarantine,
    RefuseStaffMail,
    Reject,
    StaffReply,
    TicketRef,
    decide,
)
from mailgateway.pipeline.identify import Authority, DirectoryMatch, Sender, SenderKind, identify
from mailgateway.pipeline.parse import parse_mail
from mailgateway.pipeline.route import route_new_ticket
from mailgateway.pipeline.rules import RuleFields, RuleOutcome
from tests.mails import CUSTOMER, PERSON, TECHNICIAN, build_mail

STRANGER = "ignoto@altrove.it"
OTHER_TECHNICIAN = "marta@example.com"
PERSONAL = Classification(None, "a person wrote", may_auto_answer=True)
ROBOT = Classification(AutoKind.AUTO_REPLY, "Auto-Submitted: auto-replied", may_auto_answer=False)
ANNA = Sender(SenderKind.PERSON, PERSON, "Anna Bianchi", account_id=1, person_id=1)
LUCA = Sender(SenderKind.STAFF, TECHNICIAN, "Luca Verdi", staff_id=1, group="tecnica")
GROUPS = {"tecnica": (TECHNICIAN, OTHER_TECHNICIAN), "commerciale": ("commerciale@example.com",)}


def _ticket(status: str = TicketStatus.APERTO, **values: Any) -> TicketRef:
    defaults: dict[str, Any] = {
        "number": "2026-000001", "status": status, "account_id": 1, "watchers": (),
        "found_by": "reply token", "group": "tecnica", "customer": PERSON,
        "root_message_id": "first@studiorossi.it"}
    return TicketRef(**(defaults | values))


def _facts(sender: Sender = ANNA, body: str = "Il programma si chiude.", **values: Any) -> Facts:
    mail = parse_mail(build_mail(sender=sender.email, body=body, message_id="m1@client.test",
                                 **values.pop("mail", {})))
    defaults: dict[str, Any] = {
        "mail": mail, "classification": PERSONAL, "sender": sender, "body": body,
        "form": route_new_ticket(body), "customer": Customer(1, 1, "it", main_email=CUSTOMER),
        "group_recipients": GROUPS}
    return Facts(**(defaults | values))


def _mails(decision: Any) -> list[tuple[str, tuple[str, ...], tuple[str, ...], str]]:
    return [(m.kind.value, m.to, m.cc, m.language) for m in decision.mails]


# --- identify --------------------------------------------------------------------------


def test_a_technician_wins_over_a_person_and_a_person_over_an_account() -> None:
    matches = [DirectoryMatch(SenderKind.ACCOUNT, 7, "Studio Rossi", 7),
               DirectoryMatch(SenderKind.PERSON, 3, "Anna", 7),
               DirectoryMatch(SenderKind.STAFF, 2, "Anna (interna)", None, group="tecnica")]
    assert identify(PERSON, "", matches) == Sender(
        SenderKind.STAFF, PERSON, "Anna (interna)", staff_id=2, group="tecnica")
    assert identify(PERSON, "", matches[:2]) == Sender(
        SenderKind.PERSON, PERSON, "Anna", account_id=7, person_id=3)
    assert identify(CUSTOMER, "Rossi", matches[:1]).kind is SenderKind.ACCOUNT


def test_an_inactive_row_does_not_identify() -> None:
    gone = DirectoryMatch(SenderKind.STAFF, 2, "Ex", None, active=False)
    assert identify(TECHNICIAN, "Ex", [gone]) == Sender(SenderKind.UNKNOWN, TECHNICIAN, "Ex")
    assert identify(STRANGER, "", []).kind is SenderKind.UNKNOWN


# --- route -----------------------------------------------------------------------------


def test_form_lines_become_fields_and_the_rest_the_description() -> None:
    routing, description = route_new_ticket(
        "\nArticolo: Multi / Lynfa Studio (Cod. 2)\nTipo di richiesta: Commerciale\n"
        "Impatto: Sono bloccato\n\nNon parte più.\nDa ieri.")
    assert (routing.product, routing.request_type, routing.impact) == (
        "Multi / Lynfa Studio (Cod. 2)", "commerciale", "bloccato")
    assert routing.rules == ("form-fields",)
    assert description == "Non parte più.\nDa ieri."


def test_a_body_without_form_lines_is_all_description() -> None:
    body = "Buongiorno: il programma si chiude.\nGrazie"
    routing, description = route_new_ticket(body)
    assert routing.rules == () and routing.product is None
    assert description == body


# --- decide: a new request -------------------------------------------------------------


def test_a_new_request_opens_a_ticket_answered_and_noticed_to_the_group() -> None:
    decision = decide(_facts())
    assert isinstance(decision, OpenTicket)
    assert (decision.fields.request_type, decision.fields.impact, decision.fields.group) == (
        "tecnica", "difficolta", "tecnica")
    assert _mails(decision) == [
        ("acknowledgment", (PERSON,), (), "it"),
        ("new_ticket_notice", (TECHNICIAN,), (), "it"),
        ("new_ticket_notice", (OTHER_TECHNICIAN,), (), "it")]
    assert decision.mails[0].in_reply_to == "m1@client.test"


def test_rules_fill_what_the_form_left_and_their_assignee_alone_is_told() -> None:
    body = "Impatto: riesco a lavorare, con difficoltà\n\nVorrei un preventivo."
    outcome = RuleOutcome(("commerciale", "inglese"), RuleFields(
        request_type="commerciale", impact="bloccato", group="commerciale",
        assignee=OTHER_TECHNICIAN, watchers=("socio@studiorossi.it",), language="en"))
    decision = decide(_facts(body=body, rules=outcome, collaborators=(CUSTOMER,)))
    assert isinstance(decision, OpenTicket)
    fields = decision.fields
    assert (fields.request_type, fields.impact, fields.group, fields.assignee, fields.language) == (
        "commerciale", "difficolta", "commerciale", OTHER_TECHNICIAN, "en")
    assert fields.watchers == (CUSTOMER, "socio@studiorossi.it")
    assert decision.rules == ("form-fields", "commerciale", "inglese")
    assert _mails(decision) == [
        ("acknowledgment", (PERSON,), (CUSTOMER, "socio@studiorossi.it"), "en"),
        ("new_ticket_notice", (OTHER_TECHNICIAN,), (), "it")]


def test_a_robot_s_new_request_is_ignored_and_nothing_is_answered() -> None:
    assert isinstance(decide(_facts(classification=ROBOT)), Ignore)


def test_a_mail_over_the_limits_is_quarantined() -> None:
    facts = _facts()
    facts = replace(facts, mail=replace(facts.mail, over_limit="over 1000 header fields"))
    assert decide(facts) == Quarantine("not read: over 1000 header fields")


def test_attachments_of_a_first_request_are_refused_and_said() -> None:
    pdf = ("fattura.pdf", b"%PDF-1.4", "application/pdf")
    decision = decide(_facts(mail={"attachments": [pdf]}))
    assert isinstance(decision, OpenTicket)
    assert decision.refused_attachments == ("fattura.pdf",)
    assert decision.mails[0].context["refused_attachments"] == ["fattura.pdf"]


# --- decide: rules' actions and strangers ----------------------------------------------


def test_drop_plans_nothing_and_names_its_rule() -> None:
    decision = decide(_facts(rules=RuleOutcome(("newsletter",), action="drop",
                                               action_rule="newsletter")))
    assert decision == Drop("newsletter", "dropped by rule newsletter")


def test_reject_answers_a_known_sender_in_its_language() -> None:
    facts = _facts(rules=RuleOutcome(("spam",), action="reject", action_rule="spam"),
                   customer=Customer(1, 1, "en"))
    decision = decide(facts)
    assert isinstance(decision, Reject) and decision.rule == "spam"
    assert _mails(decision) == [("rejected", (PERSON,), (), "en")]


@pytest.mark.parametrize("envelope, answered, to", [
    (STRANGER, 0, (STRANGER,)),
    ("someone-else@altrove.it", 0, None),   # From is not the envelope: maybe forged
    (STRANGER, 60, None),                    # the hourly cap is reached
])
def test_an_unknown_sender_is_answered_only_at_a_proven_address(
        envelope: str, answered: int, to: tuple[str, ...] | None) -> None:
    stranger = Sender(SenderKind.UNKNOWN, STRANGER)
    decision = decide(_facts(stranger, customer=None, envelope_from=envelope,
                             strangers_answered=answered))
    assert isinstance(decision, Reject) and decision.answer is MailKind.UNKNOWN_SENDER
    assert [m.to for m in decision.mails] == ([to] if to else [])
    if to:
        assert "Il programma" not in str(decision.mails[0].context)


def test_an_unknown_sender_opens_an_unverified_ticket_when_the_desk_says_so() -> None:
    stranger = Sender(SenderKind.UNKNOWN, STRANGER)
    decision = decide(_facts(stranger, customer=None, policy=Policy(unknown_sender="create")))
    assert isinstance(decision, OpenTicket) and not decision.customer.verified
    assert decision.mails[0].context["unverified"] is True


# --- decide: replies -------------------------------------------------------------------


def test_a_reply_to_an_open_ticket_is_told_to_its_assignee_alone() -> None:
    ticket = _ticket(TicketStatus.RISPOSTO, assignee=OTHER_TECHNICIAN)
    decision = decide(_facts(ticket=ticket))
    assert isinstance(decision, CustomerReply) and decision.ticket == ticket
    assert _mails(decision) == [("customer_reply_notice", (OTHER_TECHNICIAN,), (), "it")]
    assert decision.mails[0].with_files


def test_a_reply_to_a_closed_ticket_is_refused_or_opens_a_linked_one() -> None:
    closed = _ticket(TicketStatus.CHIUSO)
    refused = decide(_facts(ticket=closed))
    assert isinstance(refused, Reject) and refused.answer is MailKind.CLOSED_TICKET
    # The customer told, and the group (no assignee) given the customer's words.
    assert _mails(refused) == [("closed_ticket", (PERSON,), (), "it"),
                               ("customer_reply_notice", (TECHNICIAN,), (), "it"),
                               ("customer_reply_notice", (OTHER_TECHNICIAN,), (), "it")]
    assert refused.mails[1].context["body"] == "Il programma si chiude."
    assert refused.mails[1].context["closed"] is True
    assigned = decide(_facts(ticket=replace(closed, assignee=OTHER_TECHNICIAN)))
    assert _mails(assigned)[1:] == [("customer_reply_notice", (OTHER_TECHNICIAN,), (), "it")]
    opened = decide(_facts(ticket=closed, policy=Policy(closed_reply="new_ticket")))
    assert isinstance(opened, OpenTicket) and opened.linked_ticket == closed


def test_a_stranger_quoting_a_ticket_does_not_reply_to_it() -> None:
    other = Sender(SenderKind.PERSON, "mario@altrove.it", account_id=2, person_id=9)
    decision = decide(_facts(other, ticket=_ticket(), customer=Customer(2, 9, "it")))
    assert isinstance(decision, OpenTicket) and decision.linked_ticket is None


def test_a_watcher_s_reply_counts_as_the_customer_s() -> None:
    watcher = Sender(SenderKind.UNKNOWN, "socio@altrove.it")
    decision = decide(_facts(watcher, ticket=_ticket(watchers=("socio@altrove.it",))))
    assert isinstance(decision, CustomerReply)


# --- decide: technicians ---------------------------------------------------------------


def _staff(body: str, level: Authority = Authority.FULL, **values: Any) -> Facts:
    return _facts(LUCA, body=body, ticket=values.pop("ticket", _ticket(watchers=(CUSTOMER,))),
                  staff_authority=(level, "staff token"), customer=None, **values)


def test_a_technician_s_answer_goes_to_the_customer_under_the_first_mail() -> None:
    decision = decide(_staff("#prendi\nHo corretto la tabella.",
                             technicians={"marta": OTHER_TECHNICIAN}))
    assert isinstance(decision, StaffReply)
    assert [c.name for c in decision.commands] == ["take"]
    assert _mails(decision) == [("answer", (PERSON,), (CUSTOMER,), "it")]
    assert decision.mails[0].in_reply_to == "first@studiorossi.it"


def test_assign_names_the_technician_it_finds() -> None:
    decision = decide(_staff("#assegna marta", technicians={"marta": OTHER_TECHNICIAN}))
    assert isinstance(decision, StaffReply) and decision.assignee == OTHER_TECHNICIAN
    assert decision.mails == ()  # no text: nothing for the customer


def test_a_note_is_not_mailed_to_the_customer() -> None:
    decision = decide(_staff("#nota\nRichiamare domani."))
    assert isinstance(decision, StaffReply) and decision.internal and decision.mails == ()


def test_without_proof_nothing_is_done_and_the_group_is_told_once_a_day() -> None:
    decision = decide(_staff("#chiudi", Authority.NONE))
    assert isinstance(decision, RefuseStaffMail)
    assert _mails(decision) == [("refused_notice", (TECHNICIAN,), (), "it"),
                                ("refused_notice", (OTHER_TECHNICIAN,), (), "it")]
    again = decide(_staff("#chiudi", Authority.NONE, refusal_told=True))
    assert isinstance(again, RefuseStaffMail) and again.mails == ()


def test_an_answer_only_proof_answers_but_does_not_command() -> None:
    decision = decide(_staff("#chiudi\nEcco la risposta.", Authority.ANSWER))
    assert isinstance(decision, StaffReply) and decision.commands == ()
    assert "#close not done" in decision.refused
    assert [m.kind for m in decision.mails] == [MailKind.REFUSED_NOTICE] * 2 + [MailKind.ANSWER]


def test_a_technician_s_text_on_a_closed_ticket_is_a_note() -> None:
    decision = decide(_staff("Aggiungo: risolto.", ticket=_ticket(TicketStatus.CHIUSO)))
    assert isinstance(decision, StaffReply) and decision.internal and decision.mails == ()


def test_a_technician_s_mail_on_no_ticket_is_quarantined() -> None:
    assert isinstance(decide(_facts(LUCA, customer=None)), Quarantine)


def test_an_answer_threads_under_the_customer_s_latest_mail() -> None:
    ticket = _ticket(conversation=("first@studiorossi.it", "mg.ack@example.com",
                                   "second@studiorossi.it", "mg.answer@example.com",
                                   "third@studiorossi.it"),
                     latest_customer_mail="third@studiorossi.it")
    decision = decide(_facts(LUCA, body="Provi ora, grazie.", ticket=ticket,
                             staff_authority=(Authority.FULL, "reply token")))
    [answer] = decision.mails  # type: ignore[union-attr]
    assert answer.in_reply_to == "third@studiorossi.it"
    assert answer.references[0] == "first@studiorossi.it"
    assert answer.references[-1] == "third@studiorossi.it"


@pytest.mark.parametrize(("body", "signed"), [
    ("Provi ora.\n\nCordiali saluti,\nLuca", True),
    ("Provi ora.\n\nLuca Verdi", True),
    ("Provi ora.\nSaluti, luca verdi - assistenza", True),
    ("Provi ora, poi mi dica.", False),
])
def test_an_answer_is_not_signed_twice(body: str, signed: bool) -> None:
    decision = decide(_facts(LUCA, body=body, ticket=_ticket(),
                             staff_authority=(Authority.FULL, "reply token")))
    [answer] = decision.mails  # type: ignore[union-attr]
    assert answer.context["signed_off"] is signed


def test_the_acknowledgment_echoes_the_impact_only_as_the_customer_chose_it() -> None:
    chosen = decide(_facts(body="Impatto: Sono bloccato\nIl programma si chiude."))
    unstated = decide(_facts())
    assert isinstance(chosen, OpenTicket) and isinstance(unstated, OpenTicket)
    assert chosen.fields.impact == "bloccato"
    assert chosen.mails[0].kind is MailKind.ACKNOWLEDGMENT
    assert chosen.mails[0].context["impact_stated"] is True
    assert unstated.mails[0].context["impact_stated"] is False
