"""Router: matches a client's (database, user) to a config rule, keeps one route (server pool,
client count, cached server parameters) per rule and storage database/user, enforces
client_max per route and globally, and applies a reloaded config to existing routes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .config import Config, Rule, Storage
from .pool import ServerPool
from .protocol import SqlState
from .server import ServerConn, ServerError

log = logging.getLogger("ithaca.router")

RuleKey = tuple[str | None, str | None]  # (database, user) as written; None = default


class RouteError(Exception):
    """The client cannot be routed; carries the SQLSTATE and message for its ErrorResponse."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(eq=False, slots=True)
class Route:
    rule: Rule  # the current rule; clients keep the one they logged in with
    database: str  # PostgreSQL database the servers log into
    user: str  # PostgreSQL role the servers log into
    pool: ServerPool
    clients: int = 0
    server_params: dict[str, str] | None = None  # ParameterStatus values from the last login
    max_message: int = 1 << 30
    removed: bool = False  # its rule is gone after a reload: drain, take no new clients

    @property
    def name(self) -> str:
        return f"{self.database}.{self.user}"


def _rule_key(rule: Rule) -> RuleKey:
    return (rule.database, rule.user)


def _endpoint(storage: Storage) -> tuple[str | None, int, str]:
    return (storage.host, storage.port, storage.tls)


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes: dict[tuple[RuleKey, str, str, str | None], Route] = {}
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

    def route_for(self, rule: Rule, database: str, user: str,
                  password: str | None = None) -> Route:
        """The route of a rule for a client's database and user (created on first use).
        `password` is the client's own, used for the servers only with password_passthrough."""
        storage_db = rule.storage_db or database
        storage_user = rule.storage_user or user
        passthrough = password if rule.password_passthrough and not rule.storage_password \
            else None
        key = (_rule_key(rule), storage_db, storage_user, passthrough)
        route = self.routes.get(key)
        if route is None or route.removed:
            route = self._new_route(rule, storage_db, storage_user, passthrough)
            self.routes[key] = route
        return route

    def _new_route(self, rule: Rule, storage_db: str, storage_user: str,
                   passthrough: str | None) -> Route:
        config = self.config

        async def connect() -> ServerConn:
            current = route.rule  # follows reloads
            storage = current.storage
            timeout_ms = self.config.backend_connect_timeout_ms
            server = ServerConn(storage.host or "127.0.0.1", storage.port,
                                max_message=route.max_message)
            await server.connect(storage_db, storage_user,
                                 current.storage_password or passthrough,
                                 timeout_ms / 1000 if timeout_ms else None, storage=storage)
            log.debug("%s: new server %r", route.name, server)
            route.server_params = dict(server.params)
            return server

        pool = ServerPool(f"{storage_db}.{storage_user}", connect, rule.pool_size,
                          rule.pool_timeout, config.backend_connect_timeout_ms)
        pool.server_lifetime = rule.server_lifetime
        route = Route(rule, storage_db, storage_user, pool)
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
        if route.removed and route.clients == 0:
            self._drop(route)

    def _drop(self, route: Route) -> None:
        route.pool.close()
        for key, value in list(self.routes.items()):
            if value is route:
                del self.routes[key]

    def reload(self, new: Config) -> list[str]:
        """Swap in a new config; returns a short report of what changed."""
        old = self.config
        report = _diff_rules(old, new)
        self.config = new
        new_rules = {_rule_key(rule): rule for rule in new.rules}
        for route in list(self.routes.values()):
            rule = new_rules.get(_rule_key(route.rule))
            if rule is None:
                route.removed = True
                route.pool.pool_size = route.rule.pool_size
                if route.clients == 0:
                    self._drop(route)
                continue
            storage_changed = _endpoint(rule.storage) != _endpoint(route.rule.storage) or \
                rule.storage_password != route.rule.storage_password
            route.rule = rule
            route.pool.reconfigure(rule.pool_size, rule.pool_timeout,
                                   new.backend_connect_timeout_ms, rule.server_lifetime,
                                   storage_changed)
        return report

    def prepare_routes(self) -> None:
        """Create the routes of rules that name both database and user, so min_pool_size
        servers are opened before the first client (default rules wait for one)."""
        for rule in self.config.rules:
            if rule.database is not None and rule.user is not None \
                    and rule.min_pool_size and not rule.storage.is_local:
                self.route_for(rule, rule.database, rule.user)

    def close(self) -> None:
        for route in self.routes.values():
            route.pool.close()


def _describe(key: RuleKey) -> str:
    database, user = key
    return f"{database or 'default'}.{user or 'default'}"


_COMPARED = ("authentication", "pool", "pool_size", "pool_timeout", "pool_ttl", "client_max",
             "storage_db", "storage_user", "pool_discard", "pool_rollback", "pool_cancel",
             "min_pool_size", "server_lifetime", "pool_client_idle_timeout",
             "pool_idle_in_transaction_timeout", "pool_reserve_prepared_statement")


def _diff_rules(old: Config, new: Config) -> list[str]:
    before = {_rule_key(rule): rule for rule in old.rules}
    after = {_rule_key(rule): rule for rule in new.rules}
    report = []
    for key in after.keys() - before.keys():
        report.append(f"rule {_describe(key)} added")
    for key in before.keys() - after.keys():
        report.append(f"rule {_describe(key)} removed (its clients finish on the old rule)")
    for key in before.keys() & after.keys():
        a, b = before[key], after[key]
        changes = [f"{name} {getattr(a, name)!r} -> {getattr(b, name)!r}" for name in _COMPARED
                   if getattr(a, name) != getattr(b, name)]
        if _endpoint(a.storage) != _endpoint(b.storage):
            changes.append(f"storage {_endpoint(a.storage)} -> {_endpoint(b.storage)}")
        if a.password != b.password:
            changes.append("password changed")
        if a.storage_password != b.storage_password:
            changes.append("storage_password changed")
        if changes:
            report.append(f"rule {_describe(key)}: " + ", ".join(changes))
    for name in ("client_max", "log_debug", "log_session", "log_query", "stats_interval",
                 "graceful_shutdown_timeout_ms", "backend_connect_timeout_ms"):
        if getattr(old, name) != getattr(new, name):
            report.append(f"{name} {getattr(old, name)!r} -> {getattr(new, name)!r}")
    if [(x.host, x.port) for x in old.listens] != [(x.host, x.port) for x in new.listens]:
        report.append("listen addresses changed: takes effect after a restart")
    return sorted(report)


__all__ = ["Route", "RouteError", "Router", "ServerError"]
