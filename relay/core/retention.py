"""What retention keeps, and until when: the cutoffs of one housekeeping run.

A message in a final state (sent, failed, partial; DSNs are messages too)
loses its content ``content_hours`` after it became final (its
``updated_at``) and its rows ``log_days`` after. Waiting mail (queued,
deferred, held) is never touched, whatever its age. The audit log and the
per-minute statistics have their own periods. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.model import MessageStatus

HOUR = 3600.0
DAY = 86400.0
# Final states: nothing will ever deliver these again, so their content may go.
FINAL = (MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PARTIAL)
# Of a message whose content goes, this much of its header block is kept for the log.
KEEP_HEADER_BYTES = 65_536


@dataclass(frozen=True)
class RetentionPolicy:
    content_hours: float = 168.0  # content of final messages
    log_days: float = 30.0  # final messages' rows: message, recipients, attempts
    audit_days: float = 365.0  # the admin API's audit log
    stats_days: float = 400.0  # hourly and daily statistics rollups (minutes go after log_days)

    def cutoffs(self, now: float) -> Cutoffs:
        return Cutoffs(
            content=now - self.content_hours * HOUR,
            log=now - self.log_days * DAY,
            audit=now - self.audit_days * DAY,
            stats_minute=int(now - self.stats_days * DAY) // 60 * 60,
        )


@dataclass(frozen=True)
class Cutoffs:
    """Everything from before these times goes (UNIX seconds)."""

    content: float  # final messages' updated_at
    log: float
    audit: float  # audit_log.at
    stats_minute: int  # stats_rollups.minute (a minute's first second)


def kept_headers(prefix: bytes, length: int) -> bytes:
    """What stays of a message whose content goes: its header block (up to an empty line).

    ``prefix`` is the content's first bytes (at most KEEP_HEADER_BYTES), ``length`` the
    whole content's. A header block longer than the prefix is cut after its last whole line.
    """
    ends = [i for i in (prefix.find(b"\r\n\r\n"), prefix.find(b"\n\n")) if i >= 0]
    if ends:
        return prefix[: min(ends)]
    if length <= len(prefix):
        return prefix  # no body at all: the whole message is its header
    cut = prefix.rfind(b"\n")
    return prefix[:cut].rstrip(b"\r") if cut > 0 else b""


def pages_to_vacuum(page_count: int, free_pages: int, most: int) -> int:
    """How many free pages of a SQLite file to give back now (at most ``most``).

    A tenth of the file is left free for the next inserts: freed pages are
    reused anyway, and giving back all of them only makes the file grow again.
    """
    spare = page_count // 10
    return max(0, min(free_pages - spare, most))
