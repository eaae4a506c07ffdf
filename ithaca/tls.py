"""TLS on both sides: SSLContexts built from a Listen (we are the server) or a Storage (we are
the client), cached per config object so a reload with a new config re-reads certificate files."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import TYPE_CHECKING

from .auth.scram import certificate_binding_hash
from .protocol import SqlState

if TYPE_CHECKING:
    from .config import Listen, Storage
    from .link import Link

log = logging.getLogger("ithaca.tls")

_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_ALIASES = {"all": ("tlsv1", "tlsv1.3"), "secure": ("tlsv1.2", "tlsv1.3")}

# Listen modes that refuse plaintext clients, and that ask for a verified client certificate.
LISTEN_TLS_ONLY = frozenset({"require", "verify_ca", "verify_full"})
_LISTEN_VERIFY = frozenset({"verify_ca", "verify_full"})
# Storage modes (libpq sslmode semantics) that must get TLS, and that verify the server.
STORAGE_TLS_ONLY = frozenset({"require", "verify_ca", "verify_full"})


class TlsConfigError(Exception):
    """The TLS settings of a listen or storage block cannot be used (missing or bad files)."""

    sqlstate = SqlState.CONNECTION_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _set_protocols(ctx: ssl.SSLContext, spec: str | None, where: str) -> None:
    """`tls_protocols "tlsv1.2"` or a list "tlsv1.2,tlsv1.3": the range they span is allowed."""
    if not spec:
        return
    names: list[str] = []
    for word in re.split(r"[\s,:]+", spec.strip().lower()):
        if not word:
            continue
        if word in _ALIASES:
            names.extend(_ALIASES[word])
        elif word in _VERSIONS:
            names.append(word)
        else:
            raise TlsConfigError(f"{where}: unknown TLS protocol {word!r} in tls_protocols")
    versions = sorted({_VERSIONS[n] for n in names})
    if versions:
        ctx.minimum_version = versions[0]
        ctx.maximum_version = versions[-1]


def _build_listen_context(listen: Listen) -> ssl.SSLContext:
    where = f"listen {listen.location or listen.host}"
    if not listen.tls_cert_file or not listen.tls_key_file:
        raise TlsConfigError(f"{where}: tls {listen.tls!r} needs tls_cert_file and tls_key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(listen.tls_cert_file, listen.tls_key_file)
        if listen.tls_ca_file:
            ctx.load_verify_locations(cafile=listen.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{where}: cannot load TLS files: {exc}") from None
    if listen.tls in _LISTEN_VERIFY:
        if not listen.tls_ca_file:
            raise TlsConfigError(f"{where}: tls {listen.tls!r} needs tls_ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif listen.tls_ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # verify a certificate if the client offers one
    _set_protocols(ctx, listen.tls_protocols, where)
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def _build_storage_context(storage: Storage) -> ssl.SSLContext:
    where = f"storage {storage.name!r}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if storage.tls in ("verify_ca", "verify_full"):
        if not storage.tls_ca_file:
            raise TlsConfigError(f"{where}: tls {storage.tls!r} needs tls_ca_file")
        ctx.check_hostname = storage.tls == "verify_full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:  # libpq's allow/prefer/require encrypt but do not check the server's certificate
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        if storage.tls_ca_file and ctx.verify_mode != ssl.CERT_NONE:
            ctx.load_verify_locations(cafile=storage.tls_ca_file)
        if storage.tls_cert_file:
            ctx.load_cert_chain(storage.tls_cert_file, storage.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"{where}: cannot load TLS files: {exc}") from None
    _set_protocols(ctx, storage.tls_protocols, where)
    return ctx


# Keyed by id() with the object kept alive beside its context, so an id is never reused while
# cached. Config objects are few; a reload adds one generation.
_contexts: dict[int, tuple[object, ssl.SSLContext, bytes | None]] = {}
_CACHE_MAX = 64


def _cached(obj: object) -> tuple[ssl.SSLContext, bytes | None] | None:
    hit = _contexts.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1], hit[2]
    return None


def _store(obj: object, ctx: ssl.SSLContext, binding: bytes | None) -> None:
    if len(_contexts) >= _CACHE_MAX:
        _contexts.pop(next(iter(_contexts)))
    _contexts[id(obj)] = (obj, ctx, binding)


def listen_context(listen: Listen) -> tuple[ssl.SSLContext, bytes | None]:
    """(server-side context, tls-server-end-point data of our certificate for SCRAM -PLUS)."""
    hit = _cached(listen)
    if hit is not None:
        return hit
    ctx = _build_listen_context(listen)
    binding = _channel_binding(listen.tls_cert_file)
    _store(listen, ctx, binding)
    return ctx, binding


def storage_context(storage: Storage) -> ssl.SSLContext:
    hit = _cached(storage)
    if hit is not None:
        return hit[0]
    ctx = _build_storage_context(storage)
    _store(storage, ctx, None)
    return ctx


def _channel_binding(path: str | None) -> bytes | None:
    """tls-server-end-point data of the first certificate in our chain file."""
    if not path:
        return None
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    match = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if match is None:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
    except ValueError:
        return None
    return certificate_binding_hash(der)


async def start_tls(link: Link, ctx: ssl.SSLContext, *, server_side: bool,
                    server_hostname: str | None = None) -> None:
    """Run the TLS handshake on the link's socket; the Link keeps serving the new transport."""
    assert link.transport is not None
    loop = asyncio.get_running_loop()
    transport = await loop.start_tls(link.transport, link, ctx, server_side=server_side,
                                     server_hostname=server_hostname)
    if transport is None:
        raise ConnectionError("connection closed during the TLS handshake")
    link.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses


def peer_common_name(link: Link) -> str | None:
    """The CN of the verified client certificate, or None without one."""
    if link.transport is None:
        return None
    cert = link.transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def is_encrypted(link: Link) -> bool:
    return link.transport is not None and link.transport.get_extra_info("sslcontext") is not None
