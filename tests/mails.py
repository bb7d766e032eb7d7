"""Building test mails and the desk's directory in one line each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid

from sqlalchemy import select

from mailgateway.clock import FixedClock
from mailgateway.config import Settings
from mailgateway.db.models import InboxMail, Ticket
from mailgateway.directory import add_account, add_person, add_staff
from mailgateway.outbound.intent import MailIntent, QueuedMail
from mailgateway.outbound.queue import enqueue
from mailgateway.reply_token import reply_address, staff_token
from mailgateway.service import Gateway
from mailgateway.store import Store

CUSTOMER = "rossi@studiorossi.it"
PERSON = "anna@studiorossi.it"
TECHNICIAN = "luca@example.com"
GROUP = "tecnici@example.com"  # the tests' [groups.tecnica] address


def staff_reply_address(
    number: str, recipient: str = TECHNICIAN, issued: date = date(2026, 3, 2),
    secret: str = "test-secret",
) -> str:
    """The signed reply address of a notice about ticket `number` sent to `recipient`."""
    return reply_address("assistenza@example.com", secret,
                         staff_token(secret, number, recipient, issued))


def build_mail(
    *,
    sender: str = PERSON,
    to: Sequence[str] = ("assistenza@example.com",),
    cc: Sequence[str] = (),
    subject: str = "Errore 98,20 su MOCO",
    body: str = "Quando vado su MPRI esce una maschera di errore e il programma si chiude.",
    html: str | None = None,
    attachments: Sequence[tuple[str, bytes, str]] = (),
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    charset: str = "utf-8",
    cte: str | None = None,
) -> bytes:
    """An RFC 5322 mail as bytes; ids are given without angle brackets."""
    mail = EmailMessage(policy=SMTP)
    mail["From"] = sender
    mail["To"] = ", ".join(to)
    if cc:
        mail["Cc"] = ", ".join(cc)
    mail["Subject"] = subject
    mail["Message-ID"] = f"<{message_id}>" if message_id else make_msgid(domain="client.test")
    mail["Date"] = "Mon, 02 Mar 2026 10:00:00 +0100"
    if in_reply_to:
        mail["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        mail["References"] = " ".join(f"<{r}>" for r in references)
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.set_content(body, charset=charset, cte=cte)
    if html is not None:
        mail.add_alternative(html, subtype="html")
    for filename, payload, content_type in attachments:
        maintype, subtype = content_type.split("/", 1)
        mail.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes()


def failure_report(message_id: str, recipient: str, words: str) -> bytes:
    """A server's delivery status notification: `message_id` failed for `recipient`."""
    return ("From: MAILER-DAEMON@mx.example.net\nTo: assistenza@example.com\n"
            "Subject: Undelivered\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nSorry.\n"
            "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
            f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n"
            f"Diagnostic-Code: smtp; {words}\n\n"
            f"--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <{message_id}>\n\n--b--\n"
            ).encode()


def register_desk(gateway: Gateway) -> None:
    """Studio Rossi (main address + one PERSONA) and one technician."""
    with gateway.sessions.begin() as session:
        add_account(session, gateway.clock, name="Studio Rossi", email=CUSTOMER, vat="01234567890")
        add_person(
            session, gateway.clock, account_email=CUSTOMER, name="Anna Bianchi", email=PERSON
        )
        add_staff(session, gateway.clock, name="Luca Verdi", email=TECHNICIAN, group="tecnica")


def deliver(gateway: Gateway, raw: bytes, transport: str = "pipe") -> str:
    """Store and process one mail as a transport would; returns the inbox status."""
    received = gateway.receive(raw, transport=transport)
    return gateway.process(received.inbox_id)


def inbox_fates(gateway: Gateway) -> list[tuple[str, str | None]]:
    with gateway.sessions() as session:
        rows = session.execute(
            select(InboxMail.status, Ticket.number)
            .outerjoin(Ticket, Ticket.id == InboxMail.ticket_id).order_by(InboxMail.id)
        ).all()
    return [(status, number) for status, number in rows]


def failing_mailer(
    settings: Settings, clock: FixedClock
) -> Callable[[Store, MailIntent, Ticket | None], QueuedMail | None]:
    """The real outbox, except for a mail whose text says BOOM."""

    def mailer(store: Store, intent: MailIntent, ticket: Ticket | None) -> QueuedMail | None:
        if "BOOM" in str(intent.context.get("body", "")):
            raise RuntimeError("the template engine exploded")
        return enqueue(store, settings, clock, intent, ticket)

    return mailer
