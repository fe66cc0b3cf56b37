"""Password fields: a salted scrypt hash, and redisca 1.x's MD5 for old data.

Assigning a ``str`` to a password attribute stores its hash, never the text;
assigning a :class:`PasswordHash` (e.g. one loaded elsewhere) keeps it as is.
Stored hashes are parsed as text, never unpickled or evaluated.

The cost of a check comes from the stored text, which whoever can write to Redis
controls: ``scrypt$1024$1$100000$...`` asks for 30 s of CPU. So a hash is checked
only when its cost ``n·r·p`` is at most ``MAX_COST`` (``2**18``: twice the
default ``2**14·8·1``, the most the 64 MiB memory cap let ``r=8`` reach before);
a higher cost is refused at once with a :class:`~redisca.ValidationError`, and
``Password(n=...)`` and :meth:`PasswordHash.create` refuse to write one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import warnings
from typing import Any

from ..errors import ValidationError
from .codecs import StrCodec, mark_immutable
from .fields import FieldSpec, make_field

#: The highest scrypt cost ``n·r·p`` a hash may ask for: twice the default (``2**14·8·1``),
#: about 0.15 s of one core. It also bounds scrypt's memory (``128·n·r`` bytes, 32 MiB).
MAX_COST = 2**18

#: ``scrypt$n$r$p$salt$digest``: decimal costs (no sign, space or ``_``), base64 parts no
#: longer than redisca writes (16-byte salts, 32-byte digests) with room to spare.
_HASH_RE = re.compile(
    r"scrypt\$([1-9][0-9]{0,9})\$([1-9][0-9]{0,9})\$([1-9][0-9]{0,9})"
    r"\$([A-Za-z0-9+/=]{4,88})\$([A-Za-z0-9+/=]{44})"
)


def check_cost(n: int, r: int, p: int) -> None:
    """Refuse scrypt costs redisca does not compute: ``n`` a power of two above 1, and
    ``n·r·p`` at most ``MAX_COST``, ``2**18`` (a verify's CPU time and memory follow from it)."""
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValidationError(f"scrypt needs n a power of two above 1, r and p >= 1 (n={n})")
    if n * r * p > MAX_COST:
        raise ValidationError(
            f"scrypt cost n*r*p = {n}*{r}*{p} = {n * r * p} is above redisca's limit "
            f"{MAX_COST} (2**18); the default is n=2**14, r=8, p=1"
        )


class PasswordHash(str):
    """A salted scrypt hash: ``scrypt$n$r$p$salt$digest`` (base64 parts)."""

    __slots__ = ()

    @classmethod
    def create(cls, plain: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> PasswordHash:
        """Hash ``plain`` with a fresh random salt (scrypt cost ``n``, ``r``, ``p``, whose
        product is at most ``MAX_COST`` (``2**18``), else ``ValidationError``)."""
        check_cost(n, r, p)
        salt = os.urandom(16)
        digest = _scrypt(plain, salt, n, r, p)
        return cls(f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}")

    def verify(self, plain: str) -> bool:
        """Constant-time check of a candidate password.

        ``False`` for text that is not a scrypt hash; a hash asking for a cost above
        ``MAX_COST`` (``2**18``) raises :class:`~redisca.ValidationError` before any work.
        """
        found = _HASH_RE.fullmatch(self)
        if found is None:
            return False
        n, r, p = (int(part) for part in found.group(1, 2, 3))
        check_cost(n, r, p)
        try:
            expected = base64.b64decode(found[5], validate=True)
            actual = _scrypt(plain, base64.b64decode(found[4], validate=True), n, r, p)
        except ValueError:  # bad base64 padding; text UTF-8 cannot hold
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


class _PlainTextCodec(StrCodec):
    """What both password codecs check of the text assigned, before hashing it."""

    name = "password"

    def __init__(self, minlen: int | None = None, maxlen: int | None = None) -> None:
        self.minlen = minlen
        self.maxlen = maxlen

    def plain(self, value: Any) -> str:
        """The text, checked: a ``str``, ``minlen``/``maxlen`` characters."""
        plain: str = super().coerce(value)
        if self.minlen is not None and len(plain) < self.minlen:
            raise ValidationError(f"passwords need at least {self.minlen} characters")
        if self.maxlen is not None and len(plain) > self.maxlen:
            raise ValidationError(f"passwords have at most {self.maxlen} characters")
        return plain


class PasswordCodec(_PlainTextCodec):
    def __init__(
        self, n: int = 2**14, minlen: int | None = None, maxlen: int | None = None
    ) -> None:
        check_cost(n, 8, 1)  # refused where the field is declared, not at the first hash
        super().__init__(minlen, maxlen)
        self.n = n

    def coerce(self, value: Any) -> PasswordHash:
        if isinstance(value, PasswordHash):
            return value
        return PasswordHash.create(self.plain(value), n=self.n)

    def decode(self, raw: bytes) -> PasswordHash:
        return PasswordHash(raw.decode())


class MD5Codec(_PlainTextCodec):
    """redisca 1.x's MD5Pass: ``minlen``/``maxlen`` apply to the text, as 1.x's did."""

    def coerce(self, value: Any) -> MD5Hash:
        if isinstance(value, MD5Hash):
            return value
        return MD5Hash.create(self.plain(value))

    def decode(self, raw: bytes) -> MD5Hash:
        return MD5Hash(raw.decode())


mark_immutable(PasswordCodec)  # hashes are str: only assignment changes them
mark_immutable(MD5Codec)


def Password(
    *,
    field: str | None = None,
    minlen: int | None = None,
    maxlen: int | None = None,
    n: int = 2**14,
    **kwargs: Any,
) -> Any:
    """A password, stored as a salted scrypt hash; check one with ``.verify(plain)``.

    ``minlen``/``maxlen`` count the characters of the text assigned; ``n`` is the scrypt
    cost (a power of two, at most ``2**15``, so that ``n·8·1 <= MAX_COST``).
    """
    return make_field(FieldSpec(PasswordCodec(n, minlen, maxlen), field), **kwargs)


def MD5Pass(
    *,
    field: str | None = None,
    minlen: int | None = None,
    maxlen: int | None = None,
    **kwargs: Any,
) -> Any:
    """redisca 1.x's unsalted MD5 password; deprecated, use :func:`Password`.

    ``minlen``/``maxlen`` check the text before it is hashed, as in redisca 1.x.
    """
    warnings.warn(
        "MD5Pass stores unsalted MD5 digests; use redisca.Password",
        DeprecationWarning,
        stacklevel=2,
    )
    return make_field(FieldSpec(MD5Codec(minlen=minlen, maxlen=maxlen), field), **kwargs)


__all__ = ["MAX_COST", "MD5Hash", "MD5Pass", "Password", "PasswordHash"]
