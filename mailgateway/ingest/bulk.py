"""`mailgateway import`: an archive in bulk, with a progress bar on a terminal.

Speed comes from two things. Parsing, and the stages that need no database
(classification, threading keys, quote stripping), run in worker processes
while the importing process writes the previous batch; and each batch of mails is
stored and processed in one transaction (done again mail by mail, with a
savepoint each, when one of them fails, so a bad mail is quarantined alone).
An import can be stopped and run again: what was stored is recognised and
not doubled.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import cast

import structlog
from sqlalchemy.exc import SQLAlchemyError

from mailgateway.errors import TemporaryError
from mailgateway.ingest.batch import receive_batch
from mailgateway.ingest.pipe import iter_archive
from mailgateway.pipeline.prepare import (
    FindingSettings,
    PreparedMail,
    finding_settings,
    prepare_mails,
)
from mailgateway.service import Gateway, Outcome

log = structlog.get_logger()

BATCH = 200
_OUTCOMES = {"OpenTicket": "new_ticket", "CustomerReply": "reply", "StaffReply": "reply"}


@dataclass
class ImportReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    seconds: float = 0.0  # from the first mail read to the last committed

    def add(self, outcome: Outcome) -> None:
        key = outcome.status
        if key == "processed":
            key = _OUTCOMES.get(outcome.decision or "", "processed")
        self.outcomes[key] += 1

    def summary(self) -> str:
        o = self.outcomes
        mails = sum(o.values()) + self.failed
        rate = f", {mails / self.seconds:.0f} a second" if self.seconds and mails else ""
        return (f"{mails} mails in {self.seconds:.1f} s{rate}: {o['new_ticket']} new tickets, "
                f"{o['reply']} replies, {o['ignored']} ignored, {o['spam']} spam, "
                f"{o['quarantined']} quarantined, "
                f"{o['duplicate']} already stored, {self.failed} not stored.")


def _batches(source: str) -> Iterator[list[tuple[str, bytes]]]:
    items = iter_archive(source)
    while batch := list(islice(items, BATCH)):
        yield batch


def _pool() -> Executor | None:
    """Worker processes for parsing.

    On Linux they are forked, so a worker is ready at once with the modules this
    process has loaded; a fresh interpreter (forkserver, elsewhere) spends 0.3 s
    importing them, as long as preparing 300 mails. Forking is safe here: a worker
    only prepares the raw mails it is handed and never touches this process's
    database connections, and it leaves with `os._exit`, which closes none of
    them (the SQLAlchemy pool's sockets and SQLite's locks stay the parent's).

    The importing process keeps a core busy writing, and what the workers do
    takes about as long: the other cores are enough, and one worker more per
    core would only compete with the writer (measured on two cores: one worker
    imports faster than two).
    """
    workers = min((os.cpu_count() or 1) - 1, 3)
    if workers < 1:
        return None
    # Linux only: on macOS a forked child may crash in the system's frameworks.
    methods = multiprocessing.get_all_start_methods()
    method = ("fork" if sys.platform.startswith("linux")
              else "forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=_die_with, initargs=(os.getpid(),))


def _die_with(parent: int) -> None:
    """In a worker: end when the importing process does, however it ends (a worker
    left behind by a killed import would hold its memory and parse for nobody)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


_Part = tuple[list[bytes], "Future[list[PreparedMail]] | None"]  # raw mails, their job


def _submit(
    pool: Executor | None, batch: list[tuple[str, bytes]], settings: FindingSettings
) -> list[_Part]:
    """Hand a batch to the workers in a few parts (none without a pool)."""
    raws = [raw for _, raw in batch]
    if pool is None:
        return [(raws, None)]
    step = max(1, len(raws) // (4 * (os.cpu_count() or 1)))
    return [(raws[i:i + step], pool.submit(prepare_mails, raws[i:i + step], settings))
            for i in range(0, len(raws), step)]


def _collect(parts: list[_Part], settings: FindingSettings) -> list[PreparedMail]:
    """The batch's mails prepared, in order. The parts no worker has begun are taken
    back, from the last one on, and prepared here while the workers finish theirs:
    a worker still starting, or behind, is helped rather than waited for."""
    done: dict[int, list[PreparedMail]] = {}
    for index in range(len(parts) - 1, -1, -1):
        raws, job = parts[index]
        if job is None or job.cancel():
            done[index] = prepare_mails(raws, settings)
    prepared: list[PreparedMail] = []
    for index, (_, job) in enumerate(parts):
        prepared += done[index] if index in done else cast(Future[list[PreparedMail]], job).result()
    return prepared


def _store(gateway: Gateway, prepared: list[PreparedMail], report: ImportReport) -> None:
    try:
        outcomes = receive_batch(gateway, prepared, "import")
    except SQLAlchemyError as exc:
        log.warning("batch could not commit; importing one by one", error=str(exc)[:200])
        outcomes = []
        for mail in prepared:
            try:
                received = gateway.receive(mail.raw, transport="import")
            except TemporaryError as error:
                log.error("mail not stored", error=str(error))
                report.failed += 1
                continue
            outcomes.append(Outcome("duplicate") if received.duplicate
                            else gateway.process_outcome(received.inbox_id))
    for outcome in outcomes:
        report.add(outcome)


def import_archive(gateway: Gateway, source: str, *, progress: bool = False) -> ImportReport:
    report = ImportReport()
    started = time.monotonic()
    bar = None
    if progress:
        # tqdm rather than rich: structlog imports rich at start-up whenever it is
        # installed, which made every `mailgateway ingest` 0.1 s slower.
        from tqdm import tqdm

        bar = tqdm(desc="importing", unit=" mails", leave=False)
    settings = finding_settings(gateway.settings)
    batches = _batches(source)
    pending = next(batches, None)
    # A worker pays off only for an archive of a batch or more.
    pool = _pool() if pending is not None and len(pending) == BATCH else None
    parts = _submit(pool, pending, settings) if pending else []
    try:
        if pending:  # a configuration the calendar rejects stops the import here
            gateway.load_calendar()
        while pending:
            following = next(batches, None)
            next_parts = _submit(pool, following, settings) if following else []
            prepared = _collect(parts, settings)
            _store(gateway, prepared, report)
            if bar is not None:
                bar.update(len(prepared))
            pending, parts = following, next_parts
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    report.seconds = time.monotonic() - started
    return report
