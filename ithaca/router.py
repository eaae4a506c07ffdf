"""Router: matches a client's (database, user) to a config rule, keeps one route (server pool,
client count, cached server parameters) per rule and storage database/user, and enforces
client_max per route and globally."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .config import Config, Rule
from .pool import ServerPool
from .protocol import SqlState
from .server import ServerConn, ServerError

log = logging.getLogger("ithaca.router")


class RouteError(Exception):
    """The client cannot be routed; carries the SQLSTATE and message for its ErrorResponse."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(eq=False, slots=True)
class Route:
    rule: Rule
    database: str  # PostgreSQL database the servers log into
    user: str  # PostgreSQL role the servers log into
    pool: ServerPool
    clients: int = 0
    server_params: dict[str, str] | None = None  # ParameterStatus values from the last login
    max_message: int = 1 << 30
    password: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.database}.{self.user}"


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes: dict[tuple[int, str, str], Route] = {}
        self.clients = 0

    def match(self, database: str, user: str) -> Rule:
        rule = self.config.match_rule(database, user)
        if rule is None:
            raise RouteError(
                f'no route for database "{database}" and user "{user}" (no matching rule in '
                f"{self.config.path})",
                SqlState.INVALID_CATALOG_NAME,
            )
        return rule

    def route_for(self, rule: Rule, database: str, user: str) -> Route:
        storage_db = rule.storage_db or database
        storage_user = rule.storage_user or user
        key = (id(rule), storage_db, storage_user)
        route = self.routes.get(key)
        if route is None:
            storage = rule.storage
            host = storage.host or "127.0.0.1"
            port = storage.port
            timeout_ms = self.config.backend_connect_timeout_ms
            timeout = timeout_ms / 1000 if timeout_ms else None
            password = rule.storage_password

            async def connect() -> ServerConn:
                server = ServerConn(host, port, max_message=1 << 30)
                await server.connect(storage_db, storage_user, password, timeout)
                log.debug("%s: new server %r", route.name, server)
                route.server_params = dict(server.params)
                return server

            pool = ServerPool(f"{storage_db}.{storage_user}", connect, rule.pool_size,
                              rule.pool_timeout)
            route = Route(rule, storage_db, storage_user, pool, password=password)
            self.routes[key] = route
        return route

    def admit(self, route: Route) -> None:
        """Count a client in, or refuse it when a client_max limit is reached."""
        global_max = self.config.client_max
        if global_max is not None and self.clients >= global_max:
            raise RouteError(f"too many connections: client_max {global_max} reached",
                             SqlState.TOO_MANY_CONNECTIONS)
        route_max = route.rule.client_max
        if route_max is not None and route.clients >= route_max:
            raise RouteError(
                f"too many connections for route {route.name}: client_max {route_max} reached",
                SqlState.TOO_MANY_CONNECTIONS,
            )
        self.clients += 1
        route.clients += 1

    def leave(self, route: Route) -> None:
        self.clients -= 1
        route.clients -= 1

    def close(self) -> None:
        for route in self.routes.values():
            route.pool.close()


__all__ = ["Route", "RouteError", "Router", "ServerError"]
