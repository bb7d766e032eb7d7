"""Large base64 parts are decoded from the raw bytes, not through the MIME parser.

The stdlib parser (and mail-parser on top of it) holds a body as a list of
lines, then as one string, then decodes it: a 25 MB attachment peaks near
250 MB. Before parsing, every long run of base64 lines is cut out of a big
mail and replaced by a one-line placeholder; when the parsed mail's files
are read, a placeholder is swapped for the run decoded straight from the
original buffer. Peak memory is then the raw mail plus its decoded files.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailgateway.pipeline.parse import ParsedMail

LARGE = 1 << 20  # runs shorter than this (encoded) are left to the parser
# Possessive: the engine keeps no backtracking state per line (else ~75 MB for 25 MB).
_RUN = re.compile(rb"(?m)^(?:[A-Za-z0-9+/]{60,76}\r?\n){2000,}+(?:[A-Za-z0-9+/]*={0,2}\r?\n)?")
_MARKER = b"\x00mailgateway-large-part\x00"


@dataclass(frozen=True)
class CutParts:
    """Where the cut runs were in the original bytes, in placeholder order."""

    source: bytes
    spans: tuple[tuple[int, int], ...]

    def restore(self, payload: bytes) -> bytes:
        """The real content for a placeholder payload; any other payload as it is."""
        if not payload.startswith(_MARKER):
            return payload
        start, end = self.spans[int(payload[len(_MARKER):])]
        # binascii reads the slice in place (base64.b64decode would copy it first).
        return binascii.a2b_base64(memoryview(self.source)[start:end])


def _placeholder(index: int, line_end: bytes) -> bytes:
    return base64.b64encode(_MARKER + str(index).encode()) + line_end


def cut_large_parts(raw: bytes) -> tuple[bytes, CutParts | None]:
    """`raw` with its long base64 runs replaced by placeholders, and how to restore them."""
    if len(raw) < LARGE:
        return raw, None
    pieces: list[bytes] = []
    spans: list[tuple[int, int]] = []
    last = 0
    for match in _RUN.finditer(raw):
        if match.end() - match.start() < LARGE:
            continue
        line_end = b"\r\n" if raw[match.start():match.start() + 80].find(b"\r\n") >= 0 else b"\n"
        pieces += [raw[last:match.start()], _placeholder(len(spans), line_end)]
        spans.append((match.start(), match.end()))
        last = match.end()
    if not spans:
        return raw, None
    pieces.append(raw[last:])
    return b"".join(pieces), CutParts(raw, tuple(spans))


def restore_parts(mail: ParsedMail, cut: CutParts) -> ParsedMail | None:
    """The mail with its files' real content; None when a placeholder ended up in the
    text (a huge base64 *text* part), so the caller parses the uncut bytes instead."""
    if any("mailgateway-large-part" in text for text in (mail.text, mail.html or "")):
        return None
    restored = tuple(replace(a, payload=cut.restore(a.payload)) for a in mail.attachments)
    return replace(mail, attachments=restored)
