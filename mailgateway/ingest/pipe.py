"""The pipe transport and bulk import: files, stdin, Maildir, mbox, directories.

`mailgateway ingest` is what an MTA alias or a cron job calls: exit 0 means
stored (the MTA may forget the mail), 75 (EX_TEMPFAIL) means try again.
`import` walks a whole archive, processing as it goes.
"""

from __future__ import annotations

import mailbox
import os
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
        for key, name in _maildir_files(path):
            yield key, read_file(name)
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
            yield str(file.relative_to(path)), read_file(str(file))


def _maildir_files(path: Path) -> list[tuple[str, str]]:
    """(key, file) for the mails of a Maildir's `new` and `cur`, in the order of their
    keys, as `mailbox.Maildir` names them (the file name up to its `:2,` flags).

    Listed here rather than through `mailbox.Maildir`, which stats, seeks and asks
    whether each file is a terminal: 16 system calls a mail where 4 will do, in the
    process that also writes the database.
    """
    found = []
    for sub in ("new", "cur"):
        with os.scandir(path / sub) as entries:
            found += [(entry.name.split(":")[0], entry.path) for entry in entries
                      if not entry.name.startswith(".") and entry.is_file()]
    return sorted(found)


def read_file(file: str) -> bytes:
    """A file's bytes, with as few system calls as there can be: open, read, close."""
    descriptor = os.open(file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        chunks = []
        while chunk := os.read(descriptor, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)
