"""`python -m benchmarks`: run the registered measures, print a table, write JSON.

One command so that anyone can reproduce the figures on their own machine and compare
them with django-helpdesk on the same corpus. `--quick` is the CI mode: a small corpus,
one round, just enough to prove every measure still runs (CI never asserts on speed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.core import Benchmark, BenchmarkError, Context, Row, summarize_error
from benchmarks.django_helpdesk import DjangoHelpdesk, peer_tag
from benchmarks.gateway import DEFAULT_POSTGRES_DSN, Postgres, gateway_unavailable
from benchmarks.generate import Corpus, generate_corpus
from benchmarks.suite import BENCHMARKS

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"
_QUICK = {"n": 40, "repeat": 1, "ingest_sample": 5}
_FULL = {"n": 500, "repeat": 3, "ingest_sample": 50}


def build_parser(benchmarks: Sequence[Benchmark]) -> argparse.ArgumentParser:
    """The runner's options."""
    names = ", ".join(b.name for b in benchmarks)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark mailgateway side by side with django-helpdesk.",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"small corpus, one round (n={_QUICK['n']}): for CI"
    )
    parser.add_argument(
        "--n",
        type=int,
        help=f"mails in the corpus (default {_FULL['n']}); also sizes the SMTP and IMAP "
        "measures (n mails) and the dispatcher's (4 × n)",
    )
    parser.add_argument("--repeat", type=int, help="rounds of each import (default 3)")
    parser.add_argument(
        "--ingest-sample",
        type=int,
        help="mails piped (and appended over IMAP) one by one for the latencies (default 50)",
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"where to write the results (default {DEFAULT_JSON})",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these measures (repeatable): {names}",
    )
    parser.add_argument("--no-peer", action="store_true", help="do not run django-helpdesk")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--postgres-dsn",
        default=DEFAULT_POSTGRES_DSN,
        help="libpq DSN of a server where scratch databases may be created",
    )
    parser.add_argument(
        "--work", type=Path, help="keep sites and the django-helpdesk venv here (reused next time)"
    )
    parser.add_argument(
        "--rules",
        type=Path,
        help="rules directory for the gateway (default: the checkout's rules/)",
    )
    parser.add_argument("--list", action="store_true", help="list the measures and exit")
    return parser


def main(argv: Sequence[str] | None = None, benchmarks: Sequence[Benchmark] = BENCHMARKS) -> int:
    """Run the selected measures; return the exit status (1 if a measure failed)."""
    args = build_parser(benchmarks).parse_args(argv)
    if args.list:
        for bench in benchmarks:
            print(f"{bench.name:20} {bench.description}")
        return 0
    selected = _select(benchmarks, args.only)
    sizes = _QUICK if args.quick else _FULL
    n = args.n or sizes["n"]
    repeat = args.repeat or sizes["repeat"]
    sample = args.ingest_sample or sizes["ingest_sample"]
    if n < 1 or repeat < 1 or sample < 1:
        print("--n, --repeat and --ingest-sample must be at least 1.", file=sys.stderr)
        return 2

    workdir = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="mg-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        ctx = _context(args, workdir, n, repeat, sample)
        rows, failed = _run(selected, ctx)
    finally:
        if not args.work:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render_table(rows, ctx.notes))
    document = _document(args, ctx, rows, n, repeat)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    print(f"\nResults written to {args.json}")
    if failed or ctx.failures:
        print(f"Failed: {', '.join([*failed, *ctx.failures])}", file=sys.stderr)
        return 1
    return 0


def _select(benchmarks: Sequence[Benchmark], only: list[str] | None) -> list[Benchmark]:
    """The measures `--only` names (comma-separated values allowed), else all of them."""
    if not only:
        return list(benchmarks)
    wanted = {name.strip() for value in only for name in value.split(",") if name.strip()}
    known = {b.name for b in benchmarks}
    unknown = wanted - known
    if unknown:
        raise SystemExit(
            f"Unknown measure(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}."
        )
    return [b for b in benchmarks if b.name in wanted]


def _context(args: argparse.Namespace, workdir: Path, n: int, repeat: int, sample: int) -> Context:
    """Generate the corpora and find out which contenders can run."""
    year = datetime.now().year
    full = generate_corpus(n + sample, args.seed, year=year)
    corpus = Corpus(mails=full.mails[:n], accounts=full.accounts)
    peer_corpus = generate_corpus(n, args.seed, year=year, tag=peer_tag)
    notes: list[str] = []
    postgres: Postgres | None = None
    if not args.no_postgres:
        postgres = Postgres(args.postgres_dsn)
        reason = postgres.unavailable()
        if reason:
            notes.append(f"PostgreSQL rows skipped: {reason}.")
            postgres = None
    gateway_missing = gateway_unavailable()
    if gateway_missing:
        notes.append(f"Gateway rows skipped: {gateway_missing}.")
    peer = None if args.no_peer else DjangoHelpdesk(workdir / "django-helpdesk")
    return Context(
        n=n,
        quick=args.quick,
        repeat=repeat,
        seed=args.seed,
        workdir=workdir,
        corpus=corpus,
        peer_corpus=peer_corpus,
        follow_on=full.raw[n:],
        postgres=postgres,
        peer=peer,
        gateway_missing=gateway_missing,
        rules=args.rules.resolve() if args.rules else None,
        notes=notes,
    )


def _run(selected: Sequence[Benchmark], ctx: Context) -> tuple[list[Row], list[str]]:
    """Run each measure; a failing one is reported and the others still run."""
    rows: list[Row] = []
    failed: list[str] = []
    for bench in selected:
        if bench.needs_gateway and ctx.gateway_missing:
            continue
        started = time.perf_counter()
        print(f"[{bench.name}] {bench.description} …", file=sys.stderr, flush=True)
        try:
            rows += bench.run(ctx)
        except BenchmarkError as exc:
            failed.append(bench.name)
            ctx.notes.append(f"{bench.name} failed: {summarize_error(str(exc))}")
            ctx.details.setdefault("errors", {})[bench.name] = str(exc)
        print(
            f"[{bench.name}] done in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows, failed


def render_table(rows: Sequence[Row], notes: Sequence[str]) -> str:
    """The results as a plain-text table, notes underneath."""
    header = ["metric", "unit", "SQLite", "PostgreSQL", "django-helpdesk", "SQLite/peer"]
    body = [
        [row.metric, row.unit, _fmt(row.sqlite), _fmt(row.postgresql), _fmt(row.peer), _ratio(row)]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        left = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        right = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in body]
    row_notes = [f"{row.metric}: {row.note}" for row in rows if row.note]
    if any(row.ratio is not None for row in rows):
        row_notes.append(
            "SQLite/peer is SQLite ÷ django-helpdesk: above 1 is better in mails/s, "
            "worse in ms and MiB"
        )
    if row_notes or notes:
        out.append("")
    out += [f"* {note}" for note in [*row_notes, *notes]]
    return "\n".join(out)


def _fmt(value: float | None) -> str:
    """A number with as many decimals as its size deserves; '—' when absent."""
    if value is None:
        return "—"
    if value == int(value):
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(row: Row) -> str:
    """The SQLite/peer ratio, marked when it is a count that should be equal."""
    ratio = row.ratio
    if ratio is None:
        return ""
    if row.better == "equal":
        return "same" if ratio == 1 else f"{ratio:.2f}"
    return f"{ratio:.2f}×"


def _document(
    args: argparse.Namespace, ctx: Context, rows: Sequence[Row], n: int, repeat: int
) -> dict[str, Any]:
    """The JSON document: what ran, where, and every row."""
    return {
        "meta": {
            "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "n": n,
            "new_requests": ctx.corpus.new_requests,
            "replies": ctx.corpus.replies,
            "repeat": repeat,
            "ingest_sample": len(ctx.follow_on),
            "seed": args.seed,
            "quick": args.quick,
            "postgresql": ctx.postgres is not None,
            "django_helpdesk": ctx.details.get("django-helpdesk-version"),
        },
        "rows": [
            {
                "metric": row.metric,
                "unit": row.unit,
                "sqlite": row.sqlite,
                "postgresql": row.postgresql,
                "django_helpdesk": row.peer,
                "ratio_sqlite_to_peer": row.ratio,
                "better": row.better,
                "note": row.note,
            }
            for row in rows
        ],
        "notes": ctx.notes,
        "details": ctx.details,
    }


if __name__ == "__main__":
    sys.exit(main())
