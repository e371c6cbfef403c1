"""relay_networks' verdict by peer address, kept per listener (``_in_relay_networks``).

A client that sends every message on a connection of its own asks the same question
for every message; the listener answers from what it worked out for that address
before.  The answers must be those of the networks, whatever was asked before, and
what is kept must stay bounded whatever the number of addresses."""

from __future__ import annotations

from spoolbox.ingress import ListenerConfig, SubmissionListener
from spoolbox.model import NewMessage


async def _refuse(message: NewMessage) -> object:  # never called: nothing is submitted
    raise AssertionError(message)


def listener(*networks: str) -> SubmissionListener:
    return SubmissionListener(
        _refuse, ListenerConfig(port=0, hostname="mx.test", relay_networks=networks)
    )


def test_the_verdicts_are_the_networks_and_stay_so_when_asked_again() -> None:
    lis = listener("10.0.0.0/8", "2001:db8::/32")
    peers = {
        ("10.1.2.3", 2525): True,
        ("192.0.2.7", 2525): False,
        ("::ffff:10.9.9.9", 2525, 0, 0): True,  # IPv4-mapped
        ("2001:db8::1", 2525, 0, 0): True,
        ("2001:db9::1", 2525, 0, 0): False,
        ("fe80::1%eth0", 2525, 0, 2): False,  # a scope id
        ("not an address", 1): False,
    }
    for _ in range(3):
        for peer, inside in peers.items():
            assert lis._in_relay_networks(peer) is inside, peer
    assert lis._in_relay_networks(None) is False  # a UNIX socket, say
    assert lis._in_relay_networks(()) is False


def test_what_is_kept_is_bounded() -> None:
    lis = listener("10.0.0.0/8")
    for i in range(10_000):
        host = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        assert lis._in_relay_networks((host, 25))
        assert not lis._in_relay_networks((f"192.{i // 65536}.{i // 256 % 256}.{i % 256}", 25))
        assert len(lis._verdicts) <= 4096
