"""`mailgateway import`: an archive in bulk, with a progress bar on a terminal.

Each mail is stored, then processed, exactly as if it had arrived by pipe,
so an import can be stopped and run again: what was stored is not doubled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import structlog

from mailgateway.errors import TemporaryError
from mailgateway.ingest.pipe import iter_archive
from mailgateway.service import Gateway

log = structlog.get_logger()


@dataclass
class ImportReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def summary(self) -> str:
        o = self.outcomes
        return (f"{sum(o.values())} mails: {o['new_ticket']} new tickets, {o['reply']} replies, "
                f"{o['ignored']} ignored, {o['quarantined']} quarantined, "
                f"{o['duplicate']} already stored, {self.failed} not stored.")


_OUTCOMES = {"OpenTicket": "new_ticket", "CustomerReply": "reply", "StaffReply": "reply"}


def import_archive(gateway: Gateway, source: str, *, progress: bool = False) -> ImportReport:
    report = ImportReport()
    items = iter_archive(source)
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[name]}"), transient=True)
        bar.start()
        task = bar.add_task("import", total=None, name="")
    try:
        for name, raw in items:
            try:
                received = gateway.receive(raw, transport="import")
            except TemporaryError as exc:
                log.error("mail not stored", file=name, error=str(exc))
                report.failed += 1
                continue
            if received.duplicate:
                report.outcomes["duplicate"] += 1
            else:
                outcome = gateway.process_outcome(received.inbox_id)
                key = outcome.status
                if outcome.status == "processed":
                    key = _OUTCOMES.get(outcome.decision or "", "processed")
                report.outcomes[key] += 1
            if bar is not None:
                bar.update(task, advance=1, name=name[-40:])
    finally:
        if bar is not None:
            bar.stop()
    return report
