"""System: one listen server per resolved listen address, the accept loop that starts a client
task per connection, and the shared parts clients use (router, cancel directory, console)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from .cancel import CancelDirectory
from .config import Config, Listen
from .console import Console
from .frontend import Client
from .link import Link, TcpOptions, set_tcp_options
from .periodic import Periodic
from .protocol import SqlState
from .router import Router

log = logging.getLogger("ithaca.system")


class System:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.cancels = CancelDirectory()
        self.console = Console()
        self.clients: set[Client] = set()
        self._servers: list[tuple[asyncio.Server, Listen]] = []
        self.periodic = Periodic(self)
        self._periodic_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open every listen address; raise OSError if one cannot be bound."""
        loop = asyncio.get_running_loop()
        config = self.config
        apply_tcp_options(config)
        for listen in config.listens:
            if listen.host is not None:
                host = None if listen.host == "*" else listen.host  # None: every address
                server = await loop.create_server(
                    lambda listen=listen: self._accept(listen),
                    host=host, port=listen.port, backlog=listen.backlog,
                    reuse_address=True,
                )
                self._opened(server, listen)
            if config.unix_socket_dir:
                path = os.path.join(config.unix_socket_dir, f".s.PGSQL.{listen.port}")
                if os.path.exists(path):
                    os.unlink(path)  # a stale socket file from an earlier run
                server = await loop.create_unix_server(
                    lambda listen=listen: self._accept(listen), path=path,
                    backlog=listen.backlog)
                if config.unix_socket_mode:
                    os.chmod(path, int(config.unix_socket_mode, 8))
                self._opened(server, listen)
        if not self._servers:
            raise OSError("no listen address: a listen block without host needs unix_socket_dir")
        self.router.prepare_routes()
        self._periodic_task = loop.create_task(self.periodic.run())

    def _opened(self, server: asyncio.Server, listen: Listen) -> None:
        self._servers.append((server, listen))
        for sock in server.sockets:
            log.info("listening on %s", _sockname(sock))

    def _accept(self, listen: Listen) -> Link:
        link = _AcceptedLink(self, listen)
        return link

    def login_timeout_for(self, link: Link) -> float | None:
        listen = getattr(link, "listen", None)
        timeout_ms = listen.client_login_timeout if listen is not None else 0
        return timeout_ms / 1000 if timeout_ms else None

    def reload(self, config: Config) -> list[str]:
        """Swap in a validated config: new clients use its rules; connected ones keep theirs."""
        report = self.router.reload(config)
        self.config = config
        apply_tcp_options(config)
        self.router.prepare_routes()
        return report

    def stop_accepting(self) -> None:
        for server, _listen in self._servers:
            server.close()

    async def shutdown(self, timeout: float) -> None:
        """Graceful stop: refuse new connections, close idle servers, let active clients end
        their current transaction within `timeout` seconds, then close everything."""
        self.stop_accepting()
        for route in self.router.routes.values():
            route.pool.close_idle()
        for client in list(self.clients):
            client.shutdown()
        tasks = [c.task for c in self.clients if c.task is not None and not c.task.done()]
        if tasks:
            log.info("waiting up to %.1f s for %d clients to finish", timeout, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("graceful_shutdown_timeout_ms passed: closing %d clients",
                            len(pending))
                for client in list(self.clients):
                    client.stop("terminating connection due to administrator command",
                                SqlState.ADMIN_SHUTDOWN)
                await asyncio.wait(pending, timeout=2)
        self.close()

    def close(self) -> None:
        self.stop_accepting()
        if self._periodic_task is not None:
            self._periodic_task.cancel()
        self.router.close()


class _AcceptedLink(Link):
    """A client link that starts its Client task once the connection is made."""

    __slots__ = ("system", "listen")

    def __init__(self, system: System, listen: Listen) -> None:
        super().__init__()
        self.system = system
        self.listen = listen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = Client(self.system, self)
        self.system.clients.add(client)
        client.task = asyncio.get_running_loop().create_task(client.run())


def apply_tcp_options(config: Config) -> None:
    set_tcp_options(TcpOptions(
        nodelay=config.nodelay, keepalive=config.keepalive,
        keepalive_interval=config.keepalive_keep_interval,
        keepalive_probes=config.keepalive_probes,
        user_timeout_ms=config.keepalive_usr_timeout))


def _sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)
