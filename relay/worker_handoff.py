"""What a worker inherits from its supervisor, named in one environment variable.

The supervisor (relay/supervisor.py) binds the sockets and starts each worker
as `relay serve -c PATH` with RELAY_WORKER set to this JSON. Descriptors keep
their numbers in the child (``subprocess``'s ``pass_fds``). The control socket
carries one word up ("ready", once the worker serves) and nothing down: its end
of file tells a worker that the supervisor is gone, and the worker stops.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV = "RELAY_WORKER"
READY = b"ready"


@dataclass(frozen=True)
class Handoff:
    index: int  # 1..workers, for the logs
    workers: int
    listeners: Mapping[str, tuple[int, ...]]  # listener name -> its listening sockets
    admin: tuple[int, ...]
    control: int
    http: tuple[int, ...] = ()  # the public HTTP listener's, when `http:` is configured

    def descriptors(self) -> tuple[int, ...]:
        every = [fd for fds in self.listeners.values() for fd in fds]
        return (*every, *self.admin, *self.http, self.control)

    def to_env(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "workers": self.workers,
                "listeners": {name: list(fds) for name, fds in self.listeners.items()},
                "admin": list(self.admin),
                "control": self.control,
                "http": list(self.http),
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Handoff | None:
        """The handoff of this process, or None when it was not started by a supervisor."""
        text = environ.get(ENV)
        if not text:
            return None
        data = json.loads(text)
        return cls(
            int(data["index"]),
            int(data["workers"]),
            {str(name): tuple(int(fd) for fd in fds) for name, fds in data["listeners"].items()},
            tuple(int(fd) for fd in data["admin"]),
            int(data["control"]),
            tuple(int(fd) for fd in data.get("http", ())),
        )
