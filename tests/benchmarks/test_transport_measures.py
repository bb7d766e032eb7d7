"""The in-process transport measures: registered, and a missing prerequisite is a note.

Running them needs a listener, Dovecot and an SMTP sink, which `python -m benchmarks
--quick` exercises; here only what decides whether a run survives without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tests.dovecot
from benchmarks.core import Context
from benchmarks.generate import generate_corpus
from benchmarks.suite import BENCHMARKS
from benchmarks.transport_measures import imap_poller


def context(tmp_path: Path) -> Context:
    corpus = generate_corpus(4, seed=2)
    return Context(
        n=4,
        quick=True,
        repeat=1,
        seed=2,
        workdir=tmp_path,
        corpus=corpus,
        peer_corpus=corpus,
        follow_on=[],
        postgres=None,
        peer=None,
        gateway_missing=None,
    )


def test_the_transport_measures_are_registered() -> None:
    names = [bench.name for bench in BENCHMARKS]
    assert {"smtp-listener", "imap-poller", "dispatcher"} <= set(names)


def test_without_dovecot_the_imap_rows_are_empty_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tests.dovecot, "dovecot_available", lambda: False)
    ctx = context(tmp_path)
    rows = imap_poller(ctx)
    assert rows and all(row.sqlite is None and row.postgresql is None for row in rows)
    assert any("Dovecot" in note for note in ctx.notes)
    assert not ctx.failures
