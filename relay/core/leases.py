"""Lease owners: the name a process claims messages under, and which owners are gone.

An owner is ``machine:pid:token``: the machine's host name, the process id,
and 8 random hex characters made when the process starts. So two processes
never share an owner, even with one config file or one pid (a container
restarted as pid 1). At start a process may release the leases of an owner
only when it can tell that owner is gone: on its own machine, with a pid that
is not alive or is its own (an earlier incarnation; this one's owner has a new
token), never its own. An owner on another machine cannot be checked from here: its leases
expire after ``delivery.lease_seconds``. An owner without pid and token is a
lease written by a version before this one, named after the configured
``server.hostname``: it is released by the node that has that name, as that
version did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TOKEN_HEX = 8  # characters of the random part


@dataclass(frozen=True)
class Owner:
    machine: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.machine}:{self.pid}:{self.token}"


def parse_owner(owner: str) -> Owner | None:
    """``machine:pid:token`` read back (the machine name may hold colons); else None."""
    machine, _, rest = owner.rpartition(":")
    machine, _, pid = machine.rpartition(":")
    token = rest
    if not machine or not pid.isascii() or not pid.isdigit() or int(pid) <= 0:
        return None
    if len(token) != TOKEN_HEX or any(c not in "0123456789abcdef" for c in token):
        return None
    return Owner(machine, int(pid), token)


def stale_owner(
    owner: str, me: Owner, is_alive: Callable[[int], bool], legacy: str | None = None
) -> bool:
    """Whether ``owner``'s leases may be released now by the process ``me``.

    Never our own (this incarnation's mail is in flight); ``is_alive`` is asked
    only about other pids on our machine; ``legacy`` is the owner name the version
    before this one used here (the configured host name).
    """
    parsed = parse_owner(owner)
    if parsed is None:
        return legacy is not None and owner == legacy
    if parsed == me:
        return False
    if parsed.machine != me.machine:
        return False  # cannot be checked from here: the lease expires
    return parsed.pid == me.pid or not is_alive(parsed.pid)
