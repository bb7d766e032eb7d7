"""The registered measures, in the order the runner takes them.

To add a measure, write a function `Context -> list[Row]` and append a `Benchmark` to
`BENCHMARKS`; the runner, `--only`, the table and the JSON pick it up with nothing else to
change. The measures here drive the gateway's command line; those of its transports (SMTP
listener, IMAP poller, dispatcher) run in process and live in `transport_measures`.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.core import (
    Benchmark,
    BenchmarkError,
    Context,
    Row,
    median,
    percentile,
    summarize_error,
)
from benchmarks.django_helpdesk import PeerResult
from benchmarks.gateway import (
    Backend,
    ImportResult,
    gateway_site,
    ingest_latencies,
    ingest_peak_rss,
    timed_import,
)
from benchmarks.generate import large_attachment_reply, write_maildir
from benchmarks.transport_measures import (
    dispatcher,
    imap_poller,
    routing_rules,
    scheduler,
    similar_suggestions,
    smtp_listener,
    smtp_sustained,
)

LARGE_ATTACHMENT_BYTES = 25_000_000
SMALL_ATTACHMENT_BYTES = 20_000
_MIB = 1024


def bulk_import(ctx: Context) -> list[Row]:
    """Bulk import of the corpus: the gateway on each backend and django-helpdesk, interleaved.

    Each round runs every contender once on a fresh database, alternating the order from
    round to round so that a machine that slows down (or warms up) over time does not
    favour whoever always runs first. Throughput and memory are medians over the rounds;
    the counts come from the last round (they do not vary between rounds).
    """
    gateway: dict[Backend, list[ImportResult]] = {backend: [] for backend in ctx.backends()}
    peer: list[PeerResult] = []
    errors: dict[str, str] = {}
    for run in range(ctx.repeat):
        order: list[str] = [*gateway, "peer"] if run % 2 == 0 else ["peer", *reversed(gateway)]
        for contender in order:
            if contender in errors:
                continue
            try:
                if contender == "peer":
                    if ctx.peer is not None:
                        peer.append(ctx.peer.run(ctx.peer_corpus.raw))
                elif ctx.gateway_missing is None:
                    backend: Backend = "sqlite" if contender == "sqlite" else "postgresql"
                    root = ctx.site_root("import", backend, run)
                    with gateway_site(
                        root, backend, ctx.corpus, postgres=ctx.postgres, rules=ctx.rules
                    ) as site:
                        gateway[backend].append(timed_import(site, ctx.corpus))
            except BenchmarkError as exc:
                errors[contender] = str(exc)
    for contender, error in errors.items():
        who = "django-helpdesk" if contender == "peer" else f"gateway on {contender}"
        ctx.notes.append(f"bulk import, {who} failed: {summarize_error(error)}")
        if contender != "peer":
            # The peer may fail for want of PyPI; the gateway failing is a real regression.
            ctx.failures.append(f"bulk-import ({contender})")
    if peer:
        ctx.details["django-helpdesk-version"] = peer[0].version
    ctx.details["bulk-import"] = {
        "errors": errors,
        "gateway": {b: [vars(r) for r in results] for b, results in gateway.items()},
        "django-helpdesk": [vars(r) for r in peer],
    }
    return _import_rows(ctx, gateway, peer)


def _import_rows(
    ctx: Context, gateway: dict[Backend, list[ImportResult]], peer: list[PeerResult]
) -> list[Row]:
    """Turn the import rounds into table rows."""

    def pick(backend: Backend, what: str) -> float | None:
        results = gateway.get(backend) or []
        if not results:
            return None
        if what == "rate":
            return median([r.mails_per_second for r in results])
        if what == "work rate":
            return median([r.work_mails_per_second for r in results])
        if what == "rss":
            return median([r.peak_rss_kib / _MIB for r in results])
        if what == "cpu":
            return median([r.cpu_seconds * 1000 / r.mails for r in results])
        return float(getattr(results[-1], what))

    def pick_peer(what: str) -> float | None:
        if not peer:
            return None
        if what == "rate":
            return median([r.mails_per_second for r in peer])
        if what == "work rate":
            return median([r.work_mails_per_second for r in peer]) or None
        if what == "rss":
            return median([r.peak_rss_kib / _MIB for r in peer])
        if what == "cpu":
            return median([r.cpu_seconds * 1000 / r.mails for r in peer])
        return float(getattr(peer[-1], what))

    expected_tickets = ctx.corpus.new_requests
    expected_replies = ctx.corpus.replies
    return [
        Row(
            f"bulk import, {ctx.n} mails",
            "mails/s",
            pick("sqlite", "rate"),
            pick("postgresql", "rate"),
            pick_peer("rate"),
            note=f"median of {ctx.repeat}; whole command, start-up included",
        ),
        Row(
            f"bulk import, {ctx.n} mails, start-up excluded",
            "mails/s",
            pick("sqlite", "work rate"),
            pick("postgresql", "work rate"),
            pick_peer("work rate"),
            note="as each reports it: the gateway's import summary; the peer's driver "
            "times get_email alone (Django's set-up excluded)",
        ),
        Row(
            f"tickets opened (expected {expected_tickets})",
            "count",
            pick("sqlite", "tickets"),
            pick("postgresql", "tickets"),
            pick_peer("tickets"),
            better="equal",
        ),
        Row(
            f"replies threaded (expected {expected_replies})",
            "count",
            pick("sqlite", "threaded"),
            pick("postgresql", "threaded"),
            pick_peer("followups"),
            better="equal",
            note="django-helpdesk: follow-ups beyond each ticket's first mail",
        ),
        Row(
            "CPU time per mail, bulk import",
            "ms",
            pick("sqlite", "cpu"),
            pick("postgresql", "cpu"),
            pick_peer("cpu"),
            better="lower",
            note="user + system over the command's processes (worker pools included; "
            "not the PostgreSQL server's)",
        ),
        Row(
            "peak RSS, bulk import",
            "MiB",
            pick("sqlite", "rss"),
            pick("postgresql", "rss"),
            pick_peer("rss"),
            better="lower",
            note="its largest process",
        ),
    ]


def ingest_latency(ctx: Context) -> list[Row]:
    """Per-mail latency of `mailgateway ingest -` on a desk already holding the corpus."""
    sample = ctx.follow_on
    p50: dict[Backend, float] = {}
    p99: dict[Backend, float] = {}
    for backend in ctx.backends():
        root = ctx.site_root("ingest", backend)
        with gateway_site(
            root, backend, ctx.corpus, postgres=ctx.postgres, rules=ctx.rules
        ) as site:
            site.cli("import", _maildir_of(ctx, root)).check("mailgateway import")
            latencies = ingest_latencies(site, sample)
        p50[backend] = percentile(latencies, 50) * 1000
        p99[backend] = percentile(latencies, 99) * 1000
        ctx.details.setdefault("ingest-latency", {})[backend] = latencies
    note = f"{len(sample)} mails, one process each; the peer has no one-mail command"
    return [
        Row(
            "ingest latency p50",
            "ms",
            p50.get("sqlite"),
            p50.get("postgresql"),
            None,
            better="lower",
            note=note,
        ),
        Row(
            "ingest latency p99",
            "ms",
            p99.get("sqlite"),
            p99.get("postgresql"),
            None,
            better="lower",
        ),
    ]


def _maildir_of(ctx: Context, root: Path) -> Path:
    """Write the corpus as a Maildir under `root` (for an untimed import)."""
    return write_maildir(ctx.corpus.raw, root / "import-maildir")


def large_attachment(ctx: Context) -> list[Row]:
    """Peak memory of `ingest` for a reply with a small and with a 25 MB attachment.

    Each runs in a fresh process whose own peak RSS is read when it exits, so the figure is
    what an MTA alias or a cron job would need, interpreter included. Both mails are
    replies to the first request, ingested just before (a first mail's attachments are
    refused by design and would not exercise storing them); they differ only in the size
    of the attachment, so the difference is what the attachment costs.
    """
    small_mail = large_attachment_reply(ctx.corpus, SMALL_ATTACHMENT_BYTES, ctx.seed)
    large_mail = large_attachment_reply(ctx.corpus, LARGE_ATTACHMENT_BYTES, ctx.seed)
    small: dict[Backend, float] = {}
    large: dict[Backend, float] = {}
    for backend in ctx.backends():
        root = ctx.site_root("large", backend)
        with gateway_site(
            root, backend, ctx.corpus, postgres=ctx.postgres, rules=ctx.rules
        ) as site:
            first = ingest_peak_rss(site, ctx.corpus.mails[0].raw, "first.eml").peak_rss_kib
            small[backend] = ingest_peak_rss(site, small_mail, "small.eml").peak_rss_kib
            large[backend] = ingest_peak_rss(site, large_mail, "large.eml").peak_rss_kib
            inbox = site.json("inbox", "list")
        ctx.details.setdefault("large-attachment", {})[backend] = {
            "first_request_kib": first,
            "small_kib": small[backend],
            "large_kib": large[backend],
            "statuses": [row.get("status") for row in inbox],
            "tickets": [row.get("ticket") for row in inbox],
            "mail_bytes": len(large_mail),
        }
    size = f"{LARGE_ATTACHMENT_BYTES / 1e6:.0f} MB"
    return [
        Row(
            f"peak RSS, ingest of a reply, {SMALL_ATTACHMENT_BYTES // 1000} kB attachment",
            "MiB",
            _mib(small.get("sqlite")),
            _mib(small.get("postgresql")),
            None,
            better="lower",
        ),
        Row(
            f"peak RSS, ingest of a reply, {size} attachment",
            "MiB",
            _mib(large.get("sqlite")),
            _mib(large.get("postgresql")),
            None,
            better="lower",
            note=f"mail of {len(large_mail) / 1e6:.1f} MB (base64)",
        ),
    ]


def _mib(kib: float | None) -> float | None:
    """KiB (as rusage reports on Linux) to MiB."""
    return None if kib is None else kib / _MIB


def parse_floor(ctx: Context) -> list[Row]:
    """mail-parser alone on the corpus, in this process: the rate no pipeline built on it
    can beat, which puts the gateway's own overhead (storage, threading, rules) in scale.
    When the bulk import ran before, the ratio of the two is a row of its own."""
    try:
        import mailparser
    except ImportError:
        ctx.notes.append("mail-parser is not installed here: no parse-only floor")
        return []
    mails = ctx.corpus.raw
    rates = []
    for _ in range(ctx.repeat):
        started = time.perf_counter()
        for raw in mails:
            mailparser.parse_from_bytes(raw)
        rates.append(len(mails) / (time.perf_counter() - started))
    floor = median(rates)
    rows = [
        Row(
            "mail-parser parse only (floor)",
            "mails/s",
            floor,
            None,
            None,
            note="in-process, no storage; shown in the SQLite column",
        ),
    ]
    imports = ctx.details.get("bulk-import", {}).get("gateway", {})
    overhead: dict[str, float] = {}
    for backend, results in imports.items():
        work = [ImportResult(**result).work_mails_per_second for result in results]
        if work and median(work):
            overhead[backend] = floor / median(work)
    if overhead:
        rows.append(
            Row(
                "bulk import time per mail ÷ mail-parser's parse time",
                "×",
                overhead.get("sqlite"),
                overhead.get("postgresql"),
                None,
                better="lower",
                note="start-up excluded; the gateway parses on every core, mail-parser on one",
            )
        )
    return rows


BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "bulk-import",
        "import the corpus in one command; django-helpdesk's get_email on the same mails",
        bulk_import,
        needs_gateway=False,
    ),
    Benchmark("ingest-latency", "per-mail `ingest -` latency, p50/p99", ingest_latency),
    Benchmark(
        "large-attachment", "peak RSS of ingest, small mail vs 25 MB attachment", large_attachment
    ),
    Benchmark(
        "parse-floor", "mail-parser parse-only rate on the corpus", parse_floor, needs_gateway=False
    ),
    Benchmark(
        "smtp-listener",
        "SMTP accepted mails/s and time-to-250, 8 clients, processor running",
        smtp_listener,
    ),
    Benchmark(
        "smtp-sustained",
        "100 mails/s over SMTP on PostgreSQL with serve --workers 2: backlog and lag",
        smtp_sustained,
    ),
    Benchmark(
        "imap-poller", "IMAP backlog drain and APPEND-to-ticket latency with IDLE", imap_poller
    ),
    Benchmark("dispatcher", "outbox to a local SMTP sink, mails/s", dispatcher),
    Benchmark("scheduler", "one scheduler pass over a large desk, and one with nothing due",
              scheduler),
    Benchmark("routing-rules", "per-mail pipeline time with no routing rules and with 200",
              routing_rules),
    Benchmark("similar-suggestions", "solved tickets like a new request, among 100,000",
              similar_suggestions),
]
