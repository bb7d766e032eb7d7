"""classify: bounces, auto-replies, list mail and our own loops are told from people."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from mailgateway.pipeline.classify import AutoKind, Classification, OwnMarks, classify
from mailgateway.pipeline.parse import parse_mail
from tests.corpus import corpus_file, corpus_mails

OWN = OwnMarks(
    domains=("example.com", "helpdesk.example.net"), helpdesk_address="assistenza@example.com"
)
needs_corpus = pytest.mark.skipif(not corpus_mails(), reason="shared corpus not present")


@cache
def verdict(path: Path) -> Classification:
    return classify(parse_mail(path.read_bytes()), OWN)


def of(headers: str, body: str = "Buongiorno, il programma si blocca all'avvio.") -> Classification:
    """Classify a small mail built from header lines."""
    defaults = {
        "From": "Mario Rossi <mario.rossi@studiorossi.it>",
        "To": "assistenza@example.com",
        "Subject": "Errore in stampa",
        "Message-ID": "<1234.abcd@studiorossi.it>",
        "Content-Type": "text/plain; charset=utf-8",
    }
    given = dict(line.split(": ", 1) for line in headers.strip().splitlines() if line)
    lines = [f"{k}: {v}" for k, v in {**defaults, **given}.items() if v != "-"]
    raw = ("\n".join(lines) + "\n\n" + body + "\n").encode()
    return classify(parse_mail(raw), OWN)


# --- people -------------------------------------------------------------------------------


def test_customer_mail_is_human_and_may_be_answered() -> None:
    result = of("")
    assert result.kind is None
    assert result.may_auto_answer is True


def test_reply_to_our_mail_is_still_human() -> None:
    """Customers reply to our acknowledgments: our id in In-Reply-To is not a loop."""
    result = of("In-Reply-To: <mg.42.ack@example.com>\nReferences: <mg.42.ack@example.com>")
    assert (result.kind, result.may_auto_answer) == (None, True)


@pytest.mark.parametrize(
    "subject",
    ["Re: Out of office di Outlook non funziona", "Assenza del tecnico", "Fwd: Undeliverable"],
)
def test_subjects_that_only_mention_automatic_mail_stay_human(subject: str) -> None:
    assert of(f"Subject: {subject}").kind is None


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ("From: Servizio <noreply@fornitore.it>", "does not take replies"),
        ("From: no-reply@fornitore.it", "does not take replies"),
        ("From: do-not-reply@fornitore.it", "does not take replies"),
        ("From: Postmaster <postmaster@studiorossi.it>", "does not take replies"),
        ("Return-Path: <>", "empty Return-Path"),
        ("Auto-Submitted: auto-notified", "Auto-Submitted"),
        ("X-Mailgateway-Loop: support@other-helpdesk.it", "another helpdesk"),
    ],
)
def test_human_looking_mail_we_must_not_answer(headers: str, why: str) -> None:
    result = of(headers)
    assert result.kind is None
    assert result.may_auto_answer is False
    assert why in result.reason


def test_auto_submitted_no_is_a_person() -> None:
    assert of("Auto-Submitted: no").may_auto_answer is True


# --- our own mail -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        "Message-ID: <mg.ticket-1042.3@example.com>",
        "Message-ID: <mg.x@helpdesk.example.net>",
        "X-Mailgateway-Loop: assistenza@example.com",
        "From: Assistenza <assistenza@example.com>",
        "From: assistenza+t0k3n@example.com",
    ],
)
def test_our_own_mail_is_a_loop(headers: str) -> None:
    result = of(headers)
    assert result.kind is AutoKind.LOOP
    assert result.may_auto_answer is False


def test_loop_wins_over_everything_else() -> None:
    result = of("Message-ID: <mg.1@example.com>\nAuto-Submitted: auto-replied\nPrecedence: bulk")
    assert result.kind is AutoKind.LOOP


def test_foreign_mg_message_id_is_not_ours() -> None:
    assert of("Message-ID: <mg.1@studiorossi.it>").kind is None


# --- auto-replies, bulk, order ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated",
        "X-Autoreply: yes",
        "X-Autorespond: on",
        "Precedence: auto_reply",
        "Subject: Risposta automatica: Errore in stampa",
        "Subject: Out of Office: Errore in stampa",
        "Subject: Automatic reply: Errore in stampa",
        "Subject: [AUTO GENERATED] Errore in stampa",
        "Subject: Abwesenheitsnotiz: Errore in stampa",
        "Subject: Fuori sede fino al 5 maggio",
        "Subject: Réponse automatique : Errore",
    ],
)
def test_auto_replies(headers: str) -> None:
    result = of(headers)
    assert result.kind is AutoKind.AUTO_REPLY
    assert result.may_auto_answer is False
    assert result.reason


@pytest.mark.parametrize(
    "headers",
    [
        "Precedence: bulk",
        "Precedence: junk",
        "Precedence: list",
        "List-Id: <clienti.studiorossi.it>",
        "List-Unsubscribe: <mailto:leave@studiorossi.it>",
    ],
)
def test_bulk(headers: str) -> None:
    result = of(headers)
    assert result.kind is AutoKind.BULK
    assert result.may_auto_answer is False


def test_auto_reply_wins_over_bulk() -> None:
    assert of("Auto-Submitted: auto-replied\nPrecedence: bulk").kind is AutoKind.AUTO_REPLY


def test_customer_writing_about_failed_delivery_is_human() -> None:
    result = of(
        "Subject: Delivery failure con Outlook",
        "Quando invio a un cliente ricevo 'user unknown' e la mail could not be delivered.",
    )
    assert (result.kind, result.may_auto_answer) == (None, True)


def test_customer_forwarding_a_bounce_is_human() -> None:
    result = of(
        "Subject: Fwd: Undelivered Mail Returned to Sender",
        "Potete aiutarmi?\n\n---------- Forwarded message ---------\n"
        "This is the mail system at host mx.fornitore.it.\n",
    )
    assert result.kind is None


def test_plain_text_bounce_by_its_boilerplate() -> None:
    result = of(
        "From: postino@mx.studiorossi.it\nSubject: Errore",
        "Hi. This is the qmail-send program at mx.studiorossi.it.",
    )
    assert result.kind is AutoKind.BOUNCE


def test_plain_text_bounce_from_mailer_daemon() -> None:
    result = of(
        "From: Mail Delivery System <MAILER-DAEMON@mx.studiorossi.it>\n"
        "Subject: Undelivered Mail Returned to Sender\nAuto-Submitted: auto-replied",
        "This is the mail system at host mx.studiorossi.it.",
    )
    assert result.kind is AutoKind.BOUNCE


# --- corpus -------------------------------------------------------------------------------

DISCOURSE = "discourse/spec/fixtures/emails/"


@needs_corpus
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("auto_reply.eml", AutoKind.AUTO_REPLY),
        ("auto_generated_header.eml", AutoKind.AUTO_REPLY),
        ("auto_generated_precedence.eml", AutoKind.BULK),
        ("auto_generated_subject.eml", AutoKind.AUTO_REPLY),
        ("bounced_email.eml", AutoKind.BOUNCE),
        ("bounced_email_2.eml", AutoKind.BOUNCE),
        ("bounced_email_multiple_status_codes.eml", AutoKind.BOUNCE),
        ("hard_bounce_via_verp.eml", AutoKind.BOUNCE),
        ("gmail_html_reply.eml", None),
        ("exchange_html_reply.eml", None),
        ("inline_reply.eml", None),
    ],
)
def test_discourse(name: str, kind: AutoKind | None) -> None:
    assert verdict(corpus_file(DISCOURSE + name)).kind is kind


@needs_corpus
def test_flufl_bounces() -> None:
    """dumbass_01 is undetectable upstream too: it carries no sign of a bounce."""
    cases = json.loads(corpus_file("flufl-bounce/expected.json").read_text())["cases"]
    names = sorted({case["file"] for case in cases})
    folder = corpus_file("flufl-bounce/flufl/bounce/tests/data")
    missed = [n for n in names if verdict(folder / n).kind is not AutoKind.BOUNCE]
    rate = 1 - len(missed) / len(names)
    print(f"flufl bounces: {len(names) - len(missed)}/{len(names)} ({rate:.1%}); missed {missed}")
    assert rate >= 0.95, missed


def _sisimai_cases() -> dict[str, set[str]]:
    cases = json.loads(corpus_file("sisimai/expected.json").read_text())["cases"]
    return {name: {b["reason"] for b in case["bounces"]} for name, case in cases.items()}


@needs_corpus
def test_sisimai_bounces() -> None:
    folder = corpus_file("sisimai/set-of-emails/maildir/bsd")
    bounces = [
        n
        for n, reasons in _sisimai_cases().items()
        if not reasons & {"vacation", "feedback", "delivered"}
    ]
    missed = [n for n in bounces if verdict(folder / n).kind is not AutoKind.BOUNCE]
    rate = 1 - len(missed) / len(bounces)
    found = len(bounces) - len(missed)
    print(f"sisimai bounces: {found}/{len(bounces)} ({rate:.1%}); missed {missed}")
    assert rate >= 0.95, missed


@needs_corpus
def test_sisimai_vacation_replies_are_auto_replies() -> None:
    folder = corpus_file("sisimai/set-of-emails/maildir/bsd")
    vacations = sorted(n for n, reasons in _sisimai_cases().items() if "vacation" in reasons)
    assert len(vacations) == 5
    assert [verdict(folder / n).kind for n in vacations] == [AutoKind.AUTO_REPLY] * 5


@needs_corpus
def test_sisimai_non_bounces_are_not_bounces() -> None:
    folder = corpus_file("sisimai/set-of-emails/maildir/not")
    names = sorted(folder.glob("*.eml"))
    assert names
    assert all(verdict(path).kind is not AutoKind.BOUNCE for path in names)


@needs_corpus
@pytest.mark.parametrize("name", ["mail089.box", "mail090.box", "mail043.box"])
def test_zammad_generated_mail(name: str) -> None:
    kind = verdict(corpus_file("zammad/test/data/mail/" + name)).kind
    assert kind in (AutoKind.BULK, AutoKind.AUTO_REPLY)


@needs_corpus
def test_automatic_mail_is_never_answered() -> None:
    for path in corpus_mails():
        result = verdict(path)
        assert result.reason
        if result.kind is not None:
            assert result.may_auto_answer is False, path


# --- what machines still got past, and what a person may write -----------------------------


@pytest.mark.parametrize(
    "headers",
    [
        "Subject: [Risposta automatica] Errore in stampa",
        "Subject: Errore in stampa (Risposta automatica)",
        "Subject: R: Risposta automatica: Errore in stampa",
        "Subject: Assente: Errore in stampa",
        "Subject: Assente dal 3 al 10 agosto",
        "Subject: In ferie fino al 20 agosto",
        "Subject: Sono in ferie",
        "Auto-Submitted: auto-generated (rapporto giornaliero)",
        "Auto-Submitted: auto-replied (vacation)",
    ],
)
def test_more_auto_replies(headers: str) -> None:
    assert of(headers).kind is AutoKind.AUTO_REPLY


@pytest.mark.parametrize(
    "subject",
    ["La risposta automatica di Outlook non parte", "Assenza del tecnico",
     "Richiesta ferie dipendenti", "Assenteismo: report mensile"],
)
def test_words_about_auto_replies_stay_human(subject: str) -> None:
    assert of(f"Subject: {subject}").kind is None


def test_a_no_reply_sender_with_a_prefix_is_not_answered() -> None:
    result = of("From: Gmail <gmail-noreply@google.com>")
    assert (result.kind, result.may_auto_answer) == (None, False)


def test_an_exchange_2003_report_is_a_bounce() -> None:
    result = of("From: System Administrator <admin@studiorossi.it>\nSubject: Undeliverable: x",
                "Your message\n\ndid not reach the following recipient(s):\n\n"
                "mario@studiorossi.it on 29/04/2010\n")
    assert result.kind is AutoKind.BOUNCE


def test_a_non_remis_failure_from_a_person_like_sender_is_a_bounce() -> None:
    result = of("From: Dsi.internet@societe.fr\n"
                "Subject: RE: La vostra richiesta : non remis (delivery failed)",
                "Votre message n'a pas pu etre delivre.\n"
                "Your message could not be delivered to\nduke@societe.fr\n")
    assert result.kind is AutoKind.BOUNCE
    assert result.machine_sign is False  # its text alone says so


def test_an_abuse_report_sent_as_multipart_mixed_is_not_a_request() -> None:
    raw = (b"From: abuse@provider.example\nTo: assistenza@example.com\nSubject: Abuse report\n"
           b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
           b"This is an abuse report.\n--b\nContent-Type: message/feedback-report\n\n"
           b"Feedback-Type: abuse\nUser-Agent: x\nVersion: 1\n--b--\n")
    assert classify(parse_mail(raw), OWN).kind is AutoKind.BOUNCE


def test_amazon_notifications_are_machines() -> None:
    bounce = of("From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message",
                '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent"}}')
    delivery = of("From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message",
                  '{"notificationType":"Delivery"}')
    assert (bounce.kind, delivery.kind) == (AutoKind.BOUNCE, AutoKind.BULK)


def test_a_list_manager_notice_is_a_bounce() -> None:
    result = of("From: lista-admin@studiorossi.it\nSubject: You are not member",
                "You are not a member of this mailing list <lista@studiorossi.it>.")
    assert result.kind is AutoKind.BOUNCE


def test_a_pasted_server_report_is_a_bounce_only_with_a_machine_sign() -> None:
    pasted = "Vi incollo:\nThis is the mail system at host mx.studiorossi.it.\n"
    assert of("Subject: Le mail tornano indietro", pasted).machine_sign is False
    assert of("Subject: Le mail tornano indietro\nAuto-Submitted: auto-replied",
              pasted).machine_sign is True
    assert of("To: assistenza+b12.abcdefghijklmnop@example.com", pasted).machine_sign is True
