"""Client authentication per route: none, block, clear_text, md5 and scram-sha-256, with the
route `password` held as plaintext, an md5 secret or a SCRAM secret, as PostgreSQL would."""

from __future__ import annotations

import base64
import hmac
import os

import scramp

from ..link import Link
from ..protocol import (
    MessageReader,
    ProtocolError,
    SqlState,
    build_auth_cleartext,
    build_auth_md5,
    build_auth_sasl,
    build_auth_sasl_continue,
    build_auth_sasl_final,
    parse_password,
    parse_sasl_initial_response,
    parse_sasl_response,
)
from ..protocol.md5 import is_md5_secret, md5_hash_from_secret, md5_password_secret

_SCRAM = "SCRAM-SHA-256"


class AuthError(Exception):
    """The client failed authentication; message and SQLSTATE go into its FATAL ErrorResponse."""

    def __init__(self, message: str, sqlstate: str = SqlState.INVALID_PASSWORD) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


def _failed(user: str) -> AuthError:
    return AuthError(f'password authentication failed for user "{user}"')


async def _read_password_message(link: Link, reader: MessageReader) -> bytes:
    mtype, body = await link.read_message(reader)
    if mtype != b"p":
        raise ProtocolError(f"expected a password message, got message type {mtype!r}")
    return body


async def authenticate_client(link: Link, reader: MessageReader, method: str, user: str,
                              secret: str | None) -> None:
    """Run the route's method; return on success, raise AuthError or ProtocolError otherwise."""
    if method == "none":
        return
    if method == "block":
        raise AuthError(f'user "{user}" is blocked', SqlState.INVALID_AUTHORIZATION_SPECIFICATION)
    if method == "clear_text":
        link.write(build_auth_cleartext())
        given = parse_password(await _read_password_message(link, reader))
        if secret is None or not _plain_matches(user, given, secret):
            raise _failed(user)
        return
    if method == "md5":
        salt = os.urandom(4)
        link.write(build_auth_md5(salt))
        given = parse_password(await _read_password_message(link, reader))
        expected = _md5_expected(user, secret, salt)
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise _failed(user)
        return
    if method == "scram-sha-256":
        await _scram(link, reader, user, secret)
        return
    raise AuthError(f'authentication method "{method}" is not supported yet',
                    SqlState.FEATURE_NOT_SUPPORTED)


def _plain_matches(user: str, given: str, secret: str) -> bool:
    if is_md5_secret(secret):
        return hmac.compare_digest(md5_password_secret(user, given).encode(), secret.encode())
    if secret.startswith(_SCRAM + "$"):
        info = _scram_auth_info(secret)
        if info is None:
            return False
        salt, stored_key, _server_key, iterations = info
        fresh = scramp.ScramMechanism(_SCRAM).make_auth_info(given, iterations, salt)
        return hmac.compare_digest(fresh[1], stored_key)
    return hmac.compare_digest(given.encode(), secret.encode())


def _md5_expected(user: str, secret: str | None, salt: bytes) -> str | None:
    if secret is None or secret.startswith(_SCRAM + "$"):
        return None  # PostgreSQL cannot do md5 with a SCRAM secret either
    stored = secret if is_md5_secret(secret) else md5_password_secret(user, secret)
    return md5_hash_from_secret(stored, salt)


def _scram_auth_info(secret: str) -> tuple[bytes, bytes, bytes, int] | None:
    """Parse 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>' (base64 parts)."""
    try:
        _, iter_salt, keys = secret.split("$")
        iterations, salt = iter_salt.split(":")
        stored_key, server_key = keys.split(":")
        return (base64.b64decode(salt), base64.b64decode(stored_key),
                base64.b64decode(server_key), int(iterations))
    except ValueError:
        return None


async def _scram(link: Link, reader: MessageReader, user: str, secret: str | None) -> None:
    mechanism = scramp.ScramMechanism(_SCRAM)
    if secret is None:
        # Unknown secret: still run the exchange with a throw-away one so the failure looks
        # the same as a wrong password.
        info = mechanism.make_auth_info(os.urandom(16).hex())
    elif secret.startswith(_SCRAM + "$"):
        parsed = _scram_auth_info(secret)
        info = parsed if parsed is not None else mechanism.make_auth_info(os.urandom(16).hex())
    elif is_md5_secret(secret):
        raise _failed(user)  # PostgreSQL cannot do SCRAM with an md5 secret
    else:
        info = mechanism.make_auth_info(secret)
    server = mechanism.make_server(lambda _username: info)
    link.write(build_auth_sasl([_SCRAM]))
    mech, first = parse_sasl_initial_response(await _read_password_message(link, reader))
    if mech != _SCRAM or first is None:
        raise ProtocolError(f"client selected unsupported SASL mechanism {mech!r}")
    try:
        server.set_client_first(first.decode())
        link.write(build_auth_sasl_continue(server.get_server_first().encode()))
        final = parse_sasl_response(await _read_password_message(link, reader))
        server.set_client_final(final.decode())
    except (scramp.ScramException, UnicodeDecodeError):
        raise _failed(user) from None
    link.write(build_auth_sasl_final(server.get_server_final().encode()))
