"""Automatic mail: recognise what no person wrote, before it can open a ticket.

A helpdesk that answers every mail automatically will, sooner or later, answer an
out-of-office reply with an acknowledgment that triggers another out-of-office
reply, forever; or open a ticket for every bounce of its own mail. This stage
names the kind of automatic mail (our own mail coming back, a bounce, an
auto-reply, list traffic) so the pipeline can record and drop it, and it also
says when a mail that looks human must still not get an automatic answer.

Checks run in a fixed order (loop, bounce, auto-reply, bulk): the first that
matches decides, so a delivery report that also says `Auto-Submitted` is a
bounce, and a vacation reply sent with `Precedence: bulk` is an auto-reply.
Each check is a small function returning the reason it matched, or None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mailgateway.pipeline.parse import ParsedMail
from mailgateway.pipeline.pec import receipt_reason


class AutoKind(StrEnum):
    """The kinds of mail no person wrote."""

    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"
    BULK = "bulk"
    LOOP = "loop"
    PEC_RECEIPT = "pec-receipt"


@dataclass(frozen=True)
class OwnMarks:
    """What our outbound mail carries, so it is recognised when it comes back.

    Outbound Message-IDs are `<mg.<anything>@<one of domains>>` and every outbound
    mail has the header `X-Mailgateway-Loop: <helpdesk_address>`.
    """

    domains: tuple[str, ...]
    helpdesk_address: str


@dataclass(frozen=True)
class Classification:
    """The verdict: which automatic kind (None for a person), why, and whether we may answer."""

    kind: AutoKind | None
    reason: str
    may_auto_answer: bool
    # The mail bears a sign no person's mail has (null or daemon sender, a report part,
    # Auto-Submitted, our return path): without one, a bounce read from its text alone
    # may be a customer who pasted a server's report (`process.analyse`).
    machine_sign: bool = True


LOOP_HEADER = "X-Mailgateway-Loop"
_BODY_WINDOW = 6000  # bounce texts open the body: a long mail is not read to its end

_BOUNCE_LOCAL = re.compile(r"^(?:mailer[-_]?daemon|mail[-_]?daemon|mdaemon)$", re.I)
_BOUNCE_FROM = re.compile(
    r"mailer[-_]?daemon|mail delivery (?:sub)?system|mail administrator|post[-_]?master|"
    r"no[-_.]?reply@", re.I
)
_NO_REPLY_LOCAL = re.compile(
    r"^(?:.+[-_.])?(?:mailer[-_]?daemon|postmaster|no[-_.]?reply|do[-_.]?not[-_.]?reply|"
    r"bounces?|notifications?-noreply)(?:[-+_.].*)?$",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"^\s*(?:undeliver(?:ed|able)|returned mail|mail delivery (?:fail|warning)|"
    r"delivery (?:status )?notification|delivery fail|delivery report|failure notice|"
    r"non remis|unzustellbar|nicht zustellbar|mancato recapito|impossibile recapitare|"
    r"message (?:delivery )?(?:not delivered|failure)|mail system error|"
    r"warning: could not send|returned to sender|delivery has failed|non-?deliver|"
    r"rejected:|failed mail|(?:mail|message) could not be delivered|delivery warning|"
    r"benachrichtigung zum übermittlungsstatus|notificación del estado|"
    r"could not send message)",
    re.I,
)
# Boilerplate of mail servers that no person writes: enough on its own. This and the
# next are searched in lower-cased text: re.IGNORECASE makes them six times slower.
_MTA_TEXT = re.compile(
    r"this is the mail system at host|i'm afraid i wasn't able to deliver|"
    r"this is the qmail-send program|created automatically by mail delivery software|"
    r"following addresses had permanent fatal errors|"
    r"delivery has failed to these recipients or groups|"
    r"the original message was received at|"
    r"your message did not reach some or all of the intended recipients|"
    r"(?:be delivered|deliver (?:the |your )?message) to the following (?:recipient|address)|"
    r"failed recipients? ?-{2,}|failed recipient: |non-delivery report|"
    r"did not reach the following recipient|"
    r"you are not a member of this mailing list",
)
# Words of a delivery failure that a person may also write: they need a second sign.
_FAILURE_TEXT = re.compile(
    r"delivery to the following recipients? (?:failed|was aborted|has been delayed)|"
    r"could not be delivered|was not delivered to|undeliverable|unable to deliver|"
    r"user unknown|mailbox (?:is )?(?:full|unavailable)|no such (?:user|mailbox)|"
    r"recipient address rejected|permanent(?:ly)? (?:error|failure)|"
    r"delivery status notification|returned mail|mail delivery failed|non-delivery|"
    r"failed permanently|delivery failure|host unknown|address not found|could not deliver|"
    r"delivery of (?:e-?mail|your message) .{0,80}(?:postponed|delayed)",
)
# Delivery-failure words a server puts anywhere in a subject (after the original one).
_BOUNCE_SUBJECT_ANYWHERE = re.compile(r"\bnon remis\b|\(delivery failed\)", re.I)
_FORWARD_OR_REPLY = re.compile(r"^\s*(?:re|r|rif|aw|sv|fw|fwd|i|wg|tr)\s*:", re.I)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:\[?auto[- ]?generated\]?|auto(?:matic|matische?)?[- ]?(?:reply|response|"
    r"antwort|risposta)|autoreply|autorespon|out of (?:the )?office|risposta automatica|"
    r"fuori (?:sede|ufficio)\b|sono assente|abwesenheit|automatische antwort|"
    r"réponse automatique|absence du bureau|respuesta automática|resposta automática|"
    r"automatisch antwoord|autosvar|automaattinen vastaus|odpowiedź automatyczna|"
    r"vacation (?:reply|notice|message)|on vacation|away from (?:the )?office)",
    re.I,
)
# Italian out-of-office subjects where mail programs put them: the marker in brackets or
# before a colon anywhere ("Errore [Risposta automatica]", "R: Risposta automatica: …"),
# or the absence itself at the start ("Assente: …", "In ferie fino al 20 agosto").
_AUTO_SUBJECT_ANYWHERE = re.compile(
    r"[\[(]\s*(?:risposta automatica|risposta automatica di assenza|assente|fuori sede|"
    r"fuori ufficio|auto[- ]?reply|out of office)\s*[\])]|"
    r"\brisposta automatica\s*:|"
    r"^\s*(?:assente\s*(?::|\(|dal\b|fino\b|per\b)|(?:sono )?in ferie\b|"
    r"fuori ufficio fino\b)",
    re.I,
)
_AUTO_HEADERS = (
    "X-Autoreply",
    "X-Autorespond",
    "X-Autoresponder",
    "X-AutoReply-From",
    "X-Mail-Autoreply",
    "X-FC-MachineGenerated",
)
_SES_REPORT = re.compile(r'"notificationType"\s*:\s*"(?:Bounce|Complaint)"')
_REPORT = re.compile(r"^\s*multipart/report\b", re.I)
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([\w-]+)", re.I)

Check = Callable[[ParsedMail, OwnMarks], str | None]


def _local_part(address: str) -> str:
    return address.partition("@")[0].lower()


def _own_message_id(message_id: str | None, own: OwnMarks) -> bool:
    if not message_id or not message_id.lower().startswith("mg."):
        return False
    domain = message_id.rpartition("@")[2].lower()
    return domain in {d.lower() for d in own.domains}


def _is_helpdesk(address: str, own: OwnMarks) -> bool:
    """Our address, also in its signed `local+token@domain` form."""
    local, _, domain = address.lower().partition("@")
    ours_local, _, ours_domain = own.helpdesk_address.lower().partition("@")
    return bool(address) and domain == ours_domain and local.split("+")[0] == ours_local


def _loop(mail: ParsedMail, own: OwnMarks) -> str | None:
    marks = [v.strip().lower() for v in mail.header_all(LOOP_HEADER)]
    if own.helpdesk_address.lower() in marks:
        return f"{LOOP_HEADER} header names our helpdesk address"
    if _own_message_id(mail.message_id, own):
        return "Message-ID is one of ours"
    if _is_helpdesk(mail.from_addr, own):
        return "sent from our own helpdesk address"
    return None


def _report_type(mail: ParsedMail) -> str | None:
    content_type = mail.header("Content-Type") or ""
    if not _REPORT.match(content_type):
        return None
    found = _REPORT_TYPE.search(content_type)
    return found[1].lower() if found else ""


def _null_sender(mail: ParsedMail) -> bool:
    paths = [v.strip() for v in mail.header_all("Return-Path")]
    return any(p in ("<>", "") for p in paths) or (mail.header("From") or "").strip() == "<>"


def _bounce(mail: ParsedMail, own: OwnMarks) -> str | None:
    report = _report_type(mail)
    if report in ("delivery-status", "feedback-report"):
        return f"multipart/report; report-type={report}"
    if any(a.content_type == "message/delivery-status" for a in mail.attachments):
        return "carries a message/delivery-status part"
    if any(a.content_type == "message/feedback-report" for a in mail.attachments):
        return "carries a message/feedback-report part (an abuse report)"
    if mail.header("X-Failed-Recipients") is not None:
        return "X-Failed-Recipients header"
    if _SES_REPORT.search(mail.text[:_BODY_WINDOW]):
        return "Amazon SES bounce or complaint notification"
    if _BOUNCE_LOCAL.match(_local_part(mail.from_addr)):
        return "sent by a mailer daemon"
    return _bounce_by_content(mail)


def _bounce_by_content(mail: ParsedMail) -> str | None:
    """Old MTAs send plain-text bounces: their boilerplate, or a bounce sender and text."""
    opening = mail.text[:_BODY_WINDOW].lower()
    if _MTA_TEXT.search(opening) and not _FORWARD_OR_REPLY.match(mail.subject):
        return "delivery-failure text of a mail server"
    if not (_BOUNCE_SUBJECT.match(mail.subject) or _FAILURE_TEXT.search(opening)):
        return None
    senders = " ".join((mail.header("From") or "", *mail.header_all("Return-Path")))
    if _BOUNCE_FROM.search(senders):
        return "bounce sender with a delivery-failure text"
    if _null_sender(mail):
        return "empty Return-Path with a delivery-failure text"
    if _BOUNCE_SUBJECT_ANYWHERE.search(mail.subject) and _FAILURE_TEXT.search(opening):
        return "delivery-failure subject and text"
    return None


_COMMENT = re.compile(r"\([^()]*\)")


def _auto_submitted(mail: ParsedMail) -> str:
    """The Auto-Submitted keyword and parameters, without RFC 5322 comments:
    `auto-generated (daily report)` is `auto-generated`."""
    return " ".join(_COMMENT.sub(" ", mail.header("Auto-Submitted") or "").split()).lower()


def _auto_reply(mail: ParsedMail, own: OwnMarks) -> str | None:
    submitted = _auto_submitted(mail).split(";")[0].strip()
    if submitted in ("auto-replied", "auto-generated"):
        return f"Auto-Submitted: {submitted} header"
    present = next((h for h in _AUTO_HEADERS if mail.header(h) is not None), None)
    if present is not None:
        return f"{present} header"
    if (mail.header("Precedence") or "").strip().lower() == "auto_reply":
        return "Precedence: auto_reply header"
    if _report_type(mail) == "disposition-notification":
        return "read receipt (multipart/report; report-type=disposition-notification)"
    if _AUTO_SUBJECT.match(mail.subject) or _AUTO_SUBJECT_ANYWHERE.search(mail.subject):
        return "subject of an automatic reply"
    return None


def _bulk(mail: ParsedMail, own: OwnMarks) -> str | None:
    if mail.header("X-Amz-Sns-Message-Type") is not None or mail.from_addr.endswith(
            "@sns.amazonaws.com"):
        return "Amazon SNS notification"
    precedence = (mail.header("Precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence} header"
    for name in ("List-Id", "List-Unsubscribe"):
        if mail.header(name) is not None:
            return f"{name} header of a mailing list"
    return None


_CHECKS: tuple[tuple[AutoKind, Check], ...] = (
    (AutoKind.PEC_RECEIPT, lambda mail, own: receipt_reason(mail)),
    (AutoKind.LOOP, _loop),
    (AutoKind.BOUNCE, _bounce),
    (AutoKind.AUTO_REPLY, _auto_reply),
    (AutoKind.BULK, _bulk),
)


def as_person(mail: ParsedMail, own: OwnMarks, why: str) -> Classification:
    """The verdict for a mail read as a person's after all (`why`): may it be answered?"""
    caution = _caution(mail, own)
    if caution is not None:
        return Classification(None, f"{why}; {caution}", may_auto_answer=False)
    return Classification(None, why, may_auto_answer=True)


def _caution(mail: ParsedMail, own: OwnMarks) -> str | None:
    """Why a mail that looks human must still get no automatic answer, if it must not."""
    submitted = _auto_submitted(mail)
    if submitted and submitted != "no":
        return f"Auto-Submitted: {submitted} header"
    if mail.header(LOOP_HEADER) is not None:
        return f"{LOOP_HEADER} header of another helpdesk"
    if _null_sender(mail):
        return "empty Return-Path (<>)"
    if not mail.from_addr:
        return "no sender address"
    if _NO_REPLY_LOCAL.match(_local_part(mail.from_addr)):
        return f"sender {mail.from_addr} does not take replies"
    return None


_REPORT_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status",
                           "message/feedback-report", "text/rfc822-headers"})


def _to_return_path(mail: ParsedMail, own: OwnMarks) -> bool:
    """Sent to the return path of our mail (`<local>+b<row>.…`): only servers write there."""
    local, _, domain = own.helpdesk_address.lower().partition("@")
    prefix = f"{local}+b"
    addresses = (*mail.to, *mail.cc, *mail.header_all("Delivered-To"),
                 *mail.header_all("X-Original-To"))
    return any(a.strip().strip("<>").lower().startswith(prefix) and
               a.strip().strip("<>").lower().endswith("@" + domain) for a in addresses)


def machine_sign(mail: ParsedMail, own: OwnMarks) -> str | None:
    """A sign that no person wrote the mail, whatever its text says; None for none.
    (The envelope's null sender is the caller's to add: a parsed mail does not know it.)"""
    if _report_type(mail) is not None:
        return "a multipart/report"
    if any(a.content_type in _REPORT_PARTS for a in mail.attachments):
        return "a delivery report part"
    if mail.header("X-Failed-Recipients") is not None:
        return "X-Failed-Recipients header"
    if _auto_submitted(mail) not in ("", "no"):
        return "Auto-Submitted header"
    if _null_sender(mail):
        return "empty Return-Path (<>)"
    senders = " ".join((mail.header("From") or "", *mail.header_all("Return-Path")))
    local = _local_part(mail.from_addr)
    if _BOUNCE_LOCAL.match(local) or _BOUNCE_FROM.search(senders) or (
            _NO_REPLY_LOCAL.match(local)):
        return f"sender {mail.from_addr or senders.strip()} is a machine"
    if _to_return_path(mail, own):
        return "sent to the return path of our mail"
    return None


def classify(mail: ParsedMail, own: OwnMarks) -> Classification:
    """Say whether a mail is automatic, which kind, and whether we may answer it."""
    for kind, check in _CHECKS:
        reason = check(mail, own)
        if reason is not None:
            signed = kind is not AutoKind.BOUNCE or machine_sign(mail, own) is not None
            return Classification(kind, reason, may_auto_answer=False, machine_sign=signed)
    caution = _caution(mail, own)
    if caution is not None:
        return Classification(None, caution, may_auto_answer=False)
    return Classification(None, "no mark of automatic mail", may_auto_answer=True)
