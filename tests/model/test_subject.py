"""subject_of: the Subject for listings, from a cheap scan of the header block."""

from __future__ import annotations

import pytest

from spoolbox.model.message import subject_of


@pytest.mark.parametrize(
    ("content", "subject"),
    [
        (b"From: a@b\r\nSubject: Hello  world\r\n\r\nbody", "Hello world"),
        (b"Subject: folded\r\n  over two lines\r\nTo: x\r\n\r\n", "folded over two lines"),
        (b"subject: lower case, bare LF\n\nSubject: in the body", "lower case, bare LF"),
        (b"Subject: =?utf-8?q?caf=C3=A9?= au lait\r\n\r\n", "caf\u00e9 au lait"),
        (b"Subject: =?utf-8?b?w6l0w6k=?=\r\n\r\n", "\u00e9t\u00e9"),
        (b"Subject: caf\xc3\xa9 raw UTF-8\r\n\r\n", "caf\u00e9 raw UTF-8"),
        (b"Subject: =?bogus\r\n\r\n", "=?bogus"),
        (b"To: x\r\n\r\nSubject: only in the body\r\n", ""),
        (b"Subject: " + b"x" * 300 + b"\r\n\r\n", "x" * 200),
        (b"", ""),
    ],
)
def test_subject_of(content: bytes, subject: str) -> None:
    assert subject_of(content) == subject
