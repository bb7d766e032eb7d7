"""parse_mail: every corpus mail parses, charsets decode, HTML becomes text, nothing raises."""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path
from typing import Any

import mailparser
import pytest
import yaml

from mailgateway.pipeline.decode import decode_bytes, html_to_text
from mailgateway.pipeline.parse import ParsedMail, parse_mail
from tests.corpus import corpus_dir, corpus_file, corpus_mails

needs_corpus = pytest.mark.skipif(not corpus_mails(), reason="shared corpus not present")


@cache
def parsed(path: Path) -> ParsedMail:
    return parse_mail(path.read_bytes())


def mail(headers: str, body: bytes) -> bytes:
    """A small mail from header text and raw body bytes."""
    head = "From: Mario Rossi <Mario.Rossi@StudioRossi.it>\nTo: assistenza@example.com\n"
    return (head + headers.strip() + "\n\n").encode() + body


# --- the whole corpus -------------------------------------------------------------------


@needs_corpus
def test_every_corpus_mail_parses_without_raising() -> None:
    results = [parsed(path) for path in corpus_mails()]
    assert len(results) > 900
    for result in results:
        assert isinstance(result.subject, str)
        assert isinstance(result.from_addr, str)
        assert result.from_addr == result.from_addr.lower()
        assert result.date is None or result.date.tzinfo is not None
    with_text = sum(1 for r in results if r.text.strip())
    assert with_text / len(results) >= 0.9, f"{with_text}/{len(results)} mails have text"


@needs_corpus
def test_known_trouble_makers_parse() -> None:
    """The files INDEX.md names: stdlib policy.default or mail-parser fail on them."""
    test12 = parsed(corpus_file("otobo/scripts/test/sample/PostMaster/PostMaster-Test12.box"))
    assert test12.subject == "test äöüß"
    assert "Обяснительная.jpg" in [a.filename for a in test12.attachments]
    gb = parsed(corpus_file("zammad/test/data/mail/mail060.box"))
    assert "差出人" in gb.text and "äöü" in gb.text
    assert any("iso-gb2312" in d for d in gb.defects)
    sendgrid_file = corpus_file("sisimai/set-of-emails/maildir/bsd/lhost-sendgrid-01.eml")
    with pytest.raises(AttributeError):  # mail-parser's own walk of the parts fails on it
        mailparser.parse_from_bytes(sendgrid_file.read_bytes())
    sendgrid = parsed(sendgrid_file)
    assert sendgrid.from_addr and sendgrid.text


@needs_corpus
def test_discourse_mail_starting_with_a_blank_line_keeps_its_headers() -> None:
    result = parsed(corpus_file("discourse/spec/fixtures/emails/inline_reply.eml"))
    assert result.from_addr
    assert result.in_reply_to and result.references
    assert "blank lines before the headers removed" in result.defects


@needs_corpus
def test_broken_header_block_is_repaired() -> None:
    """Unindented continuation lines in Received must not push Subject into the body."""
    result = parsed(corpus_file("zammad/test/data/mail/mail054.box"))
    assert result.subject == "AW: One Net Business"
    assert result.from_addr == "karoline.smith@example.com"


@needs_corpus
def test_uuencoded_attachment() -> None:
    name = "zammad/test/data/mail/mail078-content_transfer_encoding_x_uuencode.box"
    result = parsed(corpus_file(name))
    assert [a.filename for a in result.attachments] == ["PGP_Cmts_on_12-14-01_Pkg.txt"]
    assert result.attachments[0].payload


@needs_corpus
def test_nested_message_is_an_attachment_named_after_its_subject() -> None:
    result = parsed(corpus_file("cpython-test_email/Lib/test/test_email/data/msg_11.txt"))
    assert [a.filename for a in result.attachments] == ["An enclosed message.eml"]
    assert result.attachments[0].content_type == "message/rfc822"
    assert b"Subject: An enclosed message" in result.attachments[0].payload


def test_corpus_root_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.eml").write_bytes(b"Subject: x\n\ny\n")
    (tmp_path / "src" / "SOURCE.txt").write_text("about")
    monkeypatch.setenv("MAILGATEWAY_CORPUS", str(tmp_path))
    assert corpus_dir() == tmp_path
    assert corpus_mails() == [tmp_path / "src" / "a.eml"]


# --- zammad's expected results ------------------------------------------------------------


class _RubyTolerantLoader(yaml.SafeLoader):
    """Zammad's YAML carries Ruby class tags; read them as plain maps, lists and strings."""


def _construct_any(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_RubyTolerantLoader.add_multi_constructor("!", _construct_any)


def _squash(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


@needs_corpus
def test_zammad_expected_from_subject_and_attachments() -> None:
    folder = corpus_dir() / "zammad/test/data/mail"
    hits = {"from": 0, "subject": 0, "attachments": 0}
    expectations = sorted(folder.glob("*.yml"))
    for expected_file in expectations:
        expected = yaml.load(expected_file.read_text(), Loader=_RubyTolerantLoader)
        result = parsed(expected_file.with_suffix(".box"))
        hits["from"] += result.from_addr == (expected.get("from_email") or "").lower()
        hits["subject"] += _squash(result.subject) == _squash(expected.get("subject"))
        files = [
            a
            for a in expected.get("attachments") or []
            if not (a.get("preferences") or {}).get("content-alternative")
        ]
        hits["attachments"] += len(files) == len(result.attachments)
    rates = {key: value / len(expectations) for key, value in hits.items()}
    print(f"zammad match over {len(expectations)} mails: {rates}")
    assert len(expectations) == 106
    assert all(rate >= 0.95 for rate in rates.values()), rates


# --- charsets and encodings ---------------------------------------------------------------


def test_italian_quoted_printable_keeps_accents() -> None:
    raw = mail(
        "Subject: =?utf-8?q?Stampa_bloccata_=C3=A8_urgente?=\n"
        "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable",
        b"La stampa =C3=A8 bloccata, gi=C3=A0 provato pi=C3=B9 volte.\n",
    )
    result = parse_mail(raw)
    assert result.subject == "Stampa bloccata è urgente"
    assert result.text == "La stampa è bloccata, già provato più volte."
    assert result.defects == ()


def test_latin1_quoted_printable_keeps_accents() -> None:
    raw = mail(
        "Subject: =?iso-8859-1?q?Fattura_gi=E0_pagata?=\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable",
        b"Perch=E8 non =E8 arrivata? Pi=F9 tardi richiamo.",
    )
    result = parse_mail(raw)
    assert result.subject == "Fattura già pagata"
    assert "Perchè non è arrivata? Più tardi" in result.text


def test_base64_utf8_body() -> None:
    body = base64.encodebytes("Non riesco ad aprire l'archivio: è già in uso.".encode())
    raw = mail("Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: base64", body)
    assert parse_mail(raw).text == "Non riesco ad aprire l'archivio: è già in uso."


def test_8bit_latin1_body_with_declared_charset() -> None:
    raw = mail(
        "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: 8bit",
        "Città: Forlì, perché è così?".encode("latin-1"),
    )
    result = parse_mail(raw)
    assert result.text == "Città: Forlì, perché è così?"
    assert result.defects == ()


@pytest.mark.parametrize(
    ("data", "expected", "read_as"),
    [
        ("è già".encode(), "è già", "utf-8"),
        ("è già".encode("cp1252"), "è già", "cp1252"),
    ],
)
def test_unknown_charset_falls_back_and_says_so(data: bytes, expected: str, read_as: str) -> None:
    raw = mail("Content-Type: text/plain; charset=X-UNKNOWN", data)
    result = parse_mail(raw)
    assert result.text == expected
    assert any("unknown charset 'x-unknown'" in d.lower() and read_as in d for d in result.defects)


@pytest.mark.parametrize(
    ("label", "data", "expected"),
    [
        ("gb2312", "差出人 €".encode("gb18030"), "差出人 €"),
        ("iso-gb2312", "整体提升".encode("gb18030"), "整体提升"),
        ("ks_c_5601-1987", "보도자료".encode("cp949"), "보도자료"),
        ("unicode-1-1-utf-7", "Grüße".encode("utf-7"), "Grüße"),
        ("windows-1258", "Đà Nẵng".encode("cp1258", "ignore"), "Đà Nng"),
        ("iso-8859-1", "“Preventivo” – 10 €".encode("cp1252"), "“Preventivo” – 10 €"),
        ("us-ascii", "perché".encode(), "perché"),
    ],
)
def test_charset_aliases(label: str, data: bytes, expected: str) -> None:
    assert decode_bytes(data, label)[0] == expected


def test_mislabelled_shift_jis_in_encoded_word() -> None:
    raw = mail("Subject: =?ISO-2022-JP?B?g2OBW4OL?=", b"x")
    assert parse_mail(raw).subject == "ツール"


def test_raw_8bit_headers_are_decoded() -> None:
    raw = (
        "From: Nicolò Bianchi <nicolo@example.it>\nSubject: Però non va\n"
        "Content-Type: text/plain; charset=utf-8\n\nciao\n"
    ).encode()
    result = parse_mail(raw)
    assert result.subject == "Però non va"
    assert result.from_name == "Nicolò Bianchi"


# --- HTML ---------------------------------------------------------------------------------


def test_html_only_mail_becomes_text_without_tags() -> None:
    html = (
        "<html><head><style>p {color: red}</style></head><body>"
        "<p>Buongiorno,<br>il programma d&agrave; <b>errore 3,14</b>.</p>"
        "<ol><li>apro MOCO</li><li>stampo</li></ol>"
        "<p>1. Percorso C:\\Users\\mario\\Documenti</p>"
        '<p><a href="https://example.it/log">il log</a> &mdash; Mario</p>'
        "<blockquote>testo citato</blockquote></body></html>"
    )
    raw = mail("Content-Type: text/html; charset=utf-8", html.encode())
    result = parse_mail(raw)
    assert result.html is not None and "<b>" in result.html
    assert not re.search(r"<[a-z/][^>]*>", result.text)
    assert "il programma dà errore 3,14." in result.text
    assert "1. Percorso C:\\Users\\mario\\Documenti" in result.text
    assert "https://example.it/log" in result.text
    assert "> testo citato" in result.text
    assert "color: red" not in result.text


def test_plain_part_wins_over_html() -> None:
    raw = mail(
        'Content-Type: multipart/alternative; boundary="b"',
        b"--b\nContent-Type: text/plain; charset=utf-8\n\nversione testo\n"
        b"--b\nContent-Type: text/html; charset=utf-8\n\n<p>versione html</p>\n--b--\n",
    )
    result = parse_mail(raw)
    assert result.text == "versione testo"
    assert result.html == "<p>versione html</p>"


def test_html_to_text_collapses_blank_runs() -> None:
    assert html_to_text("<p>a</p><p>&nbsp;</p><p>&nbsp;</p><p>b</p>") == "a\n\nb"


# --- headers, addresses, attachments ------------------------------------------------------


def test_headers_ids_and_addresses() -> None:
    raw = mail(
        "Cc: Anna <Anna@Example.IT>, luca@example.it\n"
        "Reply-To: segreteria@studiorossi.it\n"
        "Message-ID: <abc.123@studiorossi.it>\n"
        "In-Reply-To: <mg.7.x@example.com>\n"
        "References: <first@a.it>\n <mg.7.x@example.com>\n"
        "Date: Tue, 02 Apr 2024 10:15:00 +0200\n"
        "Subject: Re: [Ticket#1042]\n   problema\n"
        "X-Priority: 1\nX-Priority: 2\n"
        "Content-Type: text/plain",
        b"ok",
    )
    result = parse_mail(raw)
    assert result.message_id == "abc.123@studiorossi.it"
    assert result.in_reply_to == ("mg.7.x@example.com",)
    assert result.references == ("first@a.it", "mg.7.x@example.com")
    assert result.subject == "Re: [Ticket#1042] problema"
    assert (result.from_addr, result.from_name) == ("mario.rossi@studiorossi.it", "Mario Rossi")
    assert result.to == ("assistenza@example.com",)
    assert result.cc == ("anna@example.it", "luca@example.it")
    assert result.reply_to == ("segreteria@studiorossi.it",)
    assert result.date is not None and result.date.utcoffset() is not None
    assert result.date.isoformat() == "2024-04-02T08:15:00+00:00"
    assert result.header("x-priority") == "1"
    assert result.header_all("X-PRIORITY") == ("1", "2")
    assert result.header("X-Missing") is None


def test_an_address_like_display_name_never_becomes_the_sender() -> None:
    spoof = "From: alice@example.com <bob@example.com>\nTo: assistenza@example.com\n\nx"
    result = parse_mail(spoof.encode())
    assert (result.from_addr, result.from_name) == ("bob@example.com", "alice@example.com")


def test_missing_message_id_is_none() -> None:
    assert parse_mail(mail("Message-ID:   ", b"x")).message_id is None
    assert parse_mail(mail("Subject: x", b"x")).message_id is None


def test_attachments_names_and_inline_flag() -> None:
    raw = mail(
        'Content-Type: multipart/mixed; boundary="b"',
        b"--b\nContent-Type: text/plain; charset=utf-8\n\nin allegato\n"
        b"--b\nContent-Type: application/pdf\n"
        b"Content-Disposition: attachment; filename*=utf-8''fattura%20n%C2%B01.pdf\n"
        b"Content-Transfer-Encoding: base64\n\nJVBERi0=\n"
        b'--b\nContent-Type: image/png; name="=?utf-8?q?logo_=C3=A8.png?="\n'
        b"Content-ID: <logo@x>\nContent-Transfer-Encoding: base64\n\niVBORw==\n"
        b"--b\nContent-Type: application/octet-stream\n\nraw\n--b--\n",
    )
    result = parse_mail(raw)
    assert result.text == "in allegato"
    names = [(a.filename, a.content_type, a.inline) for a in result.attachments]
    assert names == [
        ("fattura n°1.pdf", "application/pdf", False),
        ("logo è.png", "image/png", True),
        ("", "application/octet-stream", False),
    ]
    assert result.attachments[0].payload == b"%PDF-"


def test_forwarded_message_is_not_part_of_the_text() -> None:
    raw = mail(
        'Content-Type: multipart/mixed; boundary="b"',
        b"--b\nContent-Type: text/plain\n\nvedi sotto\n"
        b"--b\nContent-Type: message/rfc822\n\nSubject: Ordine 12\nFrom: a@b.it\n\n"
        b"testo inoltrato\n--b--\n",
    )
    result = parse_mail(raw)
    assert result.text == "vedi sotto"
    assert [a.filename for a in result.attachments] == ["Ordine 12.eml"]
    assert b"testo inoltrato" in result.attachments[0].payload


def test_wrong_boundary_is_recovered() -> None:
    raw = mail(
        'Content-Type: multipart/mixed; boundary="declared"',
        b"--used\nContent-Type: text/plain\n\nparte uno\n--used--\n",
    )
    result = parse_mail(raw)
    assert result.text == "parte uno"
    assert any("boundary" in d for d in result.defects)


# --- never raise --------------------------------------------------------------------------


def _deeply_nested(depth: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    return opening + b"Content-Type: text/plain\n\nfondo\n"


_HOSTILE = {
    "empty": b"",
    "blank lines": b"\n\n\n",
    "binary": b"\x00\xff\xfe" * 200,
    "no headers": b"not a mail at all",
    "headers only": b"Subject: only headers",
    "multipart without boundary": b"From: <>\nContent-Type: multipart/mixed\n\nno boundary",
    "8-bit charset name": b'Content-Type: text/plain; charset="\xff"\n\n\xff\xfe',
    "broken encoded words": b"Subject: =?utf-8?b?####?=\nFrom: =?x?q?y?=\n\nx",
    "deep nesting": _deeply_nested(3000),
}


@pytest.mark.parametrize("raw", list(_HOSTILE.values()), ids=list(_HOSTILE))
def test_never_raises(raw: bytes) -> None:
    result = parse_mail(raw)
    assert isinstance(result, ParsedMail)
    assert isinstance(result.text, str)
