"""Bounds on the work one mail can cause, checked on its bytes before it is parsed.

The stdlib's parsers have paths whose work grows faster than the input: RFC
2047 decoding pops a list from its front (a 1 MB subject of encoded words
takes seconds), reading an address list is quadratic in its length, and a
deeply nested multipart recurses once a level. Mail clients never come near
these bounds; a mail that passes one is quarantined with the reason
(`inbox list --status quarantined`) instead of being parsed.
"""

from __future__ import annotations

import re
from itertools import pairwise

MAX_HEADER_BYTES = 256 * 1024   # the whole header block
MAX_FIELD_BYTES = 64 * 1024     # one header field, continuation lines included
MAX_FIELDS = 1_000
MAX_BOUNDARY_LINES = 5_000      # lines starting with "--": every MIME part has one
MAX_MULTIPARTS = 200            # multipart containers, and so levels of nesting

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FIELD_START = re.compile(rb"\n(?![ \t])")


def exceeded_limit(raw: bytes) -> str | None:
    """Why `raw` is beyond what the gateway reads, or None when it is not."""
    end = _HEADER_END.search(raw, 0, MAX_HEADER_BYTES + 4)
    if end is None and len(raw) > MAX_HEADER_BYTES:
        return f"header block larger than {MAX_HEADER_BYTES // 1024} KiB"
    head = raw[:end.start()] if end else raw
    starts = [m.end() for m in _FIELD_START.finditer(head)]
    if len(starts) + 1 > MAX_FIELDS:
        return f"more than {MAX_FIELDS} header fields"
    bounds = [0, *starts, len(head)]
    if any(b - a > MAX_FIELD_BYTES for a, b in pairwise(bounds)):
        return f"a header field larger than {MAX_FIELD_BYTES // 1024} KiB"
    if raw.count(b"\n--") > MAX_BOUNDARY_LINES:
        return f"more than {MAX_BOUNDARY_LINES} MIME parts"
    # Counted as written by mail software, not in every mix of cases: a scan
    # without copying a 25 MB mail. An odd spelling only meets the part bound above,
    # and a nesting too deep for the parser's recursion is read without its tree.
    if raw.count(b"ultipart/") + raw.count(b"ULTIPART/") > MAX_MULTIPARTS:
        return f"more than {MAX_MULTIPARTS} nested or sibling multipart parts"
    return None
