"""Client authentication per route: none, block, clear_text, md5, scram-sha-256 (and
SCRAM-SHA-256-PLUS over TLS) and cert, with the secret held as plaintext, an md5 secret or a SCRAM
secret, as PostgreSQL would. An unknown secret still runs the exchange and fails like a wrong
password, so user names cannot be probed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

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
from .scram import SCRAM, SCRAM_PLUS, ScramFailed, ScramServer

log = logging.getLogger("ithaca.auth")

SCRAM_ITERATIONS = 4096
# Mock SCRAM salts for unknown users are derived from this, so they stay the same per user name
# for the life of the process (a fresh random salt per attempt would reveal the user is unknown).
_MOCK_NONCE = os.urandom(32)


class AuthError(Exception):
    """The client failed authentication; message and SQLSTATE go into its FATAL ErrorResponse."""

    def __init__(self, message: str, sqlstate: str = SqlState.INVALID_PASSWORD) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What client auth needs to know about the client's TLS session."""

    encrypted: bool = False
    channel_binding: bytes | None = None  # tls-server-end-point data of our certificate
    peer_common_name: str | None = None  # CN of the client's verified certificate


NO_TLS = TlsInfo()


def password_failed(user: str) -> AuthError:
    """The one failure every password method reports (wrong password and unknown user alike)."""
    return AuthError(f'password authentication failed for user "{user}"')


async def _read_password_message(link: Link, reader: MessageReader) -> bytes:
    mtype, body = await link.read_message(reader)
    if mtype != b"p":
        raise ProtocolError(f"expected a password message, got message type {mtype!r}")
    return body


async def authenticate_client(link: Link, reader: MessageReader, method: str, user: str,
                              secret: str | None, *, tls: TlsInfo = NO_TLS,
                              common_names: tuple[str, ...] = (),
                              common_name_default: bool = False) -> str | None:
    """Run the route's method; raise AuthError or ProtocolError on failure. On success return
    the plaintext password when the client sent one (clear_text), for password_passthrough."""
    if method == "none":
        return None
    if method == "block":
        raise AuthError(f'user "{user}" is blocked', SqlState.INVALID_AUTHORIZATION_SPECIFICATION)
    if method == "clear_text":
        link.write(build_auth_cleartext())
        given = parse_password(await _read_password_message(link, reader))
        if secret is None or not _plain_matches(user, given, secret):
            raise password_failed(user)
        return given
    if method == "md5":
        salt = os.urandom(4)
        link.write(build_auth_md5(salt))
        given = parse_password(await _read_password_message(link, reader))
        expected = _md5_expected(user, secret, salt)
        if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise password_failed(user)
        return None
    if method == "scram-sha-256":
        await _scram(link, reader, user, secret, tls)
        return None
    if method == "cert":
        check_certificate(user, tls, common_names, common_name_default)
        return None
    raise AuthError(f'authentication method "{method}" is not supported',
                    SqlState.FEATURE_NOT_SUPPORTED)


def check_certificate(user: str, tls: TlsInfo, common_names: tuple[str, ...],
                      common_name_default: bool) -> None:
    """`cert`: the verified client certificate's CN must be one of auth_common_name, or the user
    name itself with `auth_common_name default` (or when no names are listed, as PostgreSQL)."""
    if not tls.encrypted or tls.peer_common_name is None:
        raise AuthError("connection requires a valid client certificate",
                        SqlState.INVALID_AUTHORIZATION_SPECIFICATION)
    cn = tls.peer_common_name
    if (common_name_default or not common_names) and cn == user:
        return
    if any(cn.lower() == name.lower() for name in common_names):  # Odyssey compares caselessly
        return
    raise AuthError(f'certificate authentication failed for user "{user}"',
                    SqlState.INVALID_AUTHORIZATION_SPECIFICATION)


def _plain_matches(user: str, given: str, secret: str) -> bool:
    if is_md5_secret(secret):
        return hmac.compare_digest(md5_password_secret(user, given).encode(), secret.encode())
    if secret.startswith(SCRAM + "$"):
        info = scram_auth_info(secret)
        if info is None:
            return False
        salt, stored_key, _server_key, iterations = info
        try:
            fresh = scramp.ScramMechanism(SCRAM).make_auth_info(given, iterations, salt)
        except scramp.ScramException:  # e.g. a salt or iteration count scramp will not use
            return False
        return hmac.compare_digest(fresh[1], stored_key)
    return hmac.compare_digest(given.encode(), secret.encode())


def _md5_expected(user: str, secret: str | None, salt: bytes) -> str | None:
    if secret is None or secret.startswith(SCRAM + "$"):
        return None  # PostgreSQL cannot do md5 with a SCRAM secret either
    stored = secret if is_md5_secret(secret) else md5_password_secret(user, secret)
    return md5_hash_from_secret(stored, salt)


def scram_auth_info(secret: str) -> tuple[bytes, bytes, bytes, int] | None:
    """Parse 'SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>' (base64 parts)."""
    try:
        _, iter_salt, keys = secret.split("$")
        iterations, salt = iter_salt.split(":")
        stored_key, server_key = keys.split(":")
        return (base64.b64decode(salt, validate=True), base64.b64decode(stored_key, validate=True),
                base64.b64decode(server_key, validate=True), int(iterations))
    except ValueError:
        return None


def _stable_salt(user: str) -> bytes:
    return hashlib.sha256(_MOCK_NONCE + user.encode("utf-8", "surrogateescape")).digest()[:16]


def _mock_auth_info(user: str) -> tuple[bytes, bytes, bytes, int]:
    """A SCRAM secret no password matches, with a salt that is stable per user name."""
    return scramp.ScramMechanism(SCRAM).make_auth_info(os.urandom(24).hex(), SCRAM_ITERATIONS,
                                                        _stable_salt(user))


def _scram_info_for(user: str, secret: str | None) -> tuple[tuple[bytes, bytes, bytes, int], bool]:
    """(auth info, whether it is real). md5 secrets cannot do SCRAM (as in PostgreSQL)."""
    if secret is None or is_md5_secret(secret):
        return _mock_auth_info(user), False
    if secret.startswith(SCRAM + "$"):
        parsed = scram_auth_info(secret)
        return (parsed, True) if parsed is not None else (_mock_auth_info(user), False)
    # a plaintext secret gets the same stable salt a mock one would: both look alike
    return scramp.ScramMechanism(SCRAM).make_auth_info(secret, SCRAM_ITERATIONS,
                                                        _stable_salt(user)), True


async def _scram(link: Link, reader: MessageReader, user: str, secret: str | None,
                 tls: TlsInfo) -> None:
    info, real = _scram_info_for(user, secret)
    binding = tls.channel_binding if tls.encrypted else None
    mechanisms = (SCRAM_PLUS, SCRAM) if binding else (SCRAM,)
    link.write(build_auth_sasl(mechanisms))
    mech, first = parse_sasl_initial_response(await _read_password_message(link, reader))
    if mech not in mechanisms or first is None:
        raise ProtocolError("client selected an invalid SASL authentication mechanism")
    salt, stored_key, server_key, iterations = info
    server = ScramServer(salt, stored_key, server_key, iterations, channel_binding=binding)
    try:
        link.write(build_auth_sasl_continue(server.server_first(mech, first.decode()).encode()))
        final = parse_sasl_response(await _read_password_message(link, reader))
        server_final = server.server_final(final.decode())
    except (ScramFailed, UnicodeDecodeError) as exc:
        log.debug("SCRAM exchange for user %r failed: %s", user, exc)
        raise password_failed(user) from None
    if not real:
        raise password_failed(user)
    link.write(build_auth_sasl_final(server_final.encode()))
