"""Reading archives: a Maildir is read as `mailbox.Maildir` reads it, directories and
files as they are, and an mbox message by message."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest

from mailgateway.errors import UserError
from mailgateway.ingest.pipe import iter_archive


def _mail(n: int) -> bytes:
    return f"From: a{n}@example.it\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode()


def test_maildir_is_read_as_the_mailbox_module_reads_it(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "box")
    for n in range(6):
        message = mailbox.MaildirMessage(_mail(n))
        if n % 2:  # seen mails live in cur/ with flags after the key
            message.set_subdir("cur")
            message.set_flags("S")
        box.add(message)
    (tmp_path / "box" / "new" / ".hidden").write_bytes(b"not a mail")
    (tmp_path / "box" / "cur" / "subfolder").mkdir()
    (tmp_path / "box" / "tmp" / "1.partial").write_bytes(b"still being delivered")
    assert any(":2,S" in p.name for p in (tmp_path / "box" / "cur").iterdir())

    # The Maildir convention the mailbox module ignores: a dot file is not a mail.
    expected = [(key, box.get_bytes(key)) for key in sorted(box.keys()) if key != ".hidden"]
    assert list(iter_archive(str(tmp_path / "box"))) == expected
    assert len(expected) == 6


def test_directory_tree_and_single_file(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "1.eml").write_bytes(_mail(1))
    (tmp_path / "a" / "b" / "2.eml").write_bytes(_mail(2))
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    assert list(iter_archive(str(tmp_path / "a"))) == [("1.eml", _mail(1)),
                                                       ("b/2.eml", _mail(2))]
    assert list(iter_archive(str(tmp_path / "a" / "1.eml"))) == [("1.eml", _mail(1))]
    with pytest.raises(UserError):
        list(iter_archive(str(tmp_path / "missing")))


def test_mbox_message_by_message(tmp_path: Path) -> None:
    path = tmp_path / "archive.mbox"
    path.write_bytes(b"".join(b"From sender Mon Jan  1 00:00:00 2024\n" + _mail(n) + b"\n"
                              for n in range(3)))
    names = [name for name, _ in iter_archive(str(path))]
    assert names == ["archive.mbox#1", "archive.mbox#2", "archive.mbox#3"]
