"""Passwords and API keys: how they are made, hashed and checked.

Passwords go through scrypt (a slow, memory-hard KDF). API keys carry 256 bits of randomness,
so a single SHA-256 is enough to store them safely and keeps authentication fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

KEY_PREFIX = "nmb_"
MAX_KEY_LENGTH = 256  # longer first frames are refused without a lookup
VISIBLE_PREFIX_LENGTH = 12  # "nmb_" + 8 characters, shown in listings

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_id(kind: str) -> str:
    """``kind_``, the milliseconds since the epoch (12 hex digits) and 64 random bits: an id
    made later sorts after, so a store's index of them grows at its end, where random ids
    would land all over it. For the billing ledger's connection ids that is a few pages
    written per commit instead of one or more per row (on SQLite, 3.9 instead of 21.5 KiB of
    WAL per accepted connection, with 200,000 connections charged before)."""
    return f"{kind}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(
        ["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)]
    )


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    return hmac.compare_digest(actual, _unb64(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))
