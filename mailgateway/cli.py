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

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mailgateway import __version__
from mailgateway.clock import Clock, FixedClock, SystemClock, parse_instant
from mailgateway.config import Settings, load_settings
from mailgateway.errors import ConfigError, MailGatewayError, TemporaryError, UserError
from mailgateway.log import configure_logging
from mailgateway.signing_secret import check_serving_secret, with_secret
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
        """The gateway on a database with the code's schema: a fresh or older one is
        created or upgraded first, as `serve` does, so every command works on first run."""
        from mailgateway.db.migrate import ensure_schema
        from mailgateway.service import Gateway

        gateway = Gateway(self.settings, self.clock)
        self._closers.append(gateway.close)
        if ensure_schema(gateway.engine):
            structlog.get_logger().info("database_schema_upgraded", hint="as db upgrade does")
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


def _db_backup(args: argparse.Namespace, app: App) -> None:
    from mailgateway.backup import back_up, back_up_dated

    link_dest = Path(args.link_dest) if args.link_dest else None
    if args.keep is not None and not args.dated:
        raise UserError("--keep removes dated backups: give --dated too.")
    if args.dated:
        lines = back_up_dated(app.settings, Path(args.folder), app.clock.now(), args.keep,
                              link_dest)
    else:
        lines = back_up(app.settings, Path(args.folder), link_dest)
    for line in lines:
        print(line)


def _ingest(args: argparse.Namespace, app: App) -> int:
    from mailgateway.ingest.pipe import EX_TEMPFAIL, read_message

    raw = read_message(args.file)
    try:
        received = app.gateway.receive(raw, transport="pipe")
    except TemporaryError as exc:
        print(f"mailgateway: could not store the mail, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except SQLAlchemyError as exc:  # the database unreachable: the MTA keeps the mail
        print(f"mailgateway: could not store the mail, try again later: "
              f"{database_problem(app.settings, exc)}", file=sys.stderr)
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
                              vat=args.vat, language=args.language,
                              answer_email=args.answers_to)
        print(f"Account {account.main_email} added.")


def _accounts_answers_to(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import set_answer_email

    with app.sessions.begin() as session:
        account = set_answer_email(session, args.email, args.address)
        where = account.answer_email or "the PEC address it writes from"
        print(f"Answers to {account.main_email}'s PEC mail go to {where}.")


def _accounts_import(args: argparse.Namespace, app: App) -> int:
    from mailgateway.directory import import_accounts

    with app.sessions.begin() as session:
        report = import_accounts(session, app.clock, Path(args.csv))
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{report.added} accounts added, {len(report.skipped)} skipped.")
    return 0


# An address whose mail keeps bouncing is no longer mailed (`addresses clear` undoes it).
_BOUNCING = "\t(bouncing: not mailed)"


def _accounts_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import list_accounts
    from mailgateway.outbound.delivery import not_mailed

    with app.reads() as session:
        accounts = list(list_accounts(session))
        bouncing = not_mailed(session)
        rows = [{"name": a.name, "email": a.main_email, "vat": a.vat_number,
                 "language": a.language, "verified": a.verified,
                 "bouncing": a.main_email.lower() in bouncing,
                 "answers_to": a.answer_email}
                for a in accounts]
    emit(args, rows, (f"{r['email']}\t{r['name']}\t{r['vat']}"
                      + ("" if r["verified"] else "\t(unverified)")
                      + (_BOUNCING if r["bouncing"] else "") for r in rows))


def _persons_add(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import add_person

    with app.sessions.begin() as session:
        person = add_person(session, app.clock, account_email=args.account, name=args.name,
                            email=args.email)
        print(f"Person {person.email} added to {person.account.main_email}.")


def _persons_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import list_persons
    from mailgateway.outbound.delivery import not_mailed

    with app.reads() as session:
        persons = list(list_persons(session))
        bouncing = not_mailed(session)
        rows = [{"name": p.name, "email": p.email, "account": p.account.main_email,
                 "bouncing": p.email.lower() in bouncing}
                for p in persons]
    emit(args, rows, (f"{r['email']}\t{r['name']}\t{r['account']}"
                      + (_BOUNCING if r["bouncing"] else "") for r in rows))


def _staff_add(args: argparse.Namespace, app: App) -> None:
    from mailgateway.directory import ROUTED_GROUPS, add_staff

    groups = {*app.settings.groups, *ROUTED_GROUPS}  # rules may name only configured ones
    with app.sessions.begin() as session:
        staff = add_staff(session, app.clock, name=args.name, email=args.email, group=args.group,
                          groups=groups)
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
    from mailgateway.views import show_ticket, ticket_lines

    with app.reads() as session:
        data = show_ticket(session, app.settings.helpdesk.ticket_tag, args.number,
                           app.clock.now().year)
    emit(args, data, ticket_lines(data, app.settings.sla.timezone))


def _tickets_attachment(args: argparse.Namespace, app: App) -> int:
    """A ticket's kept files: listed, or exported under their original names."""
    from mailgateway.attachments import export_file
    from mailgateway.views import find_ticket

    with app.reads() as session:
        ticket = find_ticket(session, args.number, app.clock.now().year)
        files = [(a.filename, a.sha256, a.size) for m in ticket.messages for a in m.attachments]
        number = ticket.number
    if not args.all and args.name is None:
        if not files:
            print(f"Ticket {number} has no kept files.", file=sys.stderr)
        for name, _, size in files:
            print(f"{name}\t{size}")
        return 0
    chosen = files if args.all else [f for f in files if f[0] == args.name]
    if not chosen:
        known = ", ".join(sorted({f[0] for f in files})) or "none"
        raise UserError(f"Ticket {number} has no file {args.name!r} (its files: {known}).")
    for name, sha256, _ in chosen:
        try:
            target = export_file(app.settings.data_dir, sha256, Path(args.out), name)
        except OSError as exc:
            raise UserError(f"{name}: {exc}.") from None
        print(target)
    return 0


def _inbox_show(args: argparse.Namespace, app: App) -> None:
    from mailgateway.views import show_inbox

    with app.reads() as session:
        data, raw = show_inbox(session, args.id)
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    emit(args, data, [f"{key}: {'-' if value is None else value}"
                      for key, value in data.items()])


def _inbox_list(args: argparse.Namespace, app: App) -> None:
    from mailgateway.views import list_inbox

    with app.reads() as session:
        rows = list_inbox(session, args.status)
    emit(args, rows, (f"{r['id']}\t{r['status']}\t{r['ticket'] or '-'}\t{r['sender'] or '-'}\t"
                      f"{r['subject'] or ''}\t{r['reason'] or ''}" for r in rows))


def _inbox_retry(args: argparse.Namespace, app: App) -> None:
    print(f"Mail {args.id}: {app.gateway.retry(args.id)}.")


def _wait_for_database(app: App, longest: float = 60.0) -> None:
    """`serve` outlives a database that is not up yet (a boot, a restart): it says
    so on one line per attempt and tries again, waiting twice as long each time."""
    import signal
    import time

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        delay = 1.0
        while True:
            try:
                app.gateway  # noqa: B018 - connects, and creates or upgrades the schema
                return
            except SQLAlchemyError as exc:
                print(f"mailgateway: {database_problem(app.settings, exc)}; retrying in "
                      f"{delay:g} s.", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, longest)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace, app: App) -> int:
    import signal

    from mailgateway.directory import check_notices_reach
    from mailgateway.server import ServeOptions, default_workers, parse_only, serve

    # A reload asked for while starting (`systemctl reload`) would otherwise end the
    # process: what it asks for, reading everything afresh, starting does anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _wait_for_database(app)
    with app.reads() as session:
        check_notices_reach(session, app.settings)
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

    return run_checks(app.settings, args.config, print, app.clock)


def _add(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler,
    help_text: str, *, json_flag: bool = False,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, not {text!r}")
    return int(text)


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

    db = _group(sub, "db", "the database: its schema and backups")
    _add(db, "upgrade", _db_upgrade, "create or migrate the schema")
    backup = _add(db, "backup", _db_backup, "copy the database (SQLite's file, or "
                  "PostgreSQL's pg_dump), the attachments and the generated secret into a "
                  "new folder; safe while serve runs")
    backup.add_argument("folder", help="a folder that does not exist yet, or an empty one "
                        "(with --dated: the folder the dated backups are kept in)")
    backup.add_argument("--link-dest", metavar="PREVIOUS",
                        help="an earlier backup: attachment files it holds are hard-linked "
                        "instead of copied again (same file system)")
    backup.add_argument("--dated", action="store_true",
                        help="back up into FOLDER/<UTC time>, sharing files with the newest "
                        "backup there (what a timer runs)")
    backup.add_argument("--keep", type=_positive, metavar="N",
                        help="with --dated: then remove the oldest beyond the N newest")
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
    add.add_argument("--answers-to", metavar="ADDRESS",
                     help="when the account writes by PEC, answer at this ordinary address "
                          "instead of the PEC address")
    answers = _add(accounts, "answers-to", _accounts_answers_to,
                   "where answers to the account's PEC mail go")
    answers.add_argument("email", help="the account's main address")
    answers.add_argument("address", nargs="?",
                         help="an ordinary address; omitted: the PEC address it wrote from")
    _add(accounts, "import", _accounts_import,
         "accounts from a CSV (name,email,vat,language,answers_to)").add_argument("csv")
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
         ).add_argument("number", help="the ticket's number; 12 is this year's YYYY-000012")
    export = _add(tickets, "attachment", _tickets_attachment,
                  "a ticket's kept files: list them, or export one (NAME) or all (--all)")
    export.add_argument("number", help="the ticket's number; 12 is this year's YYYY-000012")
    chosen = export.add_mutually_exclusive_group()
    chosen.add_argument("name", nargs="?", help="the file's name, as `tickets show` lists it")
    chosen.add_argument("--all", action="store_true", help="every kept file of the ticket")
    export.add_argument("--out", default=".", help="the directory to write to (default: .)")

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
        "--status", type=str.lower,
        choices=("received", "processed", "ignored", "quarantined", "spam"))
    show = _add(inbox, "show", _inbox_show, "one received mail and its fate", json_flag=True)
    show.add_argument("id", type=int)
    show.add_argument("--raw", action="store_true", help="the mail's bytes as received")
    _add(inbox, "retry", _inbox_retry, "re-run a quarantined mail").add_argument("id", type=int)

    # Command groups that live beside the stage they drive.
    from mailgateway.outbound.commands import register as register_outbound

    register_outbound(sub)
    return parser


def database_problem(settings: Settings, exc: Exception) -> str:
    """One sentence on why the database could not be used, its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.database.url).render_as_string(hide_password=True)
    except ArgumentError:
        url = "(unreadable URL)"
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (f"the database {url} cannot be used (database.url): "
            f"{detail[0] if detail else type(exc).__name__}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        loaded = load_settings(args.config)
        configure_logging(loaded.log)
        if args.handler is _serve:
            check_serving_secret(loaded)
        # doctor writes nothing, a generated secret's file included; it checks the secret.
        # A backup copies the file as it is, and must not make one.
        settings = loaded if args.handler in (_doctor, _db_backup) else with_secret(loaded)
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
    except (SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver
        print(f"mailgateway: {database_problem(app.settings, exc)}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        app.close()
