"""Hostile mail, generated from a seed: what an attacker or a broken mail program sends.

Each shape is a small function of a `random.Random`; `hostile_mails` draws from
them in turn, so a seed gives the same mails every run. Senders are mostly the
test desk's registered customer (so the listener takes the mail and the
pipeline has to cope with it), sometimes a stranger or the null sender.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator

from tests.mails import CUSTOMER, PERSON, build_mail

Shape = Callable[[random.Random], bytes]
_SUPPORT = "assistenza@example.com"


def _head(rng: random.Random, extra: bytes = b"") -> bytes:
    sender = rng.choice([CUSTOMER, PERSON, CUSTOMER, "ignoto@altrove.test"])
    return (b"From: " + sender.encode() + b"\r\nTo: " + _SUPPORT.encode()
            + b"\r\nSubject: prova " + str(rng.random()).encode()
            + b"\r\nMessage-ID: <" + str(rng.getrandbits(64)).encode() + b"@fuzz.test>\r\n"
            + extra)


def _garbage(rng: random.Random, size: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(size))


def _flip(rng: random.Random) -> bytes:
    raw = bytearray(build_mail(subject="Errore 98,20 su MOCO", html="<p>Ciao <b>mondo</b></p>",
                               attachments=[("log.txt", b"riga\n" * 50, "text/plain")]))
    for _ in range(rng.randint(1, 40)):
        raw[rng.randrange(len(raw))] = rng.getrandbits(8)
    return bytes(raw)


def _truncated(rng: random.Random) -> bytes:
    raw = build_mail(attachments=[("a.pdf", b"%PDF-" + _garbage(rng, 3000), "application/pdf")])
    return raw[:rng.randrange(20, len(raw))]


def _header_injection(rng: random.Random) -> bytes:
    forged = b"From: =?utf-8?q?Mario=0D=0ABcc:_evil@evil.test=0D=0A?= <"
    return _head(rng).replace(b"From: ", forged, 1).replace(b"\r\nTo:", b">\r\nTo:", 1) + (
        b"\r\ncorpo\r\n")


def _bad_charset(rng: random.Random) -> bytes:
    charset = rng.choice([b"x-unknown", b"utf-7", b"utf-16", b"\xff\xfe", b"iso-2022-jp",
                          b"gb2312", b"koi8-r"])
    body = _garbage(rng, rng.randint(10, 2000))
    return (_head(rng, b"Subject: =?" + charset + b"?b?" + base64.b64encode(body[:30])
                  + b"?=\r\nContent-Type: text/plain; charset=" + charset
                  + b"\r\nContent-Transfer-Encoding: 8bit\r\n") + b"\r\n" + body)


def _broken_mime(rng: random.Random) -> bytes:
    boundary = rng.choice([b"x", b"", b"\"", b"a" * 300, b"=_bound"])
    parts = b"".join(b"--" + rng.choice([boundary, b"other"]) + b"\r\nContent-Type: "
                     + rng.choice([b"text/plain", b"text/html", b"multipart/mixed",
                                   b"message/rfc822", b"application/octet-stream"])
                     + b"\r\nContent-Transfer-Encoding: "
                     + rng.choice([b"base64", b"quoted-printable", b"x-uuencode", b"7bit"])
                     + b"\r\n\r\n" + _garbage(rng, rng.randint(0, 500)) + b"\r\n"
                     for _ in range(rng.randint(0, 30)))
    closing = b"--" + boundary + b"--\r\n" if rng.random() < 0.5 else b""
    return (_head(rng, b"MIME-Version: 1.0\r\nContent-Type: multipart/"
                  + rng.choice([b"mixed", b"alternative", b"related", b"signed"])
                  + b"; boundary=\"" + boundary + b"\"\r\n") + b"\r\n" + parts + closing)


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([50, 300, 1200])
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return (_head(rng, b"MIME-Version: 1.0\r\n") + opening
            + b"Content-Type: text/plain\r\n\r\nfondo" + closing + b"\r\n")


def _many_parts(rng: random.Random) -> bytes:
    count = rng.choice([200, 2000, 6000])
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\np%d\r\n" % i for i in range(count))
    return (_head(rng, b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n')
            + b"\r\n" + parts + b"--b--\r\n")


def _huge_headers(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        extra = b"References: " + b" ".join(b"<r%d@x.test>" % i for i in range(
            rng.choice([1000, 5000, 20000]))) + b"\r\n"
    elif kind == 1:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(rng.choice([500, 3000])))
    elif kind == 2:
        extra = b"Subject: " + b"=?utf-8?q?a?= " * rng.choice([1000, 20000]) + b"\r\n"
    else:
        extra = b"Cc: " + b", ".join(b"u%d@x.test" % i for i in range(
            rng.choice([100, 3000, 12000]))) + b"\r\n"
    return _head(rng, extra) + b"\r\ncorpo\r\n"


def _hostile_names(rng: random.Random) -> bytes:
    name = rng.choice(["../../etc/passwd", "C:\\Windows\\system32\\x.exe", "\x00\x01.txt",
                       ".hidden", "a" * 5000, "=?utf-8?q?=0D=0A?=.txt", "con.txt", ""])
    return build_mail(subject="R: [Ticket#2026-000001] allegato",
                      attachments=[(name, _garbage(rng, 100), "application/octet-stream")])


def _long_lines(rng: random.Random) -> bytes:
    return _head(rng) + b"\r\n" + b"x" * rng.choice([900, 10_000, 60_000]) + b"\r\n"


def _nul_and_bare_cr(rng: random.Random) -> bytes:
    return _head(rng).replace(b"\r\n", rng.choice([b"\r", b"\n", b"\r\r\n", b"\x00\r\n"])) + (
        b"\r\n\x00\x00corpo\rcon\x00nul\r\n")


SHAPES: tuple[Shape, ...] = (
    _flip, _truncated, _header_injection, _bad_charset, _broken_mime, _deep, _many_parts,
    _huge_headers, _hostile_names, _long_lines, _nul_and_bare_cr,
)


def hostile_mails(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for index in range(count):
        yield SHAPES[index % len(SHAPES)](rng)
