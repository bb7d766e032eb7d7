"""Every real-world mail of the shared corpus goes through `import` and `ingest`:
exit 0, no traceback, nothing left unprocessed, sensible fates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailgateway.cli import main
from tests.corpus import corpus_dir, corpus_file, corpus_mails

# Mail the pipeline must survive as separate processes (see corpus/INDEX.md).
HARDEST = [
    "otobo/scripts/test/sample/PostMaster/PostMaster-Test12.box",
    "discourse/spec/fixtures/emails/inline_reply.eml",
    "zammad/test/data/mail/mail060.box",
    "otobo/scripts/test/sample/EmailParser/EmptyEmail.eml",
    "spamscope-mail-parser/tests/mails/mail_malformed_1",
    "cpython-test_email/Lib/test/test_email/data/msg_15.txt",
]
BOUNCE_SOURCES = ("sisimai", "flufl-bounce")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    mails = corpus_mails()
    if not mails:
        pytest.skip(f"the mail corpus is not at {corpus_dir()}")
    root = corpus_dir()
    target = tmp_path / "corpus"
    for path in mails:
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    return target


@pytest.fixture
def accepting_config(config_data: dict[str, Any], tmp_path: Path) -> Path:
    """Strangers' mail opens tickets, so the counts say what the parser made of it."""
    from tests.conftest import write_toml

    config_data["helpdesk"]["unknown_sender"] = "accept"
    config_data["log"]["level"] = "error"
    config = write_toml(config_data, tmp_path / "accepting.toml")
    assert main(["--config", str(config), "db", "upgrade"]) == 0
    return config


def inbox(config: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["--config", str(config), "inbox", "list", "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def check_fates(rows: list[dict[str, Any]], total: int) -> Counter[str]:
    fates = Counter(r["status"] for r in rows)
    assert fates["received"] == 0, "mail left unprocessed"
    # Only a mail with no sender address at all may be quarantined: nobody to answer.
    quarantined = [(r["subject"], r["reason"]) for r in rows if r["status"] == "quarantined"
                   and not r["reason"].startswith("no valid sender address")]
    assert not quarantined, quarantined
    # Byte-identical copies (the corpus has some) are stored once.
    assert 0.95 * total <= len(rows) <= total
    return fates


def test_import_takes_the_whole_corpus(
    corpus: Path, accepting_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = sum(1 for p in corpus.rglob("*") if p.is_file())
    capsys.readouterr()
    assert main(["--config", str(accepting_config), "import", str(corpus)]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"{total} mails in ")
    rows = inbox(accepting_config, capsys)
    fates = check_fates(rows, total)
    bounces = [r for r in rows if r["status"] == "ignored" and "bounce" in (r["reason"] or "")]
    humans = total - sum(
        1
        for p in corpus.rglob("*")
        if p.is_file() and p.relative_to(corpus).parts[0] in BOUNCE_SOURCES
    )
    tickets = {r["ticket"] for r in rows if r["status"] == "processed"}
    # Stored subjects read as their writers meant them: no U+FFFD, no encoded word left.
    assert not [r["subject"] for r in rows
                if "\ufffd" in (r["subject"] or "") or re.search(r"=\?.*\?=", r["subject"] or "")]
    # Most bounce fixtures are recognised as bounces; most of the rest become tickets.
    assert len(bounces) >= 0.9 * (total - humans)
    assert len(tickets) >= 0.75 * humans, (len(tickets), humans, fates)


def test_ingest_takes_every_corpus_mail(
    corpus: Path, accepting_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    for path in files:
        code = main(["--config", str(accepting_config), "ingest", str(path)])
        err = capsys.readouterr().err
        assert code == 0, (path, err)
        assert "Traceback" not in err, (path, err)
    check_fates(inbox(accepting_config, capsys), len(files))


@pytest.mark.parametrize("relative", HARDEST)
def test_hardest_mails_as_a_process(relative: str, accepting_config: Path) -> None:
    path = corpus_file(relative)
    if not path.is_file():
        pytest.skip(f"{relative} is not in the corpus")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailgateway",
            "--config",
            str(accepting_config),
            "ingest",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
