"""Server connection: connect to PostgreSQL, log in (trust, cleartext, md5, SCRAM-SHA-256),
remember its parameters and real cancel key, run reset queries, and close."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import scramp

from . import tls
from .config import Storage
from .link import Link, LinkClosed
from .protocol import (
    AuthCode,
    Authentication,
    BackendKeyData,
    DataRow,
    ErrorResponse,
    MessageReader,
    ParameterStatus,
    ProtocolError,
    ReadyForQuery,
    SqlState,
    build_password,
    build_query,
    build_sasl_initial_response,
    build_sasl_response,
    build_ssl_request,
    build_startup,
    build_terminate,
    md5_password_hash,
    parse_backend,
)
from .tls import TlsConfigError

log = logging.getLogger("ithaca.server")

_server_ids = itertools.count(1)


class ServerError(Exception):
    """A server connection failed; carries what the client should be told."""

    def __init__(self, message: str, sqlstate: str = SqlState.CONNECTION_FAILURE,
                 error: ErrorResponse | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.error = error  # PostgreSQL's own ErrorResponse, passed on to the client as is


class ServerConn:
    """One connection to PostgreSQL. Owned by a pool; attached to at most one client."""

    __slots__ = (
        "id", "link", "host", "port", "params", "backend_pid", "backend_secret", "status",
        "created_at", "last_used_at", "client", "pool", "max_message", "generation",
        "prepared", "extra_settings", "cancels_in_flight",
    )

    def __init__(self, host: str, port: int, max_message: int) -> None:
        self.id = f"s{next(_server_ids)}"
        self.link = Link()
        self.host = host
        self.port = port
        self.params: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_secret = 0
        self.status = b"I"  # transaction status from the last ReadyForQuery
        self.created_at = time.monotonic()
        self.last_used_at = self.created_at
        self.client: object | None = None
        self.pool: object | None = None
        self.max_message = max_message
        self.generation = 0
        self.prepared: set[str] = set()  # pooler-named prepared statements present here
        self.extra_settings: dict[str, str] = {}  # unreported settings we SET for a client
        self.cancels_in_flight = 0  # a cancel for this server's query is on its way

    def __repr__(self) -> str:
        return f"<ServerConn {self.id} pid={self.backend_pid} {self.host}:{self.port}>"

    @property
    def closed(self) -> bool:
        return self.link.closed

    async def connect(self, database: str, user: str, password: str | None,
                      timeout: float | None, storage: Storage | None = None) -> None:
        """Open the socket, negotiate TLS as the storage's `tls` asks, and log in; raise
        ServerError with a client-facing message."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: self.link, self.host, self.port)
                if storage is not None and storage.tls != "disable":
                    await self._negotiate_tls(storage)
                self.link.write(build_startup({"user": user, "database": database}))
                await self._login(user, password)
        except TlsConfigError as exc:
            self.close()
            log.error("%s", exc.message)
            raise ServerError(f"TLS to server {self.host}:{self.port} is misconfigured "
                              f"(see the pooler log)") from None
        except TimeoutError:
            self.close()
            raise ServerError(f"timed out connecting to server {self.host}:{self.port}") from None
        except OSError as exc:
            self.close()
            raise ServerError(
                f"failed to connect to server {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        except (LinkClosed, ProtocolError) as exc:
            self.close()
            raise ServerError(f"server {self.host}:{self.port} closed the connection "
                              f"during login: {exc}") from None
        except ServerError:
            self.close()
            raise

    async def _negotiate_tls(self, storage: Storage) -> None:
        """libpq's sslmode semantics: SSLRequest, one byte 'S' or 'N', then the handshake.
        allow/prefer fall back to plaintext on 'N'; require and verify_* insist on TLS."""
        ctx = tls.storage_context(storage)
        self.link.write(build_ssl_request())
        answer = await self.link.read()
        if answer == b"N":
            if storage.tls in tls.STORAGE_TLS_ONLY:
                raise ServerError(f"server {self.host}:{self.port} does not support TLS but "
                                  f"storage {storage.name!r} has tls {storage.tls!r}")
            return
        if answer[:1] == b"E":
            raise ServerError(f"server {self.host}:{self.port} refused the SSLRequest")
        if answer != b"S":
            # more than one byte: someone injected data before the handshake (CVE-2021-23222)
            raise ProtocolError(f"unexpected answer to SSLRequest: {answer[:8]!r}")
        hostname = self.host if storage.tls == "verify_full" else None
        await tls.start_tls(self.link, ctx, server_side=False, server_hostname=hostname)

    async def _login(self, user: str, password: str | None) -> None:
        reader = MessageReader(self.max_message)
        scram: scramp.ScramClient | None = None
        while True:
            mtype, body = await self.link.read_message(reader)
            message = parse_backend(mtype, body)
            if isinstance(message, Authentication):
                scram = self._answer_auth(message, user, password, scram)
            elif isinstance(message, ParameterStatus):
                self.params[message.name] = message.value
            elif isinstance(message, BackendKeyData):
                self.backend_pid, self.backend_secret = message.pid, message.secret
            elif isinstance(message, ReadyForQuery):
                self.status = message.status
                rest = reader.take_rest()
                if rest:
                    raise ProtocolError("server sent data after ReadyForQuery during login")
                return
            elif isinstance(message, ErrorResponse):
                raise ServerError(message.message, message.sqlstate or SqlState.CONNECTION_FAILURE,
                                  error=message)
            # NoticeResponse and NegotiateProtocolVersion during login are ignored.

    def _answer_auth(self, message: Authentication, user: str, password: str | None,
                     scram: scramp.ScramClient | None) -> scramp.ScramClient | None:
        code = message.code
        if code == AuthCode.OK:
            return scram
        if code in (AuthCode.CLEARTEXT, AuthCode.MD5, AuthCode.SASL) and password is None:
            raise ServerError(f'server asked for a password for user "{user}" but the route has '
                              f"no storage_password", SqlState.INVALID_PASSWORD)
        assert password is not None or code not in (AuthCode.CLEARTEXT, AuthCode.MD5, AuthCode.SASL)
        if code == AuthCode.CLEARTEXT:
            self.link.write(build_password(password or ""))
        elif code == AuthCode.MD5:
            self.link.write(build_password(md5_password_hash(user, password or "", message.salt)))
        elif code == AuthCode.SASL:
            if "SCRAM-SHA-256" not in message.mechanisms:
                raise ServerError(f"server offers unsupported SASL mechanisms {message.mechanisms}")
            scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password or "")
            first = scram.get_client_first().encode()
            self.link.write(build_sasl_initial_response("SCRAM-SHA-256", first))
        elif code == AuthCode.SASL_CONTINUE and scram is not None:
            try:
                scram.set_server_first(message.data.decode())
            except scramp.ScramException as exc:
                raise ServerError(f"SCRAM exchange with server failed: {exc}") from None
            self.link.write(build_sasl_response(scram.get_client_final().encode()))
        elif code == AuthCode.SASL_FINAL and scram is not None:
            try:
                scram.set_server_final(message.data.decode())
            except scramp.ScramException as exc:
                raise ServerError(f"server SCRAM signature is invalid: {exc}") from None
        else:
            raise ServerError(f"server asked for unsupported authentication (code {int(code)})",
                              SqlState.FEATURE_NOT_SUPPORTED)
        return scram

    async def exchange(self, request: bytes, timeout: float
                       ) -> tuple[list[DataRow], ErrorResponse | None]:
        """Send a request of our own (not relaying) and read through its ReadyForQuery:
        returns the data rows and the error, if any; ParameterStatus updates self.params."""
        self.link.sink = None
        self.link.write(request)
        reader = MessageReader(self.max_message)
        rows: list[DataRow] = []
        failed: ErrorResponse | None = None
        async with asyncio.timeout(timeout):
            while True:
                mtype, body = await self.link.read_message(reader)
                if mtype in (b"D", b"E", b"S"):
                    message = parse_backend(mtype, body)
                    if isinstance(message, DataRow):
                        rows.append(message)
                    elif isinstance(message, ErrorResponse):
                        failed = message
                    elif isinstance(message, ParameterStatus):
                        self.params[message.name] = message.value
                elif mtype == b"Z":
                    self.status = body[:1]
                    break
        if reader.pending():
            raise ProtocolError("server sent data after ReadyForQuery")
        return rows, failed

    async def run_query(self, sql: str, timeout: float) -> None:
        """Run a reset/setup query while the server is not relaying; raise on error or timeout."""
        _rows, failed = await self.exchange(build_query(sql), timeout)
        if failed is not None:
            raise ServerError(f"{sql[:200]!r} failed on server: {failed.message}", failed.sqlstate)
        if "DISCARD ALL" in sql or "DEALLOCATE ALL" in sql:
            self.prepared.clear()
        if "DISCARD ALL" in sql or "RESET ALL" in sql:
            self.extra_settings.clear()

    def idle_sink(self, _data: bytes) -> None:
        """Link sink while nobody is attached: data from an idle server (a FATAL before
        PostgreSQL shuts down, a stray notice) means it can no longer be trusted: close it."""
        log.info("server %r sent data while idle; closing it", self)
        self.link.sink = None
        if self.pool is not None:
            self.pool.discard(self)  # type: ignore[attr-defined]
        else:
            self.close()

    def close(self) -> None:
        """Say goodbye if the socket is still up, then close it."""
        if not self.link.closed and self.link.transport is not None:
            self.link.sink = None
            self.link.write(build_terminate())
        self.link.close()
