"""Lease owners: parsing, and which owners a starting process may release (relay.core.leases)."""

from __future__ import annotations

import os

import pytest

from relay.core.leases import Owner, parse_owner, stale_owner
from relay.node import lease_owner, pid_alive

ME = Owner("mx1", 4242, "0a1b2c3d")
ALIVE = {4242, 77}  # pids on mx1 that exist


@pytest.mark.parametrize(
    ("owner", "parsed"),
    [
        ("mx1:4242:0a1b2c3d", Owner("mx1", 4242, "0a1b2c3d")),
        ("relay.example.com:1:ffffffff", Owner("relay.example.com", 1, "ffffffff")),
        ("odd:name:17:00000000", Owner("odd:name", 17, "00000000")),  # colons in the name
        ("relay.example.com", None),  # a lease from the version before: the host name alone
        ("mx1:4242", None),
        ("mx1:0:0a1b2c3d", None),  # pid 0 would signal our own process group
        ("mx1:-5:0a1b2c3d", None),
        ("mx1:x1:0a1b2c3d", None),
        ("mx1:4242:0A1B2C3D", None),  # the token is lower-case hex
        ("mx1:4242:0a1b2c", None),
        (":4242:0a1b2c3d", None),
        ("", None),
    ],
)
def test_owners_are_read_back(owner: str, parsed: Owner | None) -> None:
    assert parse_owner(owner) == parsed


@pytest.mark.parametrize(
    ("owner", "legacy", "stale"),
    [
        ("mx1:4242:0a1b2c3d", None, False),  # ourselves: our mail is in flight
        ("mx1:4242:99999999", None, True),  # our pid, another token: an earlier incarnation
        ("mx1:77:99999999", None, False),  # another live process here (a worker, a node)
        ("mx1:78:99999999", None, True),  # its pid is gone: it died
        ("mx2:78:99999999", None, False),  # another machine: cannot tell, the lease expires
        ("mx2:4242:99999999", None, False),  # our pid on another machine is someone else
        ("mx1", "mx1", True),  # the version before named its leases after server.hostname
        ("relay.test", "mx1", False),  # another node's old leases: they expire
        ("relay.test", None, False),
        ("mx1:0:99999999", None, False),  # not an owner we write: never released early
    ],
)
def test_which_owners_a_starting_process_releases(
    owner: str, legacy: str | None, stale: bool
) -> None:
    asked: list[int] = []

    def is_alive(pid: int) -> bool:
        asked.append(pid)
        return pid in ALIVE

    assert stale_owner(owner, ME, is_alive, legacy) is stale
    assert set(asked) <= {78, 77}  # only other pids on our machine are looked up


def test_this_process_has_an_owner_of_its_own() -> None:
    first, second = lease_owner(), lease_owner()
    assert first.pid == os.getpid() and first.token != second.token
    assert parse_owner(str(first)) == first
    assert len(str(first)) <= 128  # the column's width


def test_pids_are_asked_of_the_system() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # not ours to signal (PermissionError) unless root: alive either way
    assert not pid_alive(2**22 + 1)  # above Linux's pid_max
