"""When a worker that died is started again, and when the supervisor stops trying.

A worker that ran a while and died (a bug, the OOM killer, a stray SIGKILL) is
replaced at once: the sockets wait for it, and its replacement frees its leases.
One that dies soon after it started will most likely die again (a broken
certificate, a full disk): each such death in a row doubles the wait before
the next start, from ``first_delay`` up to ``max_delay``, and after
``give_up_after`` of them in a row the supervisor stops the relay with an error
instead of spinning (systemd's ``Restart=on-failure`` may then try the whole).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    quick_seconds: float = 10.0  # a worker dead this soon after its start died "at once"
    first_delay: float = 1.0  # before starting again after the first quick death
    max_delay: float = 8.0
    give_up_after: int = 5  # quick deaths in a row


@dataclass(frozen=True)
class Restart:
    delay: float  # seconds to wait before starting the replacement
    quick_deaths: int  # deaths in a row that came soon after a start, this one included


@dataclass(frozen=True)
class GiveUp:
    quick_deaths: int


def after_death(
    policy: RestartPolicy, started_at: float, died_at: float, quick_deaths: int
) -> Restart | GiveUp:
    """What to do about a worker started at ``started_at`` that died at ``died_at``.

    ``quick_deaths`` counts the deaths in a row before this one that came
    within ``policy.quick_seconds`` of their start (0 after a long life).
    """
    if died_at - started_at >= policy.quick_seconds:
        return Restart(0.0, 0)
    quick_deaths += 1
    if quick_deaths >= policy.give_up_after:
        return GiveUp(quick_deaths)
    delay = min(policy.first_delay * 2 ** (quick_deaths - 1), policy.max_delay)
    return Restart(delay, quick_deaths)
