"""The gateway driven through its command line, as an MTA alias or an admin would drive it.

Everything goes through `python -m mailgateway --config CFG …` in a subprocess (the
contract in SPEC "Command line"), never through the package's internals: the numbers are
then what a deployment sees, start-up included, and the benchmark keeps working while the
internals change. Each `GatewaySite` is a throwaway installation — its own config, data
directory and database (a SQLite file, or a scratch PostgreSQL database created for it and
dropped afterwards) — schema upgraded and the corpus's accounts imported before anything
is timed.
"""

from __future__ import annotations

import compileall
import json
import os
import re
import secrets
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from benchmarks.core import BenchmarkError, Measured, run_measured
from benchmarks.generate import Corpus, write_accounts_csv, write_maildir

Backend = Literal["sqlite", "postgresql"]
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def gateway_unavailable() -> str | None:
    """Return why the gateway's command line cannot run here, or None when it can.

    The checkout's modules are byte-compiled first, as pip does when it installs a
    package (django-helpdesk's included): with PYTHONDONTWRITEBYTECODE set, every
    command would otherwise compile them again at start-up.
    """
    compileall.compile_dir(REPO_ROOT / "mailgateway", quiet=1)
    probe = run_measured(
        [sys.executable, "-m", "mailgateway", "--help"], cwd=REPO_ROOT, env=_environment()
    )
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    return f"`python -m mailgateway --help` failed: {last}"


class Postgres:
    """A PostgreSQL server on which scratch databases `mg_bench_<random>` are made."""

    def __init__(self, dsn: str = DEFAULT_POSTGRES_DSN) -> None:
        self.dsn = dsn

    def unavailable(self) -> str | None:
        """Return why the server cannot be used (driver missing, unreachable), or None."""
        try:
            import psycopg
        except ImportError:
            return "psycopg is not installed"
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"PostgreSQL unreachable ({str(exc).strip().splitlines()[0]})"
        return None

    @contextmanager
    def database(self) -> Iterator[str]:
        """Create a fresh database, yield its SQLAlchemy URL, drop it afterwards."""
        import psycopg
        from psycopg import sql

        name = f"mg_bench_{secrets.token_hex(6)}"
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            info = conn.info
            host, port, user = info.host, info.port, info.user
        try:
            yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
        finally:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@dataclass(frozen=True)
class GatewaySite:
    """One throwaway gateway installation: where its config and data live, which backend."""

    root: Path
    config: Path
    backend: Backend

    def cli(self, *args: str | os.PathLike[str], stdin: bytes | None = None) -> Measured:
        """Run one `mailgateway` command against this site and measure it."""
        return run_measured(
            [sys.executable, "-m", "mailgateway", "--config", self.config, *args],
            cwd=REPO_ROOT,
            env=_environment(),
            stdin=stdin,
        )

    def json(self, *args: str) -> Any:
        """Run a listing with `--json` and return the parsed document."""
        measured = self.cli(*args, "--json").check("mailgateway " + " ".join(args))
        return json.loads(measured.stdout)


@contextmanager
def gateway_site(
    root: Path,
    backend: Backend,
    corpus: Corpus,
    *,
    postgres: Postgres | None = None,
    rules: Path | None = None,
) -> Iterator[GatewaySite]:
    """Yield a ready site under `root`: schema created, the corpus's accounts imported.

    `root` is emptied first: a site left by an earlier run (with `--work`) would hold mail
    already stored, which the gateway would then skip as duplicates. For PostgreSQL a
    scratch database is created on `postgres` and dropped on exit, also when the
    benchmark fails half-way.
    """
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if backend == "postgresql":
        if postgres is None:
            raise BenchmarkError("a PostgreSQL site needs a server")
        with postgres.database() as url:
            yield _prepare(root, url, backend, corpus, rules)
    else:
        yield _prepare(root, f"sqlite:///{root / 'mailgateway.db'}", backend, corpus, rules)


def _prepare(
    root: Path, url: str, backend: Backend, corpus: Corpus, rules: Path | None
) -> GatewaySite:
    """Write the config, upgrade the schema and register the senders."""
    config = root / "mailgateway.toml"
    config.write_text(_config_toml(root, url, rules or REPO_ROOT / "rules"), encoding="utf-8")
    site = GatewaySite(root=root, config=config, backend=backend)
    site.cli("db", "upgrade").check("mailgateway db upgrade")
    accounts = write_accounts_csv(corpus.accounts, root / "accounts.csv")
    site.cli("accounts", "import", accounts).check("mailgateway accounts import")
    return site


GROUPS = (("tecnica", "tecnici"), ("commerciale", "commerciale"),
           ("amministrativa", "amministrazione"))
"""The desk's groups, as in config.example.toml: the example rules name them."""


def _config_toml(root: Path, url: str, rules: Path) -> str:
    """The site's configuration: listener off, outbound to a Maildir, quiet logs."""

    def quoted(value: str | Path) -> str:
        return json.dumps(str(value))

    return "\n".join(
        [
            "[helpdesk]",
            'address = "assistenza@example.com"',
            'domains = ["example.com"]',
            'secret = "benchmark-secret"',
            f"data_dir = {quoted(root / 'var')}",
            "",
            "[database]",
            f"url = {quoted(url)}",
            "",
            "[smtp]",
            "enabled = false",
            "",
            "[outbound]",
            'transport = "maildir"',
            f"maildir = {quoted(root / 'sent')}",
            "",
            "[scheduler]",
            "enabled = false",
            "",
            "[rules]",
            f"path = {quoted(rules)}",
            "",
            *(f'[groups.{group}]\naddress = "{address}@example.com"\n'
              for group, address in GROUPS),
            "[log]",
            'level = "warning"',
            "",
        ]
    )


def _environment() -> dict[str, str]:
    """The caller's environment without settings that would override the site's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATEWAY_")}
    env["PYTHONUTF8"] = "1"
    return env


# --- measures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """One timed `mailgateway import` of a Maildir, and what it made of the corpus.

    `threaded` counts the corpus's replies that landed on the ticket of the request they
    answer; `statuses` counts inbox rows by status (processed, ignored, quarantined…).
    """

    seconds: float
    mails: int
    tickets: int
    threaded: int
    peak_rss_kib: int
    statuses: dict[str, int]
    cpu_seconds: float = 0.0
    summary: str = ""

    @property
    def mails_per_second(self) -> float:
        """Throughput of the whole command, start-up included."""
        return self.mails / self.seconds if self.seconds else 0.0

    @property
    def work_mails_per_second(self) -> float:
        """Throughput of the import itself, as its summary reports it ("N mails in S s,
        R a second"), the interpreter's start-up excluded. The rate is read rather
        than the seconds, which the summary rounds to a tenth: at about a second, that
        moved the rate by up to 5 %."""
        rate = re.search(r" mails in [0-9.]+ s, ([0-9]+) a second", self.summary)
        if rate:
            return float(rate.group(1))
        found = re.search(r" mails in ([0-9.]+) s", self.summary)
        seconds = float(found.group(1)) if found else 0.0
        return self.mails / seconds if seconds else 0.0


def timed_import(site: GatewaySite, corpus: Corpus, mails: int | None = None) -> ImportResult:
    """Import the first `mails` of `corpus` (all by default) in one command; time it."""
    chosen = corpus.mails[: len(corpus.mails) if mails is None else mails]
    maildir = write_maildir([mail.raw for mail in chosen], site.root / "import-maildir")
    measured = site.cli("import", maildir).check("mailgateway import")
    tickets = len(site.json("tickets", "list"))
    inbox = site.json("inbox", "list")
    return ImportResult(
        seconds=measured.seconds,
        mails=len(chosen),
        tickets=tickets,
        threaded=count_threaded(Corpus(mails=list(chosen), accounts=corpus.accounts), inbox),
        peak_rss_kib=measured.peak_rss_kib,
        statuses=dict(Counter(str(row.get("status")) for row in inbox)),
        cpu_seconds=measured.cpu_seconds,
        summary=measured.stdout.strip(),
    )


def count_threaded(corpus: Corpus, inbox: Sequence[dict[str, Any]]) -> int:
    """Count replies whose inbox row names the ticket their request opened.

    `inbox` is `mailgateway inbox list --json`: one row per received mail with its
    Message-ID and the number of the ticket it went to.
    """
    ticket_of_mail = {_id_key(row.get("message_id")): row.get("ticket") for row in inbox}
    ticket_of_request = {
        mail.ticket: ticket_of_mail.get(_id_key(mail.message_id))
        for mail in corpus.mails
        if mail.kind == "new"
    }
    threaded = 0
    for mail in corpus.mails:
        landed = ticket_of_mail.get(_id_key(mail.message_id))
        if mail.kind == "reply" and landed is not None:
            threaded += landed == ticket_of_request.get(mail.ticket)
    return threaded


def _id_key(message_id: object) -> str:
    """A Message-ID compared loosely: with or without angle brackets, any case."""
    return str(message_id or "").strip().strip("<>").strip().lower()


def ingest_latencies(site: GatewaySite, mails: Sequence[bytes]) -> list[float]:
    """Pipe each mail to `mailgateway ingest -` in its own process; return the seconds each.

    That is the pipe transport's real cost per mail — interpreter start-up, config, one
    database connection, the pipeline — as an MTA alias pays it.
    """
    latencies = []
    for raw in mails:
        measured = site.cli("ingest", "-", stdin=raw).check("mailgateway ingest")
        latencies.append(measured.seconds)
    return latencies


def ingest_peak_rss(site: GatewaySite, raw: bytes, name: str) -> Measured:
    """Ingest one mail from a file in a fresh process; its peak RSS is in the result."""
    file = site.root / name
    file.write_bytes(raw)
    return site.cli("ingest", file).check(f"mailgateway ingest {name}")
