"""Big base64 parts bypass the line-by-line MIME parser but come out identical."""

from __future__ import annotations

import hashlib

from mailgateway.pipeline.large_parts import LARGE, cut_large_parts
from mailgateway.pipeline.parse import parse_mail
from tests.mails import build_mail


def test_big_attachment_is_cut_and_restored() -> None:
    payload = hashlib.sha256(b"seed").digest() * 60_000  # ~1.9 MB of incompressible bytes
    raw = build_mail(attachments=[("dati.bin", payload, "application/octet-stream")])
    skeleton, cut = cut_large_parts(raw)
    assert cut is not None and len(skeleton) < LARGE
    [attachment] = parse_mail(raw).attachments
    assert attachment.payload == payload and attachment.filename == "dati.bin"


def test_big_base64_text_body_is_read_whole() -> None:
    body = "Riga di log con accenti: già, così, perché.\n" * 40_000
    raw = build_mail(body=body, cte="base64")
    assert cut_large_parts(raw)[1] is not None
    text = parse_mail(raw).text
    assert "mailgateway-large-part" not in text
    assert text.strip() == body.strip(), "text differs"  # no diff of 2 MB on failure


def test_small_mail_is_left_alone() -> None:
    raw = build_mail(attachments=[("a.pdf", b"%PDF-1.4", "application/pdf")])
    assert cut_large_parts(raw) == (raw, None)
