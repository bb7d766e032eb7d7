"""What every benchmark shares: result rows, the registry entry, and measured subprocesses.

A benchmark is a function from a `Context` to a list of `Row`s. Rows are what the table
and the JSON show: one metric, its value on the gateway with SQLite and with PostgreSQL,
and the peer's value where the peer can do the same thing. Keeping every measure to this
shape is what lets later measures (SMTP, IMAP, the dispatcher) plug in as one more entry
in `benchmarks.suite.BENCHMARKS` without touching the runner or the table.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from benchmarks.generate import Corpus

if TYPE_CHECKING:
    from benchmarks.django_helpdesk import DjangoHelpdesk
    from benchmarks.gateway import Backend, Postgres

Better = Literal["higher", "lower", "equal"]
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*:")


@dataclass(frozen=True)
class Row:
    """One line of the table.

    `better` says how to read the ratio (SQLite over peer): for a rate higher is better,
    for a latency or a memory peak lower is, and for a count (tickets, threaded replies)
    the two should simply be equal. A value is None where it does not apply or could not
    be measured; `note` then says why.
    """

    metric: str
    unit: str
    sqlite: float | None = None
    postgresql: float | None = None
    peer: float | None = None
    better: Better = "higher"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """Gateway on SQLite divided by the peer, where both exist."""
        if self.sqlite is None or self.peer in (None, 0):
            return None
        assert self.peer is not None
        return self.sqlite / self.peer


@dataclass
class Context:
    """What a benchmark may use: the options, the corpus, a work area, shared services.

    `corpus` and `peer_corpus` are the same `n` mails except for the subject tag of
    tag-threaded replies (the gateway's format and django-helpdesk's); `follow_on` are the
    mails that come after them in the same sequence (replies among them answer requests
    in `corpus`). `postgres` is None when PostgreSQL is unusable and `peer` when
    django-helpdesk is not to be run; `gateway_missing` says why the gateway's CLI cannot
    run, if it cannot. A benchmark adds explanations to `notes`, anything worth keeping
    beyond its rows to `details[its name]`, and to `failures` what went wrong without
    stopping it from returning rows (the run then exits non-zero).
    """

    n: int
    quick: bool
    repeat: int
    seed: int
    workdir: Path
    corpus: Corpus
    peer_corpus: Corpus
    follow_on: list[bytes]
    postgres: Postgres | None
    peer: DjangoHelpdesk | None
    gateway_missing: str | None
    rules: Path | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def backends(self) -> list[Backend]:
        """The gateway backends to measure: SQLite always, PostgreSQL when reachable."""
        return ["sqlite", "postgresql"] if self.postgres is not None else ["sqlite"]

    def site_root(self, name: str, backend: Backend, run: int = 0) -> Path:
        """A directory for one gateway site of measure `name` (emptied by `gateway_site`)."""
        return self.workdir / "gateway" / f"{name}-{backend}-{run}"


@dataclass(frozen=True)
class Benchmark:
    """A named measure; `run` returns its rows.

    With `needs_gateway` the runner skips it (with a note) when the gateway's CLI cannot
    run; a measure that is useful without it (the peer's side) leaves that False and
    handles a missing gateway itself.
    """

    name: str
    description: str
    run: Callable[[Context], list[Row]]
    needs_gateway: bool = True


@dataclass(frozen=True)
class Measured:
    """A finished command: exit code, output, wall time, peak RSS and CPU time.

    A command that starts processes of its own (worker pools) is measured with them: the
    peak is that of its largest process, the CPU time the sum over all of them.
    """

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_kib: int
    cpu_seconds: float = 0.0

    def check(self, what: str) -> Measured:
        """Return self, or raise with the command's stderr if it failed."""
        if self.returncode != 0:
            tail = self.stderr.strip().splitlines()[-15:]
            raise BenchmarkError(f"{what} exited {self.returncode}:\n" + "\n".join(tail))
        return self


class BenchmarkError(RuntimeError):
    """A measure could not be taken (a command failed, a tool is missing)."""


# Runs the measured command and reports what it cost, its descendants included.
# * Linux carries the resident-set high-water mark of a forked process across exec, so a
#   command forked straight from this (large) runner would report the runner's size as its
#   own peak; forked from this small launcher, its peak is its own.
# * A command may leave helpers behind (multiprocessing's forkserver outlives the pool and
#   is never waited for); as a child subreaper the launcher inherits and reaps them, so
#   their CPU time is counted too. It waits for them a bounded time only.
_LAUNCHER = """\
import ctypes, os, resource, subprocess, sys, time
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except (AttributeError, OSError):
    pass
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
code = subprocess.call(command)
seconds = time.perf_counter() - started
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        time.sleep(0.01)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(report, "w") as out:
    out.write(f"{code} {seconds!r} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime!r}")
"""


def run_measured(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> Measured:
    """Run `args` to completion; return its output, wall time and peak RSS.

    A small launcher process runs the command and reports its wall time and
    `getrusage(RUSAGE_CHILDREN)`: the command is the launcher's only child, so those are
    the command's own peak and CPU time (see `_LAUNCHER` for why not fork it from here). Output goes
    through temporary files so a chatty child cannot block on a full pipe while timed.
    """
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryDirectory(prefix="mg-bench-run-") as scratch,
    ):
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        report = Path(scratch) / "report"
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report)]
        subprocess.run(
            [*launcher, *(os.fspath(arg) for arg in args)],
            stdin=inp,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        if not report.exists():
            raise BenchmarkError(f"could not run {os.fspath(args[0])}: {stderr.strip()}")
        code, seconds, peak, cpu = report.read_text(encoding="ascii").split()
        return Measured(
            returncode=int(code),
            stdout=stdout,
            stderr=stderr,
            seconds=float(seconds),
            peak_rss_kib=int(peak),
            cpu_seconds=float(cpu),
        )


def summarize_error(error: str) -> str:
    """First and last line of a failure: what failed, and the exception that said why."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    cause = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), lines[-1])
    return f"{lines[0]} … {cause[:300]}"


def median(values: Sequence[float]) -> float:
    """Median of repeated runs: robust to one run disturbed by the machine."""
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (`pct` in 0–100) of a sample; exact for small samples."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
