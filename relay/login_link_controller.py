"""The dashboard's one-time login link, for a relay with no admin tokens on loopback.

`relay serve` with ``admin.tokens`` empty and a loopback admin listener
prints ``http://HOST:PORT/login/link?t=TOKEN``: whoever can read the relay's
output on that machine may open the dashboard once, as the admin ``local``.
The token is a form token (relay/core/form_token.py) under a key of its
own, derived from ``server.secret_key_file``, so the supervisor can print it
and any worker can take it. It is good for ``MAX_AGE_SECONDS`` and for one
use: its nonce is recorded in ``form_nonces`` (the primary key decides, so
exactly once across workers and nodes), under a site id that no site can
have (site ids are names; parentheses are not in them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from sqlalchemy import Connection

from relay.core.form_token import TokenOk, check, derive_key, issue
from relay.form_database import UsedNonce, record_nonces
from relay.store import GroupWriter

MAX_AGE_SECONDS = 600
LINK_SCOPE = "(dashboard-login)"
LOCAL_ADMIN = "local"  # the name a link's session carries in the header and the audit log


def link_key(secret: bytes) -> bytes:
    return derive_key(secret, b"dashboard-login-link")


def issue_link(secret: bytes, now: float) -> str:
    """A fresh one-time token (the ``t`` of the link)."""
    return issue(link_key(secret), LINK_SCOPE, now, os.urandom(16))


def login_link_line(secret: bytes, scheme: str, host: str, port: int, now: float) -> str:
    """What `relay serve` prints: the link, how long it is good for, and why it exists."""
    where = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{where}:{port}/login/link?t={issue_link(secret, now)}"
    return (
        f"dashboard: no admin tokens are configured; open {url} "
        f"within {MAX_AGE_SECONDS // 60} minutes to log in (works once)"
    )


class LoginLinkController:
    def __init__(
        self, writer: GroupWriter, secret: bytes, clock: Callable[[], float] = time.time
    ) -> None:
        self._writer = writer
        self._key = link_key(secret)
        self._clock = clock

    async def redeem(self, token: str) -> bool:
        """True once for a token we issued less than MAX_AGE_SECONDS ago; False otherwise."""
        now = self._clock()
        found = check(
            self._key, token, LINK_SCOPE, now, min_age_seconds=0, max_age_seconds=MAX_AGE_SECONDS
        )
        if not isinstance(found, TokenOk):
            return False
        used = UsedNonce(found.nonce, LINK_SCOPE, found.issued_at + MAX_AGE_SECONDS + 1)

        def spend(connection: Connection) -> bool:
            [fresh] = record_nonces(connection, [used])  # retention sweeps it once expired
            return fresh

        return await self._writer.write_sync(spend)
