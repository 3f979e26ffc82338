"""Admin API bearer tokens: hashed with SHA-256 (they are long random strings, not passwords).

Format: ``sha256:<64 hex digits>``. Matching compares digests in constant time
and always walks every configured token, so timing says nothing about which
one, or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

_FORMAT = re.compile(r"sha256:[0-9a-f]{64}")


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_token_hash(text: str) -> bool:
    return _FORMAT.fullmatch(text) is not None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def match_token(presented: str, known: Iterable[tuple[str, str]]) -> str | None:
    """The name of the token whose hash matches, or None; ``known`` is (name, token hash)."""
    digest = hash_token(presented).encode()
    found = None
    for name, token_hash in known:
        if hmac.compare_digest(digest, token_hash.encode()) and found is None:
            found = name
    return found
