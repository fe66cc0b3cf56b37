"""Password fields: a salted scrypt hash, and redisca 1.x's MD5 for old data.

Assigning a ``str`` to a password attribute stores its hash, never the text;
assigning a :class:`PasswordHash` (e.g. one loaded elsewhere) keeps it as is.
Stored hashes are parsed as text, never unpickled or evaluated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import warnings
from typing import Any

from ..errors import ValidationError
from .codecs import StrCodec, mark_immutable
from .fields import FieldSpec, make_field


class PasswordHash(str):
    """A salted scrypt hash: ``scrypt$n$r$p$salt$digest`` (base64 parts)."""

    __slots__ = ()

    @classmethod
    def create(cls, plain: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> PasswordHash:
        """Hash ``plain`` with a fresh random salt (scrypt cost ``n``, ``r``, ``p``)."""
        salt = os.urandom(16)
        digest = _scrypt(plain, salt, n, r, p)
        return cls(f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}")

    def verify(self, plain: str) -> bool:
        """Constant-time check of a candidate password."""
        try:
            scheme, n, r, p, salt, digest = self.split("$")
            if scheme != "scrypt":
                return False
            expected = base64.b64decode(digest)
            actual = _scrypt(plain, base64.b64decode(salt), int(n), int(r), int(p))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(expected, actual)


class MD5Hash(str):
    """redisca 1.x's unsalted MD5 hex digest; kept only to read old data."""

    __slots__ = ()

    @classmethod
    def create(cls, plain: str) -> MD5Hash:
        return cls(hashlib.md5(plain.encode()).hexdigest())

    def verify(self, plain: str) -> bool:
        return hmac.compare_digest(self, hashlib.md5(plain.encode()).hexdigest())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(plain: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(plain.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


class PasswordCodec(StrCodec):
    name = "password"

    def __init__(self, n: int = 2**14, minlen: int | None = None) -> None:
        self.n = n
        self.minlen = minlen

    def coerce(self, value: Any) -> PasswordHash:
        if isinstance(value, PasswordHash):
            return value
        plain = super().coerce(value)
        if self.minlen is not None and len(plain) < self.minlen:
            raise ValidationError(f"passwords need at least {self.minlen} characters")
        return PasswordHash.create(plain, n=self.n)

    def decode(self, raw: bytes) -> PasswordHash:
        return PasswordHash(raw.decode())


class MD5Codec(StrCodec):
    name = "password"

    def coerce(self, value: Any) -> MD5Hash:
        if isinstance(value, MD5Hash):
            return value
        return MD5Hash.create(super().coerce(value))

    def decode(self, raw: bytes) -> MD5Hash:
        return MD5Hash(raw.decode())


mark_immutable(PasswordCodec)  # hashes are str: only assignment changes them
mark_immutable(MD5Codec)


def Password(
    *, field: str | None = None, minlen: int | None = None, n: int = 2**14, **kwargs: Any
) -> Any:
    """A password, stored as a salted scrypt hash; check one with ``.verify(plain)``."""
    return make_field(FieldSpec(PasswordCodec(n, minlen), field), **kwargs)


def MD5Pass(*, field: str | None = None, **kwargs: Any) -> Any:
    """redisca 1.x's unsalted MD5 password; deprecated, use :func:`Password`."""
    warnings.warn(
        "MD5Pass stores unsalted MD5 digests; use redisca.Password",
        DeprecationWarning,
        stacklevel=2,
    )
    return make_field(FieldSpec(MD5Codec(), field), **kwargs)


__all__ = ["MD5Hash", "MD5Pass", "Password", "PasswordHash"]
