"""Password hashes for site credentials: scrypt (RFC 7914) in a self-describing string.

Format: ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<hash b64>``. Verifying
costs tens of milliseconds of CPU on purpose; callers on the event loop run
it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

_FORMAT = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)"
)
_LOG2_N, _R, _P = 15, 8, 1
_MAXMEM = 128 * 1024 * 1024


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = _scrypt(password, salt, _LOG2_N, _R, _P)
    encoded_salt, encoded_digest = (
        base64.b64encode(salt).decode(),
        base64.b64encode(digest).decode(),
    )
    return f"$scrypt$ln={_LOG2_N},r={_R},p={_P}${encoded_salt}${encoded_digest}"


def is_password_hash(text: str) -> bool:
    """A hash that verify_password can check: our format, sane parameters, valid base64."""
    return _parse(text) is not None


def verify_password(password: str, password_hash: str) -> bool:
    parsed = _parse(password_hash)
    if parsed is None:
        return False
    log2_n, r, p, salt, expected = parsed
    actual = _scrypt(password, salt, log2_n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def _parse(text: str) -> tuple[int, int, int, bytes, bytes] | None:
    match = _FORMAT.fullmatch(text)
    if match is None:
        return None
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    # scrypt needs 128 * r * N bytes; refuse what would fail or exhaust memory.
    if (
        not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16)
        or 128 * r * (1 << log2_n) > _MAXMEM // 2
    ):
        return None
    try:
        salt = base64.b64decode(match.group(4), validate=True)
        digest = base64.b64decode(match.group(5), validate=True)
    except ValueError:
        return None
    return log2_n, r, p, salt, digest


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int = 32) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=length
    )
