"""The transports measured in process: SMTP listener, IMAP poller, dispatcher.

A listener's acknowledgements, a poller's IDLE and a dispatcher's batches cannot be driven
one command at a time, so these measures run the gateway's own classes in this process
(`smtp_bench`, `imap_bench`, `dispatch_bench`) against a throwaway site per backend. The
site is the one `gateway_site` builds for the command-line measures — same config, same
scratch database, schema and accounts — read by the gateway's own settings loader, so both
kinds of measure run on the same installation. Sizes follow the corpus size `n`: `--quick`
makes them small without a knob of their own.

Each measure imports its module only when it runs: the IMAP one needs Dovecot and
imapclient, and a missing prerequisite is a note under the table, not a crash of the run.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.core import Better, Context, Row, median, summarize_error
from benchmarks.gateway import Backend, gateway_site

if TYPE_CHECKING:
    from mailgateway.config import Settings

SMTP_CLIENTS = 8
SMTP_WORKERS = 2
SUSTAINED_RATE = 100.0  # mails/s
SUSTAINED_SECONDS = 600.0
# The target is 30 s; waiting longer for a backlog says nothing more and makes a full
# run last as long as the backlog (60,000 mails at 35 a second: half an hour).
SUSTAINED_PATIENCE_SECONDS = 120.0
DISPATCH_MAILS_PER_CORPUS_MAIL = 4
"""The dispatcher sends in batches over a few sessions and is quick: 4 × n (2,000 for the
default corpus) make enough batches for a steady rate."""

Results = dict[Backend, dict[str, Any]]


@contextmanager
def site_settings(ctx: Context, name: str, backend: Backend) -> Iterator[Settings]:
    """The settings of a fresh throwaway site on `backend`, dropped on exit.

    Logs are cut to errors: the in-process gateway would otherwise print a warning per
    mail (the auto-answer limiter trips when one sender writes a thousand times) among
    the runner's output.
    """
    with site_config(ctx, name, backend) as (settings, _config):
        yield settings


@contextmanager
def site_config(ctx: Context, name: str, backend: Backend) -> Iterator[tuple[Settings, Path]]:
    """`site_settings`, with the path of a configuration file saying the same, for the
    worker processes of `serve --workers`."""
    from mailgateway.config import load_settings
    from mailgateway.log import configure_logging

    root = ctx.site_root(name, backend)
    with gateway_site(root, backend, ctx.corpus, postgres=ctx.postgres, rules=ctx.rules) as site:
        settings = load_settings(site.config)
        settings = replace(settings, log=replace(settings.log, level="error"))
        configure_logging(settings.log)
        quiet = site.config.with_name("quiet.toml")
        quiet.write_text(site.config.read_text(encoding="utf-8").replace(
            'level = "warning"', 'level = "error"'), encoding="utf-8")
        yield settings, quiet


def _each_backend(ctx: Context, name: str, run: Callable[[Backend], dict[str, Any]]) -> Results:
    """Run `run` on every backend; a failure becomes a note and a failed run, not a crash."""
    results: Results = {}
    for backend in ctx.backends():
        try:
            results[backend] = run(backend)
        except Exception as exc:  # any failure of one backend: report it, measure the next
            detail = "".join(traceback.format_exception(exc))
            ctx.notes.append(f"{name} on {backend} failed: {summarize_error(detail)}")
            ctx.failures.append(f"{name} ({backend})")
            ctx.details.setdefault("errors", {})[f"{name}-{backend}"] = detail
    ctx.details[name] = results
    return results


def _row(
    results: Results,
    metric: str,
    unit: str,
    value: Callable[[dict[str, Any]], float | None],
    *,
    better: Better = "higher",
    note: str = "",
    only: Backend | None = None,
) -> Row:
    """One row from per-backend reports; a backend with no report (or `only` another) shows —."""

    def cell(backend: Backend) -> float | None:
        report = results.get(backend)
        if report is None or (only is not None and backend != only):
            return None
        return value(report)

    return Row(metric, unit, cell("sqlite"), cell("postgresql"), None, better=better, note=note)


def _missing(ctx: Context, name: str, module: str) -> bool:
    """Import `module`; on failure say why under the table and return True."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        ctx.notes.append(f"{name} skipped: {exc}")
        return True
    return False


def smtp_listener(ctx: Context) -> list[Row]:
    """Accepted mails/s and time-to-250 of the SMTP listener, 8 clients, processor running.

    The processor shares the process and the database, as `serve` runs them by default;
    a second, listener-only run on a fresh site shows what the processor's share costs.
    """
    from mailgateway.server import default_workers

    name, mails, default = "smtp-listener", ctx.n, default_workers()
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.smtp_bench"):
        from benchmarks.smtp_bench import bench_smtp

        def run(backend: Backend) -> dict[str, Any]:
            with site_settings(ctx, "smtp", backend) as settings:
                served = bench_smtp(settings, mails, SMTP_CLIENTS, process=True)
            with site_config(ctx, "smtp-workers", backend) as (settings, config):
                workers = bench_smtp(settings, mails, SMTP_CLIENTS, process=True,
                                     workers=SMTP_WORKERS, config=config)
            with site_config(ctx, "smtp-default", backend) as (settings, config):
                by_default = bench_smtp(settings, mails, SMTP_CLIENTS, process=True,
                                        workers=default, config=config)
            with site_settings(ctx, "smtp-alone", backend) as settings:
                alone = bench_smtp(settings, mails, SMTP_CLIENTS, process=False)
            return {**served, "listener_only_mails_per_s": alone["mails_per_s"],
                    "with_workers": workers, "by_default": by_default}

        results = _each_backend(ctx, name, run)
    return [
        _row(
            results,
            f"SMTP accepted, {mails} mails, {SMTP_CLIENTS} clients",
            "mails/s",
            lambda r: r["mails_per_s"],
            note="processor running in the same process (`serve --workers 0`); "
            "a mail counts when its 250 arrives, after the inbox commit",
        ),
        _row(results, "SMTP time-to-250 p50", "ms", lambda r: r["p50_ms"], better="lower"),
        _row(results, "SMTP time-to-250 p99", "ms", lambda r: r["p99_ms"], better="lower"),
        _row(
            results,
            "SMTP to tickets, first mail sent to last ticket",
            "mails/s",
            lambda r: r.get("processed_per_s"),
            note="the processor's pace while the listener takes mail",
        ),
        _row(
            results,
            "CPU time per mail, SMTP listener + processor",
            "ms",
            lambda r: r["server_cpu_ms_per_mail"],
            better="lower",
            note="this process only, while sending; steadier than the rates on a busy machine",
        ),
        *_with_workers(results, "with_workers", f"serve --workers {SMTP_WORKERS}",
                       SMTP_WORKERS, "processing in worker processes beside the listener's"),
        _row(
            results,
            f"SMTP to tickets, --workers {SMTP_WORKERS}",
            "mails/s",
            lambda r: r["with_workers"].get("processed_per_s"),
        ),
        *_with_workers(results, "by_default", f"serve as it starts here (--workers {default})",
                       default, "the workers `serve` starts without the flag: one per core "
                       "beyond the first"),
        _row(
            results,
            "SMTP accepted, listener only",
            "mails/s",
            lambda r: r["listener_only_mails_per_s"],
            note="processor off, fresh site: the listener's own ceiling",
        ),
    ]


def _with_workers(results: Results, key: str, label: str, workers: int,
                  note: str) -> list[Row]:
    """Accepted mails/s and time-to-250 of one `serve --workers` run."""
    return [
        _row(results, f"SMTP accepted, {label}", "mails/s",
             lambda r: r[key]["mails_per_s"], note=note),
        _row(results, f"SMTP time-to-250 p50, --workers {workers}", "ms",
             lambda r: r[key]["p50_ms"], better="lower"),
        _row(results, f"SMTP time-to-250 p99, --workers {workers}", "ms",
             lambda r: r[key]["p99_ms"], better="lower"),
    ]


def smtp_sustained(ctx: Context) -> list[Row]:
    """A steady 100 mails/s over SMTP (8 clients) on PostgreSQL with `serve --workers 2`:
    does processing keep up? The largest backlog seen (sampled each second) and how
    long after the last 250 the last mail was processed (its acknowledgment is queued
    in the same transaction). Ten minutes in a full run; `n` × 0.5 s with --quick."""
    name = "smtp-sustained"
    seconds = SUSTAINED_SECONDS if ctx.n >= 500 else max(10.0, ctx.n * 0.5)
    mails = int(SUSTAINED_RATE * seconds)
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.smtp_bench"):
        from benchmarks.smtp_bench import bench_smtp

        def run(backend: Backend) -> dict[str, Any]:
            if backend != "postgresql":
                return {}
            with site_config(ctx, "smtp-sustained", backend) as (settings, config):
                return bench_smtp(settings, mails, SMTP_CLIENTS, process=True,
                                  workers=SMTP_WORKERS, config=config, rate=SUSTAINED_RATE,
                                  patience=SUSTAINED_PATIENCE_SECONDS)

        results = _each_backend(ctx, name, run)
    label = f"{SUSTAINED_RATE:.0f} mails/s for {seconds:.0f} s, --workers {SMTP_WORKERS}"
    return [
        _row(results, f"SMTP sustained {label}: largest backlog", "mails",
             lambda r: r.get("largest_backlog"), better="lower", only="postgresql",
             note="target: never above 1,000"),
        _row(results, "SMTP sustained: last mail processed after the last 250", "s",
             lambda r: r.get("processing_lag_s"), better="lower", only="postgresql",
             note="target: within 30 s; waited for at most "
                  f"{SUSTAINED_PATIENCE_SECONDS:.0f} s"),
        _row(results, "SMTP sustained: still unprocessed when the wait ended", "mails",
             lambda r: r.get("left_unprocessed"), better="lower", only="postgresql"),
        _row(results, "SMTP sustained: time-to-250 p99", "ms",
             lambda r: r.get("p99_ms"), better="lower", only="postgresql"),
    ]


def imap_poller(ctx: Context) -> list[Row]:
    """Backlog drain and APPEND-to-ticket latency of the IMAP poller against a real Dovecot.

    Dovecot's own notice delay (the floor of any IDLE client) does not depend on the
    gateway's database, so it is measured once, on the first backend.
    """
    name, backlog, samples = "imap-poller", ctx.n, max(1, len(ctx.follow_on))
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.imap_bench"):
        from benchmarks.imap_bench import bench_imap
        from tests.dovecot import dovecot_available

        if dovecot_available():
            first = ctx.backends()[0]

            def run(backend: Backend) -> dict[str, Any]:
                floor = None if backend == first else 0
                with site_config(ctx, "imap", backend) as (settings, config):
                    return bench_imap(settings, backlog, samples, floor_samples=floor,
                                      workers=SMTP_WORKERS, config=config)

            results = _each_backend(ctx, name, run)
        else:
            ctx.notes.append(
                f"{name} skipped: Dovecot (/usr/sbin/dovecot, doveadm) is not installed "
                "or cannot run as an unprivileged mail user here"
            )
    floor_note = (
        "no poller, a bare client re-entering IDLE: Dovecot batches new-mail notices "
        "for 500 ms, so no IDLE client goes below it; shown in the SQLite column"
    )
    return [
        _row(
            results,
            f"IMAP backlog drain, {backlog} mails",
            "mails/s",
            lambda r: r["drain_mails_per_s"],
            note="one pass of the poller: fetch, commit, pipeline, move; Dovecot on loopback",
        ),
        _row(
            results,
            f"IMAP backlog drain, {backlog} mails, --workers {SMTP_WORKERS}",
            "mails/s",
            lambda r: r.get("drain_workers_mails_per_s"),
            note="the poller stores and moves; the worker processes process",
        ),
        _row(
            results,
            "IMAP APPEND to ticket p50, IDLE",
            "ms",
            lambda r: r["latency_p50_ms"],
            better="lower",
            note=f"{samples} mails appended one by one while the poller idles",
        ),
        _row(
            results,
            "IMAP APPEND to ticket p99, IDLE",
            "ms",
            lambda r: r["latency_p99_ms"],
            better="lower",
        ),
        _row(
            results,
            f"IMAP APPEND to ticket p50, IDLE, --workers {SMTP_WORKERS}",
            "ms",
            lambda r: r.get("latency_workers_p50_ms"),
            better="lower",
            note="the ticket seen in the database, which is looked at every 5 ms",
        ),
        _row(
            results,
            f"IMAP APPEND to ticket p99, IDLE, --workers {SMTP_WORKERS}",
            "ms",
            lambda r: r.get("latency_workers_p99_ms"),
            better="lower",
        ),
        _row(
            results,
            "Dovecot alone, APPEND to IDLE notice p50 (floor)",
            "ms",
            lambda r: r.get("dovecot_notice_p50_ms"),
            better="lower",
            note=floor_note,
            only="sqlite",
        ),
    ]


def dispatcher(ctx: Context) -> list[Row]:
    """Mails/s the dispatcher sends from the outbox to a local SMTP sink, rows committed."""
    name, mails = "dispatcher", DISPATCH_MAILS_PER_CORPUS_MAIL * ctx.n
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.dispatch_bench"):
        from benchmarks.dispatch_bench import bench_dispatch

        def run(backend: Backend) -> dict[str, Any]:
            with site_settings(ctx, "dispatch", backend) as settings:
                return bench_dispatch(settings, mails)

        results = _each_backend(ctx, name, run)
    return [
        _row(
            results,
            f"dispatcher to an SMTP sink, {mails} mails",
            "mails/s",
            lambda r: r["mails_per_s"],
            note="one dispatch pass: claim, send over parallel sessions, commit each row as "
            "sent; the sink (aiosmtpd) runs in another process",
        ),
        _row(
            results,
            "same sink, smtplib alone (no database)",
            "mails/s",
            lambda r: r["relay_alone_mails_per_s"],
            note="the most this sink takes here: read the dispatcher's rate against it",
        ),
    ]


def scheduler(ctx: Context) -> list[Row]:
    """One scheduler pass over 100,000 tickets of which 1,000 are due, then one with
    nothing due (`scheduler_bench`); `--quick`: 10,000 and 100."""
    name = "scheduler"
    tickets, due = (10_000, 100) if ctx.n < 100 else (100_000, 1_000)
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.scheduler_bench"):
        from benchmarks.scheduler_bench import bench_scheduler

        def run(backend: Backend) -> dict[str, Any]:
            with site_settings(ctx, "scheduler", backend) as settings:
                return bench_scheduler(settings, tickets, due)

        results = _each_backend(ctx, name, run)
    return [
        _row(results, f"scheduler pass, {due:,} due of {tickets:,} tickets", "s",
             lambda r: r["pass_seconds"], better="lower",
             note="reminders, auto-closes and overdue signals, each with its event and "
             "outbox row, a few tickets per transaction"),
        _row(results, "scheduler pass with nothing due", "ms", lambda r: r["idle_pass_ms"],
             better="lower", note="the same desk right after: two partial indexes, no scan"),
    ]


def routing_rules(ctx: Context) -> list[Row]:
    """Per-mail pipeline time with no rules and with 200 (`rules_bench`), the two sites
    alternating from round to round so that a machine's drift falls on both."""
    name, counts = "routing-rules", (0, 200)
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.rules_bench"):
        from benchmarks.gateway import GROUPS
        from benchmarks.rules_bench import bench_matching, bench_rules, write_rules

        def run(backend: Backend) -> dict[str, Any]:
            reports: dict[int, list[dict[str, Any]]] = {count: [] for count in counts}
            for round_ in range(ctx.repeat):
                for count in counts if round_ % 2 == 0 else counts[::-1]:
                    rules = ctx.workdir / "routing-rules" / str(count)
                    write_rules(rules, count)
                    with site_settings(ctx, f"rules-{count}", backend) as settings:
                        reports[count].append(bench_rules(settings, ctx.corpus.raw, rules))
            none, many = (median(r["cpu_ms_per_mail"] for r in reports[c]) for c in counts)
            wall_none, wall_many = (median(r["ms_per_mail"] for r in reports[c]) for c in counts)
            matching = bench_matching(ctx.corpus.raw, ctx.workdir / "routing-rules" / "200",
                                      [group for group, _ in GROUPS])
            return {"rounds": {str(c): reports[c] for c in counts}, "none": none, "many": many,
                    "matching_us": matching["us_per_mail"],
                    "matching_percent": matching["us_per_mail"] / 10 / none,
                    "added_percent": 100 * (many - none) / none,
                    "wall_none": wall_none, "wall_many": wall_many}

        results = _each_backend(ctx, name, run)
    note = ("CPU of this process: stored first, then processed one by one; median of the "
            "rounds (wall time, commits' waits included, is in the JSON)")
    return [
        _row(results, "pipeline CPU per mail, no rules", "ms", lambda r: r["none"],
             better="lower", note=note),
        _row(results, "pipeline CPU per mail, 200 rules", "ms", lambda r: r["many"],
             better="lower", note="the desk's examples and 193 generated ones"),
        _row(results, "CPU 200 rules add per mail", "%", lambda r: r["added_percent"],
             better="lower", note="target: under 10%; the rules' fields change the work too"),
        _row(results, "matching 200 rules alone, per mail", "µs",
             lambda r: r["matching_us"], better="lower",
             note="the engine's own cost, in process, on the parsed corpus"),
        _row(results, "matching 200 rules ÷ pipeline CPU, no rules", "%",
             lambda r: r["matching_percent"], better="lower"),
    ]


def similar_suggestions(ctx: Context) -> list[Row]:
    """Suggestion lookup among 100,000 solved tickets (`similar_bench`); `--quick`:
    10,000."""
    name = "similar-suggestions"
    solved = 10_000 if ctx.n < 100 else 100_000
    results: Results = {}
    if not _missing(ctx, name, "benchmarks.similar_bench"):
        from benchmarks.similar_bench import bench_similar

        def run(backend: Backend) -> dict[str, Any]:
            with site_settings(ctx, "similar", backend) as settings:
                return bench_similar(settings, solved)

        results = _each_backend(ctx, name, run)
    note = ("500 new requests of the generated desk, the sender's account, full-text "
            "candidates ranked by TF-IDF cosine; target: p99 under 20 ms")
    return [
        _row(results, f"suggestion lookup p50, {solved:,} solved tickets", "ms",
             lambda r: r["p50_ms"], better="lower", note=note),
        _row(results, f"suggestion lookup p99, {solved:,} solved tickets", "ms",
             lambda r: r["p99_ms"], better="lower"),
        _row(results, "suggestion lookup p99, each request's best of 3 rounds", "ms",
             lambda r: r["best_p99_ms"], better="lower",
             note="what a lookup costs when it does not wait for a core"),
    ]
