"""The boundary matcher given to feedparser matches what its compiled pattern matched."""

from __future__ import annotations

import email
import email.feedparser
import re
from email.message import Message
from typing import Any

import pytest

from mailgateway.pipeline import boundaries
from mailgateway.pipeline.boundaries import BoundaryMatcher, compile_pattern
from tests.corpus import corpus_mails

SEPARATORS = [
    "--simple",
    "------=_Part_1234_5678.1700000000000",
    "--(?P<x>.*)$",           # regex syntax is only text in a boundary
    "--a\\b\\\\c",           # backslashes
    "--with space\ttab",
    "--ünïcode-ß",
    "--",                    # an empty boundary
    "--a.b*c+d?e[f]g{h}i|j^k$l",
]
ENDINGS = ["", "\n", "\r\n", "\r", "--", "--\n", "--\r\n", "  \t\n", "--  \r\n", "x", "x\n",
           "\n\n", " \nmore", "-", "---\n", "--x"]


def _stdlib(separator: str) -> re.Pattern[str]:
    return re.compile("(?P<sep>" + re.escape(separator)
                      + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")


def _groups(match: re.Match[str] | None) -> tuple[Any, ...] | None:
    if match is None:
        return None
    return match.group("end"), match.group("ws"), match.group("linesep"), match.end()


@pytest.mark.parametrize("separator", SEPARATORS)
def test_matcher_agrees_with_the_stdlib_pattern(separator: str) -> None:
    expected = _stdlib(separator)
    matcher = compile_pattern(expected.pattern)
    assert isinstance(matcher, BoundaryMatcher)
    assert matcher.separator == separator
    lines = [separator + ending for ending in ENDINGS]
    lines += ["", "x" + separator, separator[:-1], " " + separator + "\n", separator.upper()]
    for line in lines:
        assert _groups(matcher.match(line)) == _groups(expected.match(line)), repr(line)


def test_other_patterns_are_compiled_as_usual() -> None:
    assert isinstance(compile_pattern(r"\r\n|\r|\n"), re.Pattern)
    # Looks like the boundary pattern but is not what re.escape makes: not taken.
    assert isinstance(compile_pattern(r"(?P<sep>a.b)(?P<end>--)?(?P<ws>[ \t]*)"
                                      r"(?P<linesep>\r\n|\r|\n)?$"), re.Pattern)
    assert isinstance(compile_pattern(_stdlib("--x").pattern, re.IGNORECASE), re.Pattern)


def test_installed_once_and_used_by_feedparser() -> None:
    boundaries.install()
    shim = email.feedparser.re
    boundaries.install()
    assert email.feedparser.re is shim
    assert shim.escape is re.escape
    message = email.message_from_bytes(
        b"Content-Type: multipart/mixed; boundary=\"b(1)\"\n\npreamble\n--b(1)\n\none\n"
        b"--b(1)  \n\ntwo\n--b(1)--\nepilogue\n")
    assert [part.get_payload() for part in message.get_payload()] == ["one", "two"]
    assert message.preamble == "preamble" and message.epilogue == "epilogue\n"


def _shape(message: Message) -> list[tuple[Any, ...]]:
    return [(part.get_content_type(), part.preamble, part.epilogue,
             part.get_payload() if not part.is_multipart() else len(part.get_payload()),
             [type(defect).__name__ for defect in part.defects])
            for part in message.walk()]


@pytest.mark.skipif(not corpus_mails(), reason="shared corpus not present")
def test_corpus_trees_are_the_stdlib_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    boundaries.install()
    raws = [raw for raw in (path.read_bytes() for path in corpus_mails())
            if b"boundary" in raw.lower()]
    assert len(raws) > 300
    with_matcher = [_shape(email.message_from_bytes(raw)) for raw in raws]
    monkeypatch.setattr(email.feedparser, "re", re)
    assert [_shape(email.message_from_bytes(raw)) for raw in raws] == with_matcher
