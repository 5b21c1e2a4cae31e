"""The secret's format: `st_{live|test}_`, 32 random bytes in base62, then a check suffix.

The check suffix (CRC32 of everything before it, in base62) lets a secret scanner recognise a
real key in a leaked file, and lets this service refuse a mistyped or made-up one before any
query. The secret itself is stored only as a SHA-256 digest: it carries 256 random bits, so a
fast hash is as safe as a slow one and costs microseconds on every request (never bcrypt).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

from backend.accounts.api_keys.models import KeyMode

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BYTES = 32
_BODY_LENGTH = 43  # 62**43 > 2**256: every 32-byte value fits, left-padded with "0"
_CHECK_LENGTH = 6  # 62**6 > 2**32: every CRC32 fits
# The part of the secret stored in clear to find its row: the mode and 8 characters (47 bits)
# of the random body, shown in lists so that people can tell their keys apart.
_PREFIX_BODY_LENGTH = 8
_SECRET = re.compile(
    rf"(st_(live|test)_)([0-9A-Za-z]{{{_BODY_LENGTH}}})([0-9A-Za-z]{{{_CHECK_LENGTH}}})"
)
SECRET_START = "st_"  # noqa: S105 - the public start of every key, not a secret


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, _ALPHABET[0])


def _check_suffix(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), _CHECK_LENGTH)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class NewSecret:
    secret: str
    prefix: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class PresentedSecret:
    """A secret as a client sent it, well formed: what to look up and what to compare."""

    prefix: str
    digest: bytes
    mode: KeyMode


def new_secret(mode: KeyMode) -> NewSecret:
    start = f"{SECRET_START}{mode.value}_"
    body = _base62(int.from_bytes(secrets.token_bytes(_RANDOM_BYTES)), _BODY_LENGTH)
    secret = start + body + _check_suffix(start + body)
    return NewSecret(secret, start + body[:_PREFIX_BODY_LENGTH], digest_of(secret))


def looks_like_key(credential: str) -> bool:
    """Whether a bearer credential is meant as an API key (access tokens are JWTs: `eyJ…`)."""
    return credential.startswith(SECRET_START)


def parse_secret(credential: str) -> PresentedSecret | None:
    """The lookup prefix and digest of a well-formed secret; None for anything else, which no
    stored key can match."""
    match = _SECRET.fullmatch(credential)
    if match is None:
        return None
    start, mode, body, check = match.groups()
    if check != _check_suffix(start + body):
        return None
    return PresentedSecret(start + body[:_PREFIX_BODY_LENGTH], digest_of(credential), KeyMode(mode))
