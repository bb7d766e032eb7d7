"""Attachment files: safe names and content-addressed storage.

A file name comes from a stranger: it may hold path parts (`C:\\Users\\…`,
`../../etc/passwd`), control characters or megabytes of text. It is reduced
to a plain base name before it is stored or shown. File bodies live under
`<data_dir>/attachments/<sha256[:2]>/<sha256>`: the same file sent twice is
stored once, and writing it before the database commit is harmless, since
an unreferenced file is only a cache entry.

A file is written, synced and renamed into place before the row that
references it is committed.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

MAX_NAME_BYTES = 200


def safe_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A plain, bounded base name; never empty, never a path, never hidden."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(
        ch for ch in unicodedata.normalize("NFC", base)
        if unicodedata.category(ch)[0] != "C"
    )
    base = base.replace("..", ".").strip().lstrip(".").strip()
    if not base:
        extension = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
        base = f"allegato{extension}"
    if len(base.encode()) > MAX_NAME_BYTES:
        stem, dot, extension = base.rpartition(".")
        extension = extension if dot and len(extension.encode()) <= 16 else ""
        budget = MAX_NAME_BYTES - len(extension.encode()) - 1
        stem = (stem if dot else base).encode()[:budget].decode(errors="ignore")
        base = f"{stem}.{extension}" if extension else stem
    return base


def attachment_path(data_dir: Path, sha256: str) -> Path:
    return data_dir / "attachments" / sha256[:2] / sha256


def store_file(data_dir: Path, payload: bytes) -> str:
    """Write `payload` under its sha256, returned (once: the same file sent twice is
    kept once)."""
    digest = hashlib.sha256(payload).hexdigest()
    write_file(attachment_path(data_dir, digest), payload)
    return digest


def write_file(target: Path, payload: bytes) -> None:
    """Write atomically, and durably: the file, then its directory entry."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def free_path(directory: Path, name: str) -> Path:
    """`directory/name`, or `name (2)`, `name (3)`… when that is taken: an export
    never overwrites a file."""
    target = directory / name
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        stem, extension = name, ""
    counter = 2
    while target.exists():
        target = directory / (f"{stem} ({counter}).{extension}" if extension
                              else f"{stem} ({counter})")
        counter += 1
    return target


def export_file(data_dir: Path, sha256: str, directory: Path, name: str) -> Path:
    """Copy a kept file out under its original (safe) name; returns where it went."""
    source = attachment_path(data_dir, sha256)
    if not source.is_file():
        raise FileNotFoundError(f"the stored file {source} is missing")
    directory.mkdir(parents=True, exist_ok=True)
    target = free_path(directory, safe_filename(name))
    with source.open("rb") as reader, target.open("xb") as writer:
        shutil.copyfileobj(reader, writer)
    return target
