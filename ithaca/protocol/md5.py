"""PostgreSQL's MD5 password scheme, shared by client-side (to servers) and server-side (to clients)
authentication: the stored secret is "md5" + md5(password + user), the reply adds the 4-byte salt."""

from __future__ import annotations

import hashlib

MD5_PREFIX = "md5"


def _md5_hex(data: bytes) -> str:
    # usedforsecurity=False keeps this working on FIPS builds; MD5 auth is a legacy protocol scheme.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_password_secret(user: str, password: str) -> str:
    """The stored form of a password, as in pg_authid: 'md5' + 32 hex digits."""
    return MD5_PREFIX + _md5_hex((password + user).encode("utf-8", "surrogateescape"))


def md5_hash_from_secret(secret: str, salt: bytes) -> str:
    """The PasswordMessage payload for an AuthenticationMD5Password challenge, from a stored secret."""
    if len(salt) != 4:
        raise ValueError(f"MD5 salt must be 4 bytes, got {len(salt)}")
    if not is_md5_secret(secret):
        raise ValueError("not an MD5 password secret")
    return MD5_PREFIX + _md5_hex(secret[len(MD5_PREFIX) :].encode("ascii") + salt)


def md5_password_hash(user: str, password: str, salt: bytes) -> str:
    """The PasswordMessage payload for an AuthenticationMD5Password challenge, from the plain password."""
    return md5_hash_from_secret(md5_password_secret(user, password), salt)


def is_md5_secret(secret: str) -> bool:
    """True if ``secret`` has the shape of a stored MD5 password ('md5' + 32 lowercase hex digits)."""
    digest = secret[len(MD5_PREFIX) :]
    return (
        secret.startswith(MD5_PREFIX)
        and len(digest) == 32
        and all(ch in "0123456789abcdef" for ch in digest)
    )
