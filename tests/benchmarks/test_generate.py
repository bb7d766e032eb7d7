"""The benchmark corpus generator: deterministic, well-formed, threaded, accented.

The benchmarks compare runs and contenders on "the same corpus"; that only holds if the
generator gives the same bytes for the same seed, every mail parses, and replies point at
mail that came before them. None of this measures speed.
"""

from __future__ import annotations

import csv
import email
import email.policy
import re
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from benchmarks.django_helpdesk import peer_tag
from benchmarks.generate import (
    Corpus,
    generate_accounts,
    generate_corpus,
    generate_mails,
    large_attachment_reply,
    write_accounts_csv,
    write_directory,
    write_maildir,
)

N = 300


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate_corpus(N, seed=7, year=2026)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def without_subject(message: EmailMessage) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in message.items() if name != "Subject"]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def test_same_seed_gives_the_same_bytes() -> None:
    assert generate_mails(60, seed=3) == generate_mails(60, seed=3)


def test_another_seed_gives_other_mail() -> None:
    assert generate_mails(20, seed=1) != generate_mails(20, seed=2)


def test_a_longer_corpus_extends_a_shorter_one() -> None:
    # The runner imports the first n mails and pipes the following ones one by one.
    assert generate_mails(80, seed=5)[:50] == generate_mails(50, seed=5)


def test_every_mail_parses_with_the_expected_headers(corpus: Corpus) -> None:
    assert len(corpus.mails) == N
    for mail in corpus.mails:
        legacy: Message = email.message_from_bytes(mail.raw)
        assert not legacy.defects, mail.message_id
        for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
            assert legacy[header], (header, mail.message_id)
        message = parse(mail.raw)
        assert message["Message-ID"].strip() == mail.message_id
        assert message["To"].addresses[0].addr_spec == "assistenza@example.com"
        assert message["From"].addresses[0].addr_spec == mail.sender
        assert str(message["Subject"]) == mail.subject
        assert text_of(message).strip()


def test_message_ids_are_unique(corpus: Corpus) -> None:
    ids = [mail.message_id for mail in corpus.mails]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", mid) for mid in ids)


def test_the_corpus_mixes_requests_and_both_kinds_of_reply(corpus: Corpus) -> None:
    assert corpus.mails[0].kind == "new"
    assert corpus.new_requests + corpus.replies == N
    threading = [mail.threading for mail in corpus.mails if mail.kind == "reply"]
    assert threading.count("headers") > threading.count("tag") > 0


def test_header_replies_reference_earlier_mail_of_their_thread(corpus: Corpus) -> None:
    seen: dict[str, int] = {}
    for mail in corpus.mails:
        if mail.threading == "headers":
            message = parse(mail.raw)
            parent = message["In-Reply-To"].strip()
            references = str(message["References"]).split()
            assert parent == mail.parent
            assert references[-1] == parent
            for referenced in references:
                assert seen.get(referenced) == mail.ticket, referenced
            assert not re.search(r"\[Ticket#", mail.subject)
            assert re.match(r"(Re|R|RIF): ", mail.subject)
        seen[mail.message_id] = mail.ticket


def test_tag_replies_carry_the_ticket_number_the_gateway_will_assign(corpus: Corpus) -> None:
    opened = 0
    for mail in corpus.mails:
        if mail.kind == "new":
            opened += 1
            assert mail.ticket == opened
        elif mail.threading == "tag":
            message = parse(mail.raw)
            assert message["In-Reply-To"] is None and message["References"] is None
            tag = re.search(r"\[Ticket#(\d{4})-(\d{6})\]", mail.subject)
            assert tag is not None
            assert (int(tag.group(1)), int(tag.group(2))) == (2026, mail.ticket)
            assert mail.ticket <= opened


def test_a_peer_tag_changes_only_the_tags(corpus: Corpus) -> None:
    # Tags appear in tag-threaded subjects and in quoted history below later replies.
    peer = generate_corpus(N, seed=7, year=2026, tag=peer_tag)
    ours_tag = re.compile(r"\[Ticket#2026-0*(\d+)\]")
    theirs_tag = re.compile(r"\[bench-(\d+)\]")
    for ours, theirs in zip(corpus.mails, peer.mails, strict=True):
        assert (ours.threading, ours.ticket) == (theirs.threading, theirs.ticket)
        if ours.threading == "tag":
            assert f"[bench-{ours.ticket}]" in theirs.subject
        assert normalized(ours.raw, ours_tag) == normalized(theirs.raw, theirs_tag)


def normalized(raw: bytes, tag: re.Pattern[str]) -> list[str]:
    """Headers and decoded parts of a mail, with its ticket tags made neutral."""
    message = parse(raw)
    out = [f"{name}: {value}" for name, value in message.items()]
    for part in message.walk():
        if not part.is_multipart():
            content = part.get_content()
            out.append(content if isinstance(content, str) else content.hex())
    return [tag.sub(r"[TAG \1]", item) for item in out]


def test_accents_survive_every_transfer_encoding(corpus: Corpus) -> None:
    encodings = set()
    accented = 0
    for mail in corpus.mails:
        message = parse(mail.raw)
        for part in message.walk():
            if part.get_content_maintype() == "text":
                encodings.add(part.get("Content-Transfer-Encoding"))
        text = text_of(message)
        if re.search("[àèéìòù]", text + mail.subject):
            accented += 1
            assert "Ã" not in text  # no UTF-8 read back as Latin-1
    assert {"quoted-printable", "base64", "8bit"} <= encodings
    assert accented > N // 2
    assert any("è" in str(parse(m.raw)["Subject"]) or "à" in m.subject for m in corpus.mails)


def test_html_alternatives_and_attachments_are_present(corpus: Corpus) -> None:
    html = sum(1 for mail in corpus.mails if parse(mail.raw).get_body(preferencelist=("html",)))
    assert html > N // 4
    names = {name for mail in corpus.mails for name in mail.attachments}
    assert any(name.startswith("C:\\Users\\") for name in names)
    assert any(name.endswith(".pdf") for name in names)
    for mail in corpus.mails:
        legacy = email.message_from_bytes(mail.raw)
        files = [part for part in legacy.walk() if part.get_filename()]
        assert sorted(str(part.get_filename()) for part in files) == sorted(mail.attachments)
        for part in files:
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            if part.get_content_type() == "image/png":
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
            else:
                assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")


def test_windows_path_is_sent_raw_like_outlook_does(corpus: Corpus) -> None:
    raw = next(m.raw for m in corpus.mails if any("\\" in a for a in m.attachments))
    assert re.search(rb'filename="C:\\Users\\[a-z]+\\Desktop\\errore\.png"', raw)


def test_every_sender_is_a_registered_account(corpus: Corpus, tmp_path: Path) -> None:
    path = write_accounts_csv(corpus.accounts, tmp_path / "accounts.csv")
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["name", "email", "vat", "language"]
    registered = {row["email"] for row in rows}
    assert {mail.sender for mail in corpus.mails} <= registered
    assert len(registered) == len(rows)
    for row in rows:
        assert re.fullmatch(r"\d{11}", row["vat"])
        assert row["language"] in {"it", "en"}
    assert any(re.search("[àèéìòù]", row["name"]) for row in rows)
    assert generate_accounts(7) == corpus.accounts


def test_files_are_named_in_arrival_order(corpus: Corpus, tmp_path: Path) -> None:
    raws = corpus.raw[:25]
    files = write_directory(raws, tmp_path / "dir")
    assert [f.read_bytes() for f in sorted((tmp_path / "dir").iterdir())] == raws
    assert files == sorted(files)
    maildir = write_maildir(raws, tmp_path / "maildir")
    assert {p.name for p in maildir.iterdir()} == {"cur", "new", "tmp"}
    assert [f.read_bytes() for f in sorted((maildir / "new").iterdir())] == raws


def test_large_attachment_reply_threads_on_the_first_request(corpus: Corpus) -> None:
    raw = large_attachment_reply(corpus, 300_000, seed=7)
    message = parse(raw)
    assert message["In-Reply-To"] == corpus.mails[0].message_id
    (attachment,) = list(message.iter_attachments())
    assert len(attachment.get_content()) == 300_000
    assert raw == large_attachment_reply(corpus, 300_000, seed=7)
