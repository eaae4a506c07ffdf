"""One task per client: startup packet (SSL/GSS refusal, cancel requests, protocol version
negotiation), routing, authentication, the login reply, then the relay until the client leaves."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from .auth import AuthError, authenticate_client
from .link import Link, LinkClosed
from .protocol import (
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
from .relay import Relay
from .router import Route, RouteError
from .server import ServerConn, ServerError

if TYPE_CHECKING:
    from .system import System

log = logging.getLogger("ithaca.client")

_client_ids = itertools.count(1)


class Client:
    """A connected client: its link, identity, route and relay."""

    def __init__(self, system: System, link: Link) -> None:
        self.system = system
        self.link = link
        self.id = f"c{next(_client_ids)}"
        self.database = ""
        self.user = ""
        self.route: Route | None = None
        self.relay: Relay | None = None
        self.server: ServerConn | None = None  # attached right now (for cancel and views)
        self.cancel_pid = 0
        self.task: asyncio.Task[None] | None = None
        self._startup_rest = b""

    def __repr__(self) -> str:
        return f"<Client {self.id} {self.user}@{self.database} from {self.link.peername()}>"

    def cancel_target(self) -> tuple[str, int, int, int] | None:
        server = self.server
        if server is None or server.closed:
            return None
        return server.host, server.port, server.backend_pid, server.backend_secret

    def _set_server(self, server: ServerConn | None) -> None:
        self.server = server

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
            relay = Relay(self.link, self.route, self.id, on_server_attached=self._set_server)
            self.relay = relay
            relay.start(rest)
            reason = await relay.done
            if config.log_session:
                log.info("%s: session ended: %s", self.id, reason)
        except (ProtocolError, AuthError, RouteError, ServerError) as exc:
            self._refuse(exc)
        except LinkClosed:
            log.debug("%s: client closed the connection during login", self.id)
        except asyncio.CancelledError:
            pass
        finally:
            self._cleanup()

    def _refuse(self, exc: ProtocolError | AuthError | RouteError | ServerError) -> None:
        sqlstate = exc.sqlstate
        message = exc.message
        if isinstance(exc, ServerError) and exc.error is not None:
            log.info("%s: server refused login: %s", self.id, message)
        else:
            log.info("%s: login refused (%s): %s", self.id, sqlstate, message)
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
        reader = StartupReader()
        while True:
            packet = reader.next_packet()
            if packet is None:
                reader.feed(await self.link.read())
                continue
            if isinstance(packet, SSLRequest | GSSENCRequest):
                if reader.take_rest():
                    raise ProtocolError("client sent data before the SSL/GSS answer")
                self.link.write(b"N")
                continue
            if isinstance(packet, CancelRequest):
                await self.system.cancels.cancel(packet.pid, packet.secret)
                self.link.close()
                return None
            assert isinstance(packet, StartupMessage)
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
        rule = system.router.match(self.database, self.user)
        route = system.router.route_for(rule, self.database, self.user)
        reader = MessageReader(route.max_message)
        reader.feed(self._startup_rest)
        await authenticate_client(self.link, reader, rule.authentication, self.user, rule.password)
        system.router.admit(route)
        self.route = route
        self.link.write(build_auth_ok())
        if rule.storage.type == "local":
            return reader, b""
        if route.server_params is None:
            server = await route.pool.acquire()  # learn server_version & co. from a real login
            route.pool.release(server)
        self.cancel_pid, secret = system.cancels.register(self)
        params = dict(route.server_params or {})
        out = [build_parameter_status(name, value) for name, value in params.items()]
        out.append(build_backend_key_data(self.cancel_pid, secret))
        out.append(build_ready_for_query(b"I"))
        self.link.write(b"".join(out))
        if system.config.log_session:
            log.info("%s: login %s@%s from %s, route %s (%s pooling)", self.id, self.user,
                     self.database, self.link.peername(), route.name, rule.pool)
        return reader, reader.take_rest()
