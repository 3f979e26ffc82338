"""SMTP AUTH: password checks that a flood cannot turn against the relay or its users.

- A client address (IPv6: its /64) with too many failures within the window
  is refused (454) without hashing. Every scrypt run counts as a failure of
  its address and its username when it *starts* and is refunded when the
  password was right, so parallel guesses are counted before any finishes.
- One scrypt run at a time per address and per username: the others wait
  in line (a short one; beyond it 454 without hashing) and look at the
  counts again when their turn comes. Logins that are the same (username,
  hash, password) share one run, and a password already verified skips
  scrypt, so the PHP workers of one web server logging in together cost one
  run per credential.
- Runs happen in their own small thread pool with a short queue: beyond it,
  454 without hashing, so a burst of guesses delays neither DKIM signing (the
  default pool) nor a legitimate login by more than that queue.
- A username's failures never lock its owner out: a correct password from an
  address that is not itself blocked gets in; while the username is blocked,
  wrong passwords get 454 instead of 535.

The counts live in the store (``auth_failures``, relay/auth_database.py), so
every node counts the same failures: an address's count is read and the check
recorded in one transaction, one more writes the refund. This process keeps
two caches of them, both safe: addresses it has seen blocked, until their
window ends (refused without the store), and logins it has verified
(answered with neither the store nor scrypt, so PHPMailer logging in for every
message costs nothing; the password is right, so no guess gets through that
way, even from an address that failures on *other* nodes have blocked and
this node has not yet seen).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from relay import auth_database
from relay.config import LimitsConfig
from relay.core.directory import Directory
from relay.core.model import Credential, SmtpReply
from relay.core.passwords import hash_password, verify_password
from relay.core.policy import AUTH_BUSY, AUTH_INVALID, AUTH_LINE_TOO_LONG, AUTH_THROTTLED
from relay.core.throttle import KnownBlocked, blocked_until, client_network
from relay.keyed_lines import KeyedLines, LineFull
from relay.metrics import Metrics
from relay.store import GroupWriter

log = logging.getLogger(__name__)
_DUMMY_HASH = hash_password("no such user", salt=b"relay-dummy-salt")
_VERIFIED_CACHE_SIZE = 10_000
# scrypt costs ~0.1 s of CPU and 32 MB per run: two at once (this machine's cores) and a
# short queue behind them bound both the memory and the wait of a legitimate login.
PASSWORD_WORKERS = 2
PASSWORD_QUEUE = 8
# Checks waiting for their address's or username's turn: a web server's PHP workers for
# many sites share one address, an attacker's parallel guesses queue up and get counted.
LINE_LENGTH = 16
_REASONS = {AUTH_THROTTLED: "throttled", AUTH_BUSY: "busy"}


@dataclass(frozen=True)
class _Check:
    """One scrypt run's identity: equal logins share it."""

    username: str
    password_hash: str
    password_digest: bytes  # HMAC of the password under a per-process key


@dataclass(frozen=True)
class _Verdict:
    right: bool
    user_blocked: bool  # the username had its failures before this check


class AuthController:
    def __init__(
        self,
        directory: Callable[[], Directory],
        limits: LimitsConfig,
        metrics: Metrics,
        writer: GroupWriter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._directory = directory
        self._metrics = metrics
        self._writer = writer
        self._clock = clock
        self._max_failures = limits.auth_max_failures
        self._window = float(limits.auth_failure_window_seconds)
        self._blocked = KnownBlocked()  # addresses seen blocked: refused without the store
        self._pool = ThreadPoolExecutor(PASSWORD_WORKERS, thread_name_prefix="password")
        self._queued = 0  # checks counted or running, not finished
        self._key = os.urandom(32)
        self._verified: dict[_Check, None] = {}  # successful checks: PHPMailer logs in per message
        self._running: dict[_Check, asyncio.Future[_Verdict | SmtpReply]] = {}
        self._lines = KeyedLines(LINE_LENGTH)  # one check at a time per address and username

    async def authenticate(
        self, username: str, password: str, client_ip: str
    ) -> Credential | SmtpReply:
        ip_key, user_key = f"ip:{client_network(client_ip)}", f"user:{username}"
        if self._blocked.is_blocked(ip_key, self._clock()):
            return self._refused("throttled", AUTH_THROTTLED, client_ip, username)
        credential = self._directory().credential(username)
        check = _Check(
            username,
            credential.password_hash if credential else _DUMMY_HASH,
            hmac.new(self._key, password.encode(), hashlib.sha256).digest(),
        )
        if credential is not None and check in self._verified:
            return credential
        run = self._running.get(check)
        answer = await asyncio.shield(run) if run is not None else None
        if not isinstance(answer, _Verdict):  # none to share, or refused for its own address
            try:
                async with self._lines.hold(ip_key, user_key):
                    answer = await self._check_in_turn(check, password, ip_key, user_key)
            except LineFull:
                answer = AUTH_BUSY
        if isinstance(answer, SmtpReply):
            return self._refused(_REASONS[answer], answer, client_ip, username)
        verdict = answer
        if verdict.right and credential is not None:
            return credential
        if verdict.user_blocked:
            return self._refused("throttled", AUTH_THROTTLED, client_ip, username)
        return self._refused("invalid", AUTH_INVALID, client_ip, username)

    async def _check_in_turn(
        self, check: _Check, password: str, ip_key: str, user_key: str
    ) -> _Verdict | SmtpReply:
        """With the address's and the username's turn: the check, or why not now."""
        if self._blocked.is_blocked(ip_key, self._clock()):  # failures while this one waited
            return AUTH_THROTTLED
        if check in self._verified:  # an identical login succeeded while this one waited
            return _Verdict(True, False)
        if self._queued >= PASSWORD_WORKERS + PASSWORD_QUEUE:
            return AUTH_BUSY
        self._queued += 1
        counted = asyncio.ensure_future(self._counted_check(check, password, ip_key, user_key))
        self._running[check] = counted  # identical logins share it from now on

        def finished(_: object) -> None:
            self._queued -= 1
            if self._running.get(check) is counted:
                del self._running[check]

        counted.add_done_callback(finished)
        return await asyncio.shield(counted)  # a client that hangs up does not undo the count

    async def _counted_check(
        self, check: _Check, password: str, ip_key: str, user_key: str
    ) -> _Verdict | SmtpReply:
        """Counted as it starts (unless the store says the address is blocked), then run."""
        now = self._clock()
        keys = (ip_key, user_key)
        try:
            counted = await self._writer.write_alone(
                lambda c: auth_database.count_and_record(
                    c, keys, now, self._max_failures, self._window
                )
            )
        except Exception as error:  # no count, no check: the client may try again
            log.warning("AUTH not checked: failures not counted (%s)", type(error).__name__)
            return AUTH_BUSY
        if counted.blocked_until is not None:
            self._blocked.block(ip_key, counted.blocked_until, now)
            return AUTH_THROTTLED
        return await self._verify(check, password, counted, keys, now)

    async def _verify(
        self,
        check: _Check,
        password: str,
        counted: auth_database.Counted,
        keys: tuple[str, str],
        now: float,
    ) -> _Verdict:
        """scrypt in the pool; a right password refunded in the store, a wrong one remembered
        when it blocks its address."""
        loop = asyncio.get_running_loop()
        right = await loop.run_in_executor(
            self._pool, verify_password, password, check.password_hash
        )
        ip_key, user_key = keys
        if right and check.password_hash != _DUMMY_HASH:
            address_row = counted.ids[0]
            try:
                await self._writer.write_alone(
                    lambda c: auth_database.refund(c, address_row, user_key)
                )
            except Exception as error:  # the failure stays counted: stricter, never looser
                log.warning("AUTH success not taken off the count (%s)", type(error).__name__)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[check] = None
        elif not right:
            failures = list(counted.address_failures)
            until = blocked_until(failures, self._max_failures, self._window)
            if until is not None:
                self._blocked.block(ip_key, until, now)
        return _Verdict(right, counted.user_blocked)

    async def line_too_long(self, client_ip: str) -> SmtpReply:
        """An AUTH answer over the line limit: a failure of its address, refused without a check."""
        key, now = f"ip:{client_network(client_ip)}", self._clock()
        if not self._blocked.is_blocked(key, now):
            try:
                counted = await self._writer.write_alone(
                    lambda c: auth_database.count_and_record(
                        c, (key,), now, self._max_failures, self._window
                    )
                )
            except Exception as error:  # refused all the same
                log.warning("AUTH failure not counted (%s)", type(error).__name__)
            else:
                failures = list(counted.address_failures)
                until = counted.blocked_until or blocked_until(
                    failures, self._max_failures, self._window
                )
                if until is not None:
                    self._blocked.block(key, until, now)
        self._metrics.auth_failures.labels("too_long").inc()
        log.warning("AUTH from %s: an answer over the line limit", client_ip)
        return AUTH_LINE_TOO_LONG

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _refused(self, reason: str, reply: SmtpReply, client_ip: str, username: str) -> SmtpReply:
        self._metrics.auth_failures.labels(reason).inc()
        log.warning("AUTH %s from %s for user %r", reason, client_ip, username)
        return reply
