"""The pipe transport and bulk import: files, stdin, Maildir, mbox, directories.

`mailgateway ingest` is what an MTA alias or a cron job calls: exit 0 means
stored (the MTA may forget the mail), 75 (EX_TEMPFAIL) means try again.
`import` walks a whole archive, processing as it goes.
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Iterator
from pathlib import Path

from mailgateway.errors import UserError

EX_TEMPFAIL = 75


def read_message(source: str) -> bytes:
    """The raw bytes of one message from a file path or `-` (stdin)."""
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise UserError(f"File {source} does not exist.")
    return path.read_bytes()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(5) == b"From "


def iter_archive(source: str) -> Iterator[tuple[str, bytes]]:
    """(name, raw bytes) for every message of a Maildir, an mbox, a file or a directory tree.

    Messages come one at a time, so an archive larger than memory can be imported.
    """
    path = Path(source)
    if not path.exists():
        raise UserError(f"{source} does not exist.")
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        box = mailbox.Maildir(path, factory=None, create=False)
        # A dot file in new/ or cur/ is no mail by the Maildir convention; mailbox lists it.
        for key in sorted(key for key in box.iterkeys() if not key.startswith(".")):
            with box.get_file(key) as stream:
                yield key, stream.read()
    elif path.is_file() and _is_mbox(path):
        box_m = mailbox.mbox(path, factory=None, create=False)
        try:
            for index, key in enumerate(box_m.iterkeys()):
                yield f"{path.name}#{index + 1}", box_m.get_bytes(key)
        finally:
            box_m.close()
    elif path.is_file():
        yield path.name, path.read_bytes()
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if file.name.startswith("."):
                continue
            yield str(file.relative_to(path)), file.read_bytes()
