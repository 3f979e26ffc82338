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
    r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$"
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
    match = _FORMAT.match(text)
    return match is not None and 10 <= int(match.group(1)) <= 20


def verify_password(password: str, password_hash: str) -> bool:
    match = _FORMAT.match(password_hash)
    if match is None:
        return False
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    actual = _scrypt(password, salt, log2_n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int = 32) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=length
    )
