"""The benchmark runner's own logic: threading check, statistics, table. No timing asserted."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.__main__ import render_table
from benchmarks.core import Row, percentile, run_measured, summarize_error
from benchmarks.gateway import ImportResult, count_threaded
from benchmarks.generate import generate_corpus


def test_count_threaded_follows_each_reply_to_its_request() -> None:
    corpus = generate_corpus(30, seed=4)
    number = {m.ticket: f"2026-{m.ticket:06d}" for m in corpus.mails if m.kind == "new"}
    # The gateway lists Message-IDs without angle brackets.
    inbox = [
        {"message_id": m.message_id.strip("<>"), "ticket": number[m.ticket]} for m in corpus.mails
    ]
    assert count_threaded(corpus, inbox) == corpus.replies
    first_reply = next(i for i, m in enumerate(corpus.mails) if m.kind == "reply")
    inbox[first_reply]["ticket"] = "2026-999999"
    assert count_threaded(corpus, inbox) == corpus.replies - 1


def test_import_rate_is_the_summary_s_not_its_rounded_seconds() -> None:
    def result(summary: str) -> ImportResult:
        return ImportResult(2.0, 500, 278, 222, 0, {}, summary=summary)

    assert result("500 mails in 1.1 s, 474 a second: 278 new tickets").work_mails_per_second \
        == 474
    assert result("500 mails in 1.25 s: 278 new tickets").work_mails_per_second == 400
    assert result("").work_mails_per_second == 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


def test_summarize_error_keeps_the_command_and_the_exception() -> None:
    error = "mailgateway import exited 1:\nTraceback\n  File x\nValueError: bad mail\n(hint)"
    assert summarize_error(error) == "mailgateway import exited 1: … ValueError: bad mail"


def test_run_measured_reports_output_status_and_memory() -> None:
    measured = run_measured([sys.executable, "-c", "print('ok'); raise SystemExit(3)"])
    assert (measured.returncode, measured.stdout.strip()) == (3, "ok")
    assert measured.peak_rss_kib > 0 and measured.seconds > 0


POOL_SCRIPT = """
import multiprocessing, time
from concurrent.futures import ProcessPoolExecutor

def burn(_):
    started = time.process_time()
    while time.process_time() - started < 0.15:
        pass
    return time.process_time() - started

if __name__ == "__main__":
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        print(sum(pool.map(burn, range(4))))
"""


def test_run_measured_counts_the_workers_a_command_leaves_behind(tmp_path: Path) -> None:
    # multiprocessing's forkserver is never waited for by the command itself.
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT, encoding="utf-8")
    measured = run_measured([sys.executable, script]).check("pool script")
    worker_cpu = float(measured.stdout)
    assert measured.cpu_seconds >= worker_cpu


def test_table_shows_missing_values_and_ratios() -> None:
    rows = [
        Row("bulk import", "mails/s", 120.0, None, 60.0, note="median of 3"),
        Row("tickets opened", "count", 25, 25, 25, better="equal"),
    ]
    table = render_table(rows, ["PostgreSQL rows skipped: unreachable."])
    assert "2.00×" in table and "same" in table and "—" in table
    assert "* PostgreSQL rows skipped: unreachable." in table
