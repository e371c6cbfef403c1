"""my_hostname: the FQDN, else the host name, never "localhost" where a real name exists."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from spoolbox.model.hostname import my_hostname


def fixed(answer: str | Exception) -> Callable[[], str]:
    def lookup() -> str:
        if isinstance(answer, Exception):
            raise answer
        return answer

    return lookup


@pytest.mark.parametrize(
    ("fqdn", "hostname", "expected"),
    [
        ("mx.example.org", "mx", "mx.example.org"),
        ("mx.example.org.", "mx", "mx.example.org"),  # a root dot is not part of the name
        ("localhost", "mx", "mx"),
        ("localhost.localdomain", "mx", "mx"),
        ("LOCALHOST6.localdomain6", "mx", "mx"),
        ("", "mx", "mx"),
        (OSError("no resolver"), "mx", "mx"),
        ("localhost", "localhost", "localhost"),
        ("localhost", "", "localhost"),
        ("localhost", OSError("no name"), "localhost"),
        ("localhostel.example.org", "x", "localhostel.example.org"),  # a prefix only
    ],
)
def test_my_hostname(fqdn: str | Exception, hostname: str | Exception, expected: str) -> None:
    assert my_hostname(fixed(fqdn), fixed(hostname)) == expected


def test_my_hostname_asks_this_host_by_default() -> None:
    assert my_hostname()  # a name, whatever this machine is called
