"""The stdlib's MIME parser, without a regular expression compiled for each boundary.

`email.feedparser` compiles `(?P<sep>--BOUNDARY)(?P<end>--)?(?P<ws>[ \\t]*)…$` for
every multipart part it meets. Boundaries are random, so the `re` module's cache
never holds one, and compiling took about 0.2 ms: a fifth of parsing a typical
mail, whose multipart/alternative alone has a boundary. The pattern is a literal
followed by a fixed tail, so the same match comes from `str.startswith` and one tail
compiled once. `install` gives the feedparser module a `re` whose `compile` makes
such a matcher for that one pattern, recognised by its text, and is the real
`re.compile` for anything else: a Python whose feedparser writes the pattern
differently parses as before, only not faster. Newer CPython releases match
boundaries this way themselves; there the pattern is never compiled and
`install` changes nothing.
"""

from __future__ import annotations

import email.feedparser
import re
import types
from typing import Any

_HEAD = "(?P<sep>"
_TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
_AFTER_SEPARATOR = re.compile(_TAIL[1:])
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


class BoundaryMatcher:
    """What feedparser uses of a compiled boundary pattern: `match`, and the groups
    `end`, `ws` and `linesep` of its result."""

    __slots__ = ("separator",)

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return _AFTER_SEPARATOR.match(line, len(self.separator))


def compile_pattern(pattern: Any, flags: Any = 0) -> Any:
    """`re.compile`, except for feedparser's boundary pattern."""
    if flags == 0 and isinstance(pattern, str) and pattern.startswith(_HEAD) \
            and pattern.endswith(_TAIL):
        escaped = pattern[len(_HEAD):-len(_TAIL)]
        separator = _ESCAPED.sub(r"\1", escaped)
        if re.escape(separator) == escaped:  # it is what feedparser builds, nothing else
            return BoundaryMatcher(separator)
    return re.compile(pattern, flags)


class _FeedparserRe(types.ModuleType):
    """The `re` module as feedparser sees it once `install` has run."""

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)


def install() -> None:
    """Point feedparser's `re` at one with `compile_pattern`; running it again does nothing."""
    namespace = vars(email.feedparser)
    if isinstance(namespace.get("re"), _FeedparserRe):
        return
    shim = _FeedparserRe("re")
    shim.compile = compile_pattern  # type: ignore[attr-defined]
    namespace["re"] = shim
