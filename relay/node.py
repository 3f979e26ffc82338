"""This process as one node of the cluster: its lease owner, and which local owners are gone.

The owner is made once per process (``core.leases``: host name, pid, a random
token) by the composition root, after any fork, and logged at start. Whether
another owner on this machine is gone is asked of the operating system:
signal 0 to its pid. A pid that was reused since counts as alive, so those
leases just expire. Processes that share a host name must share a pid
namespace (one machine, or containers with their own host names), else a pid
here says nothing about the owner.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from relay.core.leases import TOKEN_HEX, Owner, stale_owner


def lease_owner() -> Owner:
    """A new owner for this process: ``host:pid:token``."""
    return Owner(socket.gethostname(), os.getpid(), secrets.token_hex(TOKEN_HEX // 2))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gone_owners(me: Owner, legacy: str | None = None) -> Callable[[str], bool]:
    """The test for owners whose leases ``me`` may release at start (see core.leases)."""
    return lambda owner: stale_owner(owner, me, pid_alive, legacy)
