"""A message's state once a delivery pass is over, from its recipients' states."""

from __future__ import annotations

from collections.abc import Iterable

from relay.core.model import MessageStatus, RecipientStatus


def message_status(recipients: Iterable[RecipientStatus], *, retry: bool) -> MessageStatus:
    statuses = set(recipients)
    if RecipientStatus.PENDING in statuses:
        return MessageStatus.DEFERRED if retry else MessageStatus.QUEUED
    if statuses == {RecipientStatus.SENT}:
        return MessageStatus.SENT
    if RecipientStatus.SENT in statuses:
        return MessageStatus.PARTIAL
    return MessageStatus.FAILED
