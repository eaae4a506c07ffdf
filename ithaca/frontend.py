"""One task per client: startup packet (SSL/GSS refusal, cancel requests, protocol version
negotiation), routing, authentication, the login reply, then the relay until the client leaves."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket as _socket
from typing import TYPE_CHECKING

from . import auth as _auth
from . import tls as _tls
from .auth import AuthError, authenticate_client
from .config import Listen, Rule
from .link import Link, LinkClosed
from .params import ClientParams, ParamsError
from .protocol import (
    DEFAULT_MAX_MESSAGE,
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    ProtocolError,
    SqlState,
    SSLRequest,
    StartupMessage,
    StartupReader,
    build_auth_ok,
    build_backend_key_data,
    build_error,
    build_negotiate_protocol_version,
    build_parameter_status,
    build_ready_for_query,
)
from .pstmt import PreparedRelay
from .relay import Relay
from .router import Route, RouteError
from .server import ServerConn, ServerError

if TYPE_CHECKING:
    from .system import System

log = logging.getLogger("ithaca.client")

_client_ids = itertools.count(1)


class ClientLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Log records that carry the client's id, user, database and address, and the id of the
    server attached right now, for log_format's %i %s %u %d %h %r."""

    def __init__(self, logger: logging.Logger, client: Client) -> None:
        super().__init__(logger, {})
        self.client = client

    def process(self, msg, kwargs):  # type: ignore[no-untyped-def]
        client = self.client
        host, _, port = client.link.peername().rpartition(":")
        kwargs["extra"] = {
            "client_id": client.id,
            "server_id": client.server.id if client.server is not None else "none",
            "user": client.user or "none", "database": client.database or "none",
            "client_host": host or "none", "client_port": port or "none",
        }
        return msg, kwargs


class Client:
    """A connected client: its link, identity, route and relay."""

    def __init__(self, system: System, link: Link) -> None:
        self.system = system
        self.link = link
        self.id = f"c{next(_client_ids)}"
        self.log = ClientLog(log, self)
        self.database = ""
        self.user = ""
        self.route: Route | None = None
        self.relay: Relay | None = None
        self.cancel_pid = 0
        self.task: asyncio.Task[None] | None = None
        self.params: ClientParams | None = None
        self.tls_info: _auth.TlsInfo = _auth.NO_TLS
        self._startup_rest = b""

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.user}@{self.database} from {self.link.peername()}>"

    @property
    def server(self) -> ServerConn | None:
        """The server attached to this client right now."""
        return self.relay.server if self.relay is not None else None

    def cancel_begin(self) -> ServerConn | None:
        """The server running this client's query, pinned until cancel_end (None: nothing)."""
        return self.relay.cancel_begin() if self.relay is not None else None

    def cancel_end(self, server: ServerConn) -> None:
        assert self.relay is not None  # cancel_begin returned a server, so there is a relay
        self.relay.cancel_end(server)

    async def _client_params(self, startup: StartupMessage, route: Route) -> dict[str, str]:
        """Remember the client's settings; return the ParameterStatus values it is told.
        Settings that differ from the server's are applied on a server right away, so the
        client hears PostgreSQL's spelling of them ('German' -> 'German, DMY') and a bad
        value fails the login as it would on PostgreSQL."""
        defaults = route.server_params or {}
        try:
            add_host = self.link.peername() if route.rule.application_name_add_host else None
            params = ClientParams(defaults, startup.params, add_host)
        except ParamsError as exc:
            raise ProtocolError(str(exc), SqlState.INVALID_PARAMETER_VALUE) from None
        self.params = params
        if route.rule.maintain_params and params.deploy_sql_needed(defaults):
            server = await route.pool.acquire()
            try:
                await params.deploy(server)
            except BaseException:
                route.pool.discard(server)
                raise
            route.pool.release(server)
        return params.view(defaults)

    def shutdown(self) -> None:
        """Graceful stop: end now if idle or still logging in, else after this transaction."""
        if self.relay is not None:
            self.relay.shutdown()
        else:
            self.stop("the pooler is shutting down", SqlState.ADMIN_SHUTDOWN)

    def stop(self, message: str, sqlstate: str) -> None:
        """End this client from outside (shutdown, admin kill, timeouts)."""
        if self.relay is not None:
            self.relay.fail(message, sqlstate)
        elif self.task is not None:
            self.link.write(build_error(sqlstate, message, severity="FATAL"))
            self.task.cancel()

    # -- the client's life ----------------------------------------------------------------------
    async def run(self) -> None:
        system = self.system
        config = system.config
        listen_timeout = system.login_timeout_for(self.link)
        try:
            try:
                async with asyncio.timeout(listen_timeout):
                    startup = await self._read_startup()
                    if startup is None:
                        return
                    reader, rest = await self._login(startup)
            except TimeoutError:
                raise ProtocolError("client did not finish login within client_login_timeout",
                                    SqlState.CONNECTION_FAILURE) from None
            assert self.route is not None
            if self.route.rule.storage.type == "local":
                await system.console.serve(self, reader)
                return
            assert self.params is not None
            rule = self.route.rule
            relay_class = PreparedRelay if rule.pool_reserve_prepared_statement and \
                rule.pool != "session" else Relay
            relay = relay_class(self.link, self.route, self.log, self.params)
            self.relay = relay
            relay.start(rest)
            reason = await relay.done
            if config.log_session:
                self.log.info("session ended: %s", reason)
        except (ProtocolError, AuthError, RouteError, ServerError) as exc:
            self._refuse(exc)
        except LinkClosed:
            self.log.debug("client closed the connection during login")
        except asyncio.CancelledError:
            pass
        finally:
            self._cleanup()

    def _refuse(self, exc: ProtocolError | AuthError | RouteError | ServerError) -> None:
        sqlstate = exc.sqlstate
        message = exc.message
        if isinstance(exc, ServerError) and exc.error is not None:
            self.log.info("server refused login: %s", message)
        else:
            self.log.info("login refused (%s): %s", sqlstate, message)
        self.link.write(build_error(sqlstate, message, severity="FATAL"))
        self.link.close()

    def _cleanup(self) -> None:
        if self.relay is not None and not self.relay.finished:
            self.relay.finish("client task ended")
        if self.route is not None:
            self.system.router.leave(self.route)
            self.route = None
        if self.cancel_pid:
            self.system.cancels.unregister(self.cancel_pid)
        self.link.close()
        self.system.clients.discard(self)

    async def _read_startup(self) -> StartupMessage | None:
        listen = _current_listen(self.system, getattr(self.link, "listen", None))
        tls_mode = listen.tls if listen is not None else "disable"
        self.tls_info = _auth.NO_TLS
        reader = StartupReader()
        while True:
            packet = reader.next_packet()
            if packet is None:
                reader.feed(await self.link.read())
                continue
            if isinstance(packet, SSLRequest | GSSENCRequest):
                if reader.take_rest() or self.link.take_queued():
                    raise ProtocolError("client sent data before the SSL/GSS answer")
                if isinstance(packet, GSSENCRequest) or tls_mode == "disable":
                    self.link.write(b"N")
                    continue
                self.tls_info = await _accept_tls(self.link, listen, self.log)
                continue
            if isinstance(packet, CancelRequest):
                await self.system.cancels.cancel(packet.pid, packet.secret)
                self.link.close()
                return None
            assert isinstance(packet, StartupMessage)
            if tls_mode in _tls.LISTEN_TLS_ONLY and not self.tls_info.encrypted:
                raise AuthError("SSL required", SqlState.INVALID_AUTHORIZATION_SPECIFICATION)
            self._startup_rest = reader.take_rest()
            return packet

    async def _login(self, startup: StartupMessage) -> tuple[MessageReader, bytes]:
        system = self.system
        self.user = startup.user or ""
        self.database = startup.database or self.user
        if not self.user:
            raise ProtocolError("no PostgreSQL user name specified in startup packet",
                                SqlState.INVALID_AUTHORIZATION_SPECIFICATION)
        if "replication" in startup.params and startup.params["replication"] not in ("false",
                                                                                    "0", "no", "off"):
            raise ProtocolError("replication connections are not supported by ithaca",
                                SqlState.FEATURE_NOT_SUPPORTED)
        if startup.minor > 0 or startup.unrecognized_options:
            self.link.write(build_negotiate_protocol_version(0, list(startup.unrecognized_options)))
        tls_info = self.tls_info
        hba_method = _check_hba(system, self.link, tls_info, self.database, self.user)
        rule = system.router.match(self.database, self.user)
        method = rule.authentication if hba_method == "allow" else hba_method
        reader = MessageReader()
        reader.feed(self._startup_rest)
        secret = await _client_secret(system, rule, method, self.user, self.log)
        given = await authenticate_client(
            self.link, reader, method, self.user, secret, tls=tls_info,
            common_names=rule.auth_common_name, common_name_default=rule.auth_common_name_default)
        del secret
        passthrough = given if rule.password_passthrough and not rule.storage_password else None
        del given
        if passthrough is not None:
            route = system.router.route_for(rule, self.database, self.user, password=passthrough)
        else:
            route = system.router.route_for(rule, self.database, self.user)
        del passthrough
        if route.max_message != DEFAULT_MAX_MESSAGE:
            limited = MessageReader(route.max_message)
            limited.feed(reader.take_rest())
            reader = limited
        system.router.admit(route)
        self.route = route
        self.link.write(build_auth_ok())
        if rule.storage.type == "local":
            return reader, b""
        if route.server_params is None:
            server = await route.pool.acquire()  # learn server_version & co. from a real login
            route.pool.release(server)
        self.cancel_pid, secret_key = system.cancels.register(self)
        params = await self._client_params(startup, route)
        out = [build_parameter_status(name, value) for name, value in params.items()]
        out.append(build_backend_key_data(self.cancel_pid, secret_key))
        out.append(build_ready_for_query(b"I"))
        self.link.write(b"".join(out))
        if system.config.log_session:
            self.log.info("login %s@%s from %s%s, route %s (%s pooling, %s)", self.user,
                     self.database, self.link.peername(), " (TLS)" if tls_info.encrypted else "",
                     route.name, rule.pool, method)
        return reader, reader.take_rest()


# -- login helpers: TLS on accept, hba_file, the secret to authenticate against ------------------


def _current_listen(system: System, listen: Listen | None) -> Listen | None:
    """The reloaded config's block for this listen address (TLS files and modes follow a reload
    even though the socket was opened with the old block)."""
    if listen is None:
        return None
    for candidate in system.config.listens:
        if candidate.host == listen.host and candidate.port == listen.port:
            return candidate
    return listen


async def _accept_tls(link: Link, listen: Listen, clog: ClientLog) -> _auth.TlsInfo:
    """Answer an SSLRequest with 'S' and run the server-side handshake."""
    try:
        ctx, channel_binding = _tls.listen_context(listen)
    except _tls.TlsConfigError as exc:
        clog.error("%s", exc.message)
        raise ProtocolError("TLS is not available: the pooler's TLS setup is broken (see its "
                            "log)", SqlState.CONNECTION_FAILURE) from None
    link.write(b"S")
    try:
        await _tls.start_tls(link, ctx, server_side=True)
    except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
        clog.info("TLS handshake with %s failed: %s", link.peername(), exc)
        raise LinkClosed(f"TLS handshake failed: {exc}") from None
    return _auth.TlsInfo(encrypted=True, channel_binding=channel_binding,
                         peer_common_name=_tls.peer_common_name(link))


def _check_hba(system: System, link: Link, tls_info: _auth.TlsInfo, database: str,
               user: str) -> str:
    """The hba_file's verdict: "allow" (use the route's method), "md5" or "scram-sha-256";
    raise AuthError (28000) when refused or when the file cannot be used."""
    config = system.config
    if not config.hba_file:
        return "allow"
    try:
        rules = _auth.hba_cache.rules_for(config, config.hba_file)
    except _auth.HbaError as exc:
        log.error("%s", exc)
        raise AuthError("hba_file is invalid, no connection is allowed (see the pooler log)",
                        SqlState.INVALID_AUTHORIZATION_SPECIFICATION) from None
    transport = link.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    local = sock is not None and sock.family == _socket.AF_UNIX
    peer = transport.get_extra_info("peername") if transport is not None else None
    address = peer[0] if isinstance(peer, tuple) and peer else None
    try:
        return rules.check(local=local, ssl=tls_info.encrypted, address=address,
                           database=database, user=user)
    except _auth.HbaRefused as exc:
        raise AuthError(exc.message, exc.sqlstate) from None


async def _client_secret(system: System, rule: Rule, method: str, user: str,
                         clog: ClientLog) -> str | None:
    """The secret a password method checks against: the auth_query's answer when the rule has
    one, else the rule's `password`. None (unknown) still runs the exchange and fails."""
    if method not in ("clear_text", "md5", "scram-sha-256"):
        return None
    if not rule.auth_query:
        return rule.password
    try:
        secret = await _auth.fetch_secret(system.router, rule, user)
    except _auth.AuthQueryFailed as exc:
        clog.warning("%s", exc)
        return None
    if secret is None:
        clog.debug("auth_query found no secret for the user")
    return secret
