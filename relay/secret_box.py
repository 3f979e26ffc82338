"""The installation's secret key (``server.secret_key_file``): a Fernet key, mode 0600.

Created on first use. It encrypts secrets kept in the store and derives
per-installation tokens (the domain ownership token).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyError(Exception):
    """The key file exists but cannot be used: one line saying why."""


def load_or_create_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        return _create(path)
    except OSError as error:
        raise SecretKeyError(f"{path}: cannot read the secret key ({error.strerror})") from None
    try:
        Fernet(key)
    except ValueError:
        raise SecretKeyError(
            f"{path}: not a Fernet key (32 url-safe base64 bytes); restore it from backup"
        ) from None
    return key


def _create(path: Path) -> bytes:
    key = Fernet.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return load_or_create_key(path)
    with os.fdopen(fd, "wb") as file:
        file.write(key + b"\n")
    return key


class SecretBox:
    """Encrypts secrets kept in the store (DKIM keys, upstream passwords) with Fernet."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, secret: bytes) -> bytes:
        return self._fernet.encrypt(secret)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            raise SecretKeyError(
                "a stored secret does not decrypt with server.secret_key_file: "
                "is it the key this store was created with?"
            ) from None
