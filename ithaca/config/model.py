"""The typed, immutable configuration model built from an odyssey.conf.

Field names are Odyssey's option names; defaults are Odyssey's defaults (ithaca's where noted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_LOG_FORMAT = "%p %t %l [%i %s] (%c) %m\n"


@dataclass(frozen=True, slots=True)
class Listen:
    """One `listen { }` block: where clients connect."""

    host: str | None = None  # None: unix socket only (needs unix_socket_dir)
    port: int = 6432
    backlog: int = 128
    tls: str = "disable"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    tls_protocols: str | None = None
    client_login_timeout: int = 15000  # ms
    # accepted, not implemented yet
    compression: bool = False
    target_session_attrs: str | None = None
    catchup_timeout: int = 0
    reserved_clients: int = -1
    storage: tuple[str, ...] = ()
    location: str = ""  # "FILE:LINE" of the block


@dataclass(frozen=True, slots=True)
class Storage:
    """One `storage "name" { }` block: a PostgreSQL server ("remote") or the console ("local")."""

    name: str
    type: str  # "remote" | "local"
    host: str | None = None  # may be a list "h1:p1,h2"; kept as written
    port: int = 5432
    tls: str = "disable"
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None
    tls_protocols: str | None = None
    # accepted, not implemented yet
    target_session_attrs: str | None = None
    server_max_routing: int = 0
    endpoints_status_poll_interval: int = 1000
    location: str = ""

    @property
    def is_local(self) -> bool:
        return self.type == "local"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `user` block inside a `database` block: how a (database, user) pair is served."""

    database: str | None  # None: `database default`
    user: str | None  # None: `user default`
    storage: Storage
    location: str  # "FILE:LINE" of the user block
    authentication: str  # none | block | clear_text | md5 | scram-sha-256 | cert
    password: str | None = field(default=None, repr=False)  # a secret: kept out of logs
    auth_common_name: tuple[str, ...] = ()
    auth_common_name_default: bool = False  # `auth_common_name default`: CN must equal the user
    auth_query: str | None = None
    auth_query_db: str | None = None
    auth_query_user: str | None = None
    password_passthrough: bool = False
    storage_db: str | None = None
    storage_user: str | None = None
    storage_password: str | None = field(default=None, repr=False)
    pool: str = "session"  # session | transaction | statement
    pool_size: int = 0  # 0 = unlimited
    min_pool_size: int = 0
    pool_timeout: int = 0  # ms, 0 = wait forever
    pool_ttl: int = 0  # s, 0 = never expire idle servers
    pool_discard: bool = True
    pool_cancel: bool = True
    pool_rollback: bool = True
    pool_reserve_prepared_statement: bool = False
    pool_client_idle_timeout: int = 0  # s
    pool_idle_in_transaction_timeout: int = 0  # s
    server_lifetime: int = 3600  # s
    client_max: int | None = None  # None = no limit
    application_name_add_host: bool = False
    maintain_params: bool = True
    role: str | None = None  # admin | stat | notallow (console rights)
    log_debug: bool = False
    log_query: bool = False
    # accepted, not implemented yet
    auth_pam_service: str | None = None
    pool_smart_discard: bool = False
    pool_discard_string: str | None = None
    pool_routing: str | None = None
    client_fwd_error: bool = False
    reserve_session_server_connection: bool = True
    quantiles: str | None = None
    target_session_attrs: str | None = None
    catchup_timeout: int = 0
    catchup_checks: int = 0
    shared_pool: str | None = None
    ldap_endpoint_name: str | None = None
    ldap_storage_credentials_attr: str | None = None
    ldap_pool_size: int = 0
    ldap_pool_timeout: int = 0
    ldap_pool_ttl: int = 0

    @property
    def is_default_db(self) -> bool:
        return self.database is None

    @property
    def is_default_user(self) -> bool:
        return self.user is None

    def effective_storage_db(self, client_db: str) -> str:
        """The database name to ask PostgreSQL for."""
        return self.storage_db if self.storage_db else client_db

    def effective_storage_user(self, client_user: str) -> str:
        """The user name to log in to PostgreSQL as."""
        return self.storage_user if self.storage_user else client_user


def _empty_storages() -> Mapping[str, Storage]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration: global options, listens, storages and rules."""

    path: str
    daemonize: bool = False
    pid_file: str | None = None
    unix_socket_dir: str | None = None
    unix_socket_mode: str | None = None
    log_file: str | None = None
    log_format: str = DEFAULT_LOG_FORMAT
    log_to_stdout: bool = True
    log_debug: bool = False
    log_config: bool = False
    log_session: bool = True
    log_query: bool = False
    log_stats: bool = True
    stats_interval: int = 3  # s
    workers: int = 1  # 0 = `workers "auto"`: one per CPU
    readahead: int = 8192
    nodelay: bool = True
    keepalive: int = 15  # s, 0 = off
    client_max: int | None = None  # None = no limit
    graceful_shutdown_timeout_ms: int = 30000
    backend_connect_timeout_ms: int = 30000
    max_sigterms_to_die: int = 2  # Odyssey: 3; ithaca: the second signal exits
    # accepted, not implemented yet
    sequential_routing: bool = False
    priority: int = 0
    locks_dir: str | None = None
    log_syslog: bool = False
    log_syslog_ident: str = "odyssey"
    log_syslog_facility: str = "daemon"
    promhttp_server_port: int | None = None
    log_general_stats_prom: bool = False
    log_route_stats_prom: bool = False
    resolvers: int = 1
    pipeline: int | None = None
    cache: int | None = None
    cache_chunk: int | None = None
    cache_coroutine: int = 0
    cache_msg_gc_size: int = 0
    coroutine_stack_size: int = 4
    keepalive_keep_interval: int = 5
    keepalive_probes: int = 3
    keepalive_usr_timeout: int = 0
    client_max_routing: int = 0
    server_login_retry: int = 1
    hba_file: str | None = None
    graceful_die_on_errors: bool = False
    availability_zone: str | None = None
    enable_online_restart: bool = False
    bindwith_reuseport: bool = False
    group_checker_interval: int = 7000
    # sections
    listens: tuple[Listen, ...] = ()
    storages: Mapping[str, Storage] = field(default_factory=_empty_storages)
    rules: tuple[Rule, ...] = ()
    warnings: tuple[str, ...] = ()
    _rule_index: Mapping[tuple[str | None, str | None], Rule] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Rules are unique per (database, user); the parser rejects duplicates. If a caller
        # builds a Config by hand with duplicates, the first one wins, as in the config file.
        index: dict[tuple[str | None, str | None], Rule] = {}
        for rule in self.rules:
            index.setdefault((rule.database, rule.user), rule)
        object.__setattr__(self, "_rule_index", MappingProxyType(index))

    def match_rule(self, database: str, user: str) -> Rule | None:
        """Odyssey's order: (db, user), (db, default), (default, user), (default, default)."""
        for key in ((database, user), (database, None), (None, user), (None, None)):
            rule = self._rule_index.get(key)
            if rule is not None:
                return rule
        return None
