"""No input makes work grow faster than its size: each pathological shape is handled
(here: quarantined with the reason) in well under a second of processing."""

from __future__ import annotations

import time

import pytest

from mailgateway.pipeline.limits import exceeded_limit
from mailgateway.pipeline.parse import parse_mail
from mailgateway.service import Gateway
from mailgateway.views import list_inbox
from tests.mails import build_mail, register_desk

_HEAD = (b"From: anna@studiorossi.it\r\nTo: assistenza@example.com\r\nSubject: x\r\n"
         b"Message-ID: <m@client.test>\r\n")


def _shape(name: str) -> bytes:
    if name == "120,000 References":
        ids = b" ".join(b"<id%d@x.test>" % i for i in range(120_000))
        return _HEAD + b"References: " + ids + b"\r\n\r\nbody\r\n"
    if name == "a 1 MB header":
        return _HEAD + b"X-Big: " + b"\r\n ".join([b"a" * 70] * 14_000) + b"\r\n\r\nbody\r\n"
    if name == "a 1 MB subject of encoded words":
        return _HEAD.replace(b"Subject: x", b"Subject: " + b"=?utf-8?q?a?= " * 70_000) + (
            b"\r\nbody\r\n")
    if name == "20,000 header fields":
        return _HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"\r\nbody\r\n"
    if name == "100,000 recipients":
        to = b"To: " + b", ".join(b"u%d@x.test" % i for i in range(100_000))
        return _HEAD.replace(b"To: assistenza@example.com", to) + b"\r\nbody\r\n"
    if name == "50,000 parts":
        parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\np%d\r\n" % i
                         for i in range(50_000))
        return (_HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
                + b"\r\n" + parts + b"--b--\r\n")
    assert name == "5,000-deep nesting"
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                       for i in range(5_000))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(5_000)))
    return _HEAD + b"MIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nx" + (
        closing + b"\r\n")


SHAPES = ("120,000 References", "a 1 MB header", "a 1 MB subject of encoded words",
          "20,000 header fields", "100,000 recipients", "50,000 parts", "5,000-deep nesting")


@pytest.mark.parametrize("name", SHAPES)
def test_a_pathological_mail_is_quarantined_in_under_a_second(gateway: Gateway,
                                                               name: str) -> None:
    register_desk(gateway)
    raw = _shape(name)
    received = gateway.receive(raw, transport="pipe")
    started = time.process_time()
    status = gateway.process(received.inbox_id)
    assert time.process_time() - started < 1.0
    assert status == "quarantined"
    with gateway.sessions() as session:
        [row] = list_inbox(session)
    assert row["reason"].startswith("not read: ")
    assert row["sender"] == "anna@studiorossi.it"  # who sent it is still shown


def test_ordinary_mail_is_far_from_every_bound() -> None:
    raw = build_mail(cc=[f"collega{i}@studiorossi.it" for i in range(300)],
                     references=[f"r{i}@client.test" for i in range(500)],
                     attachments=[(f"f{i}.txt", b"x", "text/plain") for i in range(50)])
    assert exceeded_limit(raw) is None
    assert parse_mail(raw).over_limit is None


def test_a_forged_name_cannot_make_another_sender() -> None:
    """The sender is read from the header's structure: a name that decodes to a line
    break and a Bcc stays a name."""
    raw = (b"From: =?utf-8?q?Mario=0D=0ABcc:_evil@evil.test=0D=0A?= <rossi@studiorossi.it>\r\n"
           b"To: assistenza@example.com\r\nSubject: x\r\n\r\ncorpo\r\n")
    mail = parse_mail(raw)
    assert mail.from_addr == "rossi@studiorossi.it"
    assert "\r" not in mail.from_name and "\n" not in mail.from_name
    assert mail.cc == ()
