"""Where the shared fixture mails live, and which of them are RFC 822 messages.

The corpus beside the repository mixes whole mails with body-only texts for
reply parsers, HTML snippets, expected-result files and licenses. Tests that
feed raw bytes to the pipeline need only the whole mails, so the selection
lives here once instead of in every test module.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent

# Sets of plain bodies for reply/quote parsers: text, not messages.
_BODY_ONLY_SOURCES = frozenset(
    {
        "email_reply_trimmer",
        "mail-parser-reply",
        "zapier-email-reply-parser",
        "github-email_reply_parser",
    }
)
_SKIPPED_NAMES = frozenset({"SOURCE.txt", "INDEX.md", "README.md", "Readme.txt", "mail_outlook_1"})
_SKIPPED_SUFFIXES = frozenset({".yml", ".yaml", ".json", ".html", ".md", ".gitignore"})
# Parts of a path that hold bodies or build inputs rather than mails.
_SKIPPED_FRAGMENTS = (
    "/email_signature_detection/",
    "/talon/tests/fixtures/html_replies/",
    "/talon/tests/fixtures/signature/",
    "/talon/tests/fixtures/standard_replies/iphone_reply_text",
    "/talon/tests/fixtures/standard_replies/sparrow_reply_text",
)


def corpus_dir() -> Path:
    """The corpus root: `MAILGATEWAY_CORPUS` when set, else `<repo>/../shared/corpus`."""
    configured = os.environ.get("MAILGATEWAY_CORPUS")
    return Path(configured) if configured else _REPO.parent / "shared" / "corpus"


def _is_mail(path: Path, root: Path) -> bool:
    """True for a file that holds one RFC 822 message."""
    relative = "/" + path.relative_to(root).as_posix()
    name = path.name
    if path.parts[len(root.parts)] in _BODY_ONLY_SOURCES:
        return False
    if name in _SKIPPED_NAMES or name.upper().startswith(("LICENSE", "COPYING", "PSF-LICENSE")):
        return False
    if path.suffix.lower() in _SKIPPED_SUFFIXES:
        return False
    if name.endswith((".eml.head.txt", ".eml.body.txt")):
        return False
    return not any(fragment in relative for fragment in _SKIPPED_FRAGMENTS)


@cache
def _collect(root: Path) -> tuple[Path, ...]:
    if not root.is_dir():
        return ()
    files = (p for p in root.rglob("*") if p.is_file())
    return tuple(sorted(p for p in files if _is_mail(p, root)))


def corpus_mails() -> list[Path]:
    """Every RFC 822 mail file of the corpus, sorted; empty when the corpus is absent."""
    return list(_collect(corpus_dir()))


def corpus_file(relative: str) -> Path:
    """A file of the corpus by its path relative to the corpus root."""
    return corpus_dir() / relative
