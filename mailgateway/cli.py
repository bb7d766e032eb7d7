"""The command line: parse arguments, call the services, print.

Scripts rely on this contract (SPEC "Command line"): every listing and
`show` takes `--json`; a user mistake is one sentence on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mailgateway import __version__
from mailgateway.clock import Clock, FixedClock, SystemClock, parse_instant
from mailgateway.config import Settings, load_settings
from mailgateway.errors import ConfigError, MailGatewayError, TemporaryError, UserError
from mailgateway.log import configure_logging
from mailgateway.views import emit

Handler = Callable[[argparse.Namespace, "App"], int | None]


@dataclass
class App:
    """What every command handler gets: settings, clock, and lazily the database."""

    settings: Settings
    clock: Clock
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @cached_property
    def gateway(self) -> Any:
        from mailgateway.service import Gateway

        gateway = Gateway(self.settings, self.clock)
        self._closers.append(gateway.close)
        return gateway

    @property
    def sessions(self) -> sessionmaker[Session]:
        sessions: sessionmaker[Session] = self.gateway.sessions
        return sessions

    @property
    def reads(self) -> sessionmaker[Session]:
        """Sessions for commands that only read (`Gateway.reads`)."""
        reads: sessionmaker[Session] = self.gateway.reads
        return reads

    def close(self) -> None:
        for closer in self._closers:
            closer()


def _db_upgrade(args: argparse.Namespace, app: App) -> None:
    from mailgateway.db.migrate import upgrade

    upgrade(app.gateway.engine)
    print("Database schema is up to date.", file=sys.stderr)


def _ingest(args: argparse.Namespace, app: App) -> int:
    from mailgateway.ingest.pipe import EX_TEMPFAIL, read_message

    raw = read_message(args.file)
    try:
        received = app.gateway.receive(raw, transport="pipe")
    except TemporaryError as exc:
        print(f"Could not store the mail, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    status = app.gateway.process_outcome(received.inbox_id, raw).status
    print(f"Mail {received.inbox_id} {'already stored' if received.duplicate else 'stored'}:"
          f" {status}.", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace, app: App) -> int:
    from mailgateway.ingest.bulk import import_archive

    report = import_archive(app.gateway, args.path, progress=sys.stderr.isatty())
    print(report.summary())
    return 0 if report.failed == 0 else 1


def _accounts_add(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import add_account

    with app.sessions.begin() as session:
        account = add_account(session, app.clock, name=args.name, email=args.email,
                              vat=args.vat, language=args.language)
        print(f"Account {account.main_email} added.")


def _accounts_import(args: argparse.Namespace, app: App) -> int:
    from mailgateway.directory import import_accounts

    with app.sessions.begin() as session:
        report = import_accounts(session, app.clock, Path(args.csv))
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{report.added} accounts added, {len(report.skipped)} skipped.")
    return 0


def _accounts_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import list_accounts

    with app.reads() as session:
        rows = [{"name": a.name, "email": a.main_email, "vat": a.vat_number,
                 "language": a.language, "verified": a.verified}
                for a in list_accounts(session)]
    emit(args, rows, (f"{r['email']}\t{r['name']}\t{r['vat']}"
                      + ("" if r["verified"] else "\t(unverified)") for r in rows))


def _persons_add(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import add_person

    with app.sessions.begin() as session:
        person = add_person(session, app.clock, account_email=args.account, name=args.name,
                            email=args.email)
        print(f"Person {person.email} added to {person.account.main_email}.")


def _persons_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import list_persons

    with app.reads() as session:
        rows = [{"name": p.name, "email": p.email, "account": p.account.main_email}
                for p in list_persons(session)]
    emit(args, rows, (f"{r['email']}\t{r['name']}\t{r['account']}" for r in rows))


def _staff_add(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import add_staff

    with app.sessions.begin() as session:
        staff = add_staff(session, app.clock, name=args.name, email=args.email, group=args.group)
        print(f"Technician {staff.email} added.")


def _staff_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import list_staff

    with app.reads() as session:
        rows = [{"name": s.name, "email": s.email, "group": s.group, "active": s.active}
                for s in list_staff(session)]
    emit(args, rows, (f"{r['email']}\t{r['name']}\t{r['group'] or ''}" for r in rows))


def _tickets_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.views import list_tickets

    overdue_at = app.clock.now() if args.overdue else None
    with app.reads() as session:
        rows = list_tickets(session, app.settings.helpdesk.ticket_tag, args.status, args.account,
                            overdue_at)
    emit(args, rows, (f"{r['number']}\t{r['status']}\t{r['account']}\t{r['subject']}"
                      for r in rows))


def _rules_check(args: argparse.Namespace, app: App) -> int:
    from mailgateway.dry_run import rules_check

    errors, summary = rules_check(app.gateway)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"mailgateway: {len(errors)} rule error(s); nothing above is in force "
              "until mended.", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _rules_test(args: argparse.Namespace, app: App) -> None:
    from mailgateway.dry_run import rules_test
    from mailgateway.ingest.pipe import read_message

    report = rules_test(app.gateway, read_message(args.mail))
    decision = report["decision"]
    lines = [f"rules: {', '.join(report['rules']) or '(none)'}",
             f"decision: {decision['kind']} ({decision['reason']})"]
    lines += [f"{name}: {value}" for name, value in decision.get("fields", {}).items()]
    lines += [f"mail: {m['kind']} to {', '.join(m['to'])}"
              + (f" cc {', '.join(m['cc'])}" if m["cc"] else "") for m in decision["mails"]]
    emit(args, report, lines)


def _scheduler(args: argparse.Namespace, app: App) -> None:
    from mailgateway.scheduler import run_pass

    handled = run_pass(app.gateway.engine, app.settings, app.clock)
    rows = [{"ticket": h.number, "action": h.due.value} for h in handled]
    summary = ", ".join(f"{sum(r['action'] == kind for r in rows)} {kind}"
                        for kind in ("reminder", "autoclose", "overdue"))
    emit(args, {"at": app.clock.now().isoformat(), "handled": rows},
         [f"Scheduler pass at {app.clock.now().isoformat()}: {summary}.",
          *(f"{r['ticket']}\t{r['action']}" for r in rows)])


def _tickets_show(args: argparse.Namespace, app: App) -> None:
    from mailgateway.views import show_ticket

    with app.reads() as session:
        data = show_ticket(session, app.settings.helpdesk.ticket_tag, args.number)
    lines = [f"{data['tag']} {data['subject']}", f"status: {data['status']}",
             f"account: {data['account']}  person: {data['person'] or '-'}",
             f"product: {data['product'] or '-'}  type: {data['request_type']}  "
             f"impact: {data['impact']}  due: {data['due_at']}"]
    for message in data["messages"]:
        lines += ["", f"--- {message['direction']} {message['author']} {message['created_at']}"
                  f"{' (internal)' if message['internal'] else ''}", message["body"]]
        lines += [f"[file] {a['filename']} {a['size']} bytes" for a in message["attachments"]]
        lines += [f"[not kept] {name}" for name in message["refused_attachments"]]
    emit(args, data, lines)


def _inbox_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.views import list_inbox

    with app.reads() as session:
        rows = list_inbox(session, args.status)
    emit(args, rows, (f"{r['id']}\t{r['status']}\t{r['ticket'] or '-'}\t{r['sender'] or '-'}\t"
                      f"{r['subject'] or ''}\t{r['reason'] or ''}" for r in rows))


def _inbox_retry(args: argparse.Namespace, app: App) -> None:
    print(f"Mail {args.id}: {app.gateway.retry(args.id)}.")


def _serve(args: argparse.Namespace, app: App) -> int:
    from mailgateway.server import ServeOptions, default_workers, parse_only, serve

    only = parse_only(args.only)
    share = None
    if args.share:
        k, _, n = args.share.partition("/")
        share = (int(k), int(n))
    workers = args.workers if args.workers is not None else default_workers()
    if share is not None or "processor" not in only:
        workers = 0
    command = [sys.executable, "-m", "mailgateway"]
    if args.config:
        command += ["--config", args.config]
    if args.now:
        command += ["--now", args.now]
    command += ["serve", "--only", "processor", "--workers", "0"]
    options = ServeOptions(
        only=only, workers=workers, worker_command=tuple(command), share=share,
        config_path=args.config, metrics_listen=args.metrics_listen,
        # Alone, a processor has no listener to wake it: it looks every second.
        processor_idle_seconds=1.0 if "smtp" not in only and "imap" not in only else 5.0)
    return serve(app.settings, app.clock, options)


def _doctor(args: argparse.Namespace, app: App) -> int:
    from mailgateway.doctor import run_checks

    return run_checks(app.settings, args.config, print)


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler,
    help_text: str, *, json_flag: bool = False,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.add_parser(name, help=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgateway", description="Email-driven helpdesk gateway.")
    parser.add_argument("--version", action="version", version=f"mailgateway {__version__}")
    parser.add_argument("--config", help="configuration file (default: $MAILGATEWAY_CONFIG, "
                        "else built-in defaults)")
    parser.add_argument("--now", help="the clock for this command, ISO 8601 (replays, tests)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = _group(sub, "db", "database schema")
    _add(db, "upgrade", _db_upgrade, "create or migrate the schema")
    serve = _add(sub, "serve", _serve, "run every configured component until SIGTERM/SIGINT")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="processing processes beside the listener's (default: one per "
                       "core beyond the first; 0: process mail in this process)")
    serve.add_argument("--only", default=",".join(
        ("smtp", "imap", "processor", "dispatcher", "scheduler")), metavar="LIST",
        help="the components to run here, comma-separated: smtp,imap,processor,dispatcher,"
        "scheduler (default: all that are configured)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve /metrics and /healthz here (default: [metrics] listen)")
    serve.add_argument("--share", help=argparse.SUPPRESS)  # a worker's k/n, from its parent
    _add(sub, "doctor", _doctor, "check the configuration, the database, the relay, the "
         "IMAP mailboxes, the rules and the templates; exit 1 when any check fails")
    ingest = _add(sub, "ingest", _ingest, "one raw message through the pipeline")
    ingest.add_argument("file", nargs="?", default="-", help="a file, or - for stdin")
    imp = _add(sub, "import", _import, "a Maildir, mbox or directory of mails in bulk")
    imp.add_argument("path")

    accounts = _group(sub, "accounts", "customers (studi / aziende)")
    add = _add(accounts, "add", _accounts_add, "add an account")
    add.add_argument("--name", required=True)
    add.add_argument("--email", required=True, help="the main address (username)")
    add.add_argument("--vat", default="", help="partita IVA")
    add.add_argument("--language", choices=("it", "en"))
    _add(accounts, "import", _accounts_import, "accounts from a CSV (name,email,vat,language)"
         ).add_argument("csv")
    _add(accounts, "list", _accounts_list, "list accounts", json_flag=True)

    persons = _group(sub, "persons", "collaborators (PERSONE) of an account")
    add = _add(persons, "add", _persons_add, "add a person")
    add.add_argument("--account", required=True, help="the account's main address")
    add.add_argument("--name", required=True)
    add.add_argument("--email", required=True)
    _add(persons, "list", _persons_list, "list persons", json_flag=True)

    staff = _group(sub, "staff", "technicians")
    add = _add(staff, "add", _staff_add, "add a technician")
    add.add_argument("--name", required=True)
    add.add_argument("--email", required=True)
    add.add_argument("--group")
    _add(staff, "list", _staff_list, "list technicians", json_flag=True)

    tickets = _group(sub, "tickets", "read the desk")
    listing = _add(tickets, "list", _tickets_list, "list tickets", json_flag=True)
    listing.add_argument("--status", type=str.upper,
                         choices=("APERTO", "IN_GESTIONE", "RISPOSTO", "CHIUSO"))
    listing.add_argument("--account", help="an account's main address")
    listing.add_argument("--overdue", action="store_true",
                         help="only tickets past their first-response time without an answer")
    _add(tickets, "show", _tickets_show, "one ticket in full", json_flag=True
         ).add_argument("number")

    rules = _group(sub, "rules", "the admins' routing rules")
    _add(rules, "check", _rules_check, "check every rule file; list every error")
    _add(rules, "test", _rules_test, "what a mail would do, against the live database; "
         "changes nothing", json_flag=True).add_argument("mail", help="a mail file (.eml)")

    scheduler = _add(sub, "scheduler", _scheduler, "what time makes due: reminders, "
                     "auto-closes, overdue signals (with --now: at that instant)", json_flag=True)
    scheduler.add_argument("--once", action="store_true", required=True,
                           help="one pass, then exit (serve runs it every interval)")

    inbox = _group(sub, "inbox", "received mail and its fate")
    _add(inbox, "list", _inbox_list, "list received mail", json_flag=True).add_argument(
        "--status", type=str.lower, choices=("received", "processed", "ignored", "quarantined"))
    _add(inbox, "retry", _inbox_retry, "re-run a quarantined mail").add_argument("id", type=int)

    # Command groups that live beside the stage they drive.
    from mailgateway.outbound.commands import register as register_outbound

    register_outbound(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        configure_logging(settings.log)
        clock: Clock = FixedClock(parse_instant(args.now)) if args.now else SystemClock()
    except ConfigError as exc:
        if args.command == "doctor":  # one line per check, this one failed
            print(f"FAIL  configuration: {exc}")
            return 1
        print(f"mailgateway: {exc}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"mailgateway: --now must be an ISO 8601 time, not {args.now!r}.", file=sys.stderr)
        return 2
    app = App(settings, clock)
    try:
        return args.handler(args, app) or 0
    except (UserError, ConfigError) as exc:
        print(f"mailgateway: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, UserError) else 2
    except MailGatewayError as exc:
        print(f"mailgateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        app.close()
