"""Every option ithaca reads, per block: its value kind and whether ithaca implements it.

To move an option from "accepted, warns" to "implemented", flip `implemented` here (one place).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ValueKind(enum.Enum):
    BOOL = "yes or no"
    UINT = "a non-negative integer"
    INT = "an integer"
    STR = "a string"
    ENUM = "one of"  # a string from OptionSpec.choices
    WORKERS = 'an integer or "auto"'
    COMMON_NAME = "a string or default"  # auth_common_name, repeatable
    STR_LIST = "a string (repeatable)"
    BLOCK = "a block"  # a whole sub-block ithaca skips over


@dataclass(frozen=True, slots=True)
class OptionSpec:
    kind: ValueKind
    implemented: bool
    choices: tuple[str, ...] = ()


def _yes(kind: ValueKind, *choices: str) -> OptionSpec:
    return OptionSpec(kind, True, choices)


def _warn(kind: ValueKind, *choices: str) -> OptionSpec:
    return OptionSpec(kind, False, choices)


B, U, SI, S, E = ValueKind.BOOL, ValueKind.UINT, ValueKind.INT, ValueKind.STR, ValueKind.ENUM
TLS_MODES = ("disable", "allow", "prefer", "require", "verify_ca", "verify_full")
AUTH_METHODS = ("none", "block", "clear_text", "md5", "scram-sha-256", "cert")
POOL_MODES = ("session", "transaction", "statement")
STORAGE_TYPES = ("remote", "local")

GLOBAL_OPTIONS: dict[str, OptionSpec] = {
    # implemented
    "daemonize": _yes(B),
    "pid_file": _yes(S),
    "unix_socket_dir": _yes(S),
    "unix_socket_mode": _yes(S),
    "log_file": _yes(S),
    "log_format": _yes(S),
    "log_to_stdout": _yes(B),
    "log_debug": _yes(B),
    "log_config": _yes(B),
    "log_session": _yes(B),
    "log_query": _warn(B),
    "log_stats": _yes(B),
    "stats_interval": _yes(U),
    "workers": _yes(ValueKind.WORKERS),
    "readahead": _warn(U),
    "nodelay": _yes(B),
    "keepalive": _yes(U),
    "client_max": _yes(U),
    "graceful_shutdown_timeout_ms": _yes(U),
    "backend_connect_timeout_ms": _yes(U),
    "max_sigterms_to_die": _yes(U),
    "hba_file": _yes(S),
    # accepted, warns
    "sequential_routing": _warn(B),
    "priority": _warn(SI),
    "locks_dir": _warn(S),
    "log_syslog": _warn(B),
    "log_syslog_ident": _warn(S),
    "log_syslog_facility": _warn(S),
    "promhttp_server_port": _warn(U),
    "log_general_stats_prom": _warn(B),
    "log_route_stats_prom": _warn(B),
    "resolvers": _warn(U),
    "pipeline": _warn(U),
    "cache": _warn(U),
    "cache_chunk": _warn(U),
    "cache_coroutine": _warn(U),
    "cache_msg_gc_size": _warn(U),
    "coroutine_stack_size": _warn(U),
    "keepalive_keep_interval": _yes(U),
    "keepalive_probes": _yes(U),
    "keepalive_usr_timeout": _yes(SI),
    "client_max_routing": _warn(U),
    "server_login_retry": _warn(U),
    "graceful_die_on_errors": _warn(B),
    "availability_zone": _warn(S),
    "enable_online_restart": _warn(B),
    "bindwith_reuseport": _warn(B),
    "group_checker_interval": _warn(U),
    # whole sections ithaca skips (with a warning)
    "online_restart_drop_options": _warn(ValueKind.BLOCK),
    "soft_oom": _warn(ValueKind.BLOCK),
    "query_parsing": _warn(ValueKind.BLOCK),
    "shared_pool": _warn(ValueKind.BLOCK),
    "ldap_endpoint": _warn(ValueKind.BLOCK),
}

LISTEN_OPTIONS: dict[str, OptionSpec] = {
    "host": _yes(S),
    "port": _yes(U),
    "backlog": _yes(U),
    "tls": _yes(E, *TLS_MODES),
    "tls_cert_file": _yes(S),
    "tls_key_file": _yes(S),
    "tls_ca_file": _yes(S),
    "tls_protocols": _yes(S),
    "client_login_timeout": _yes(U),
    "compression": _warn(B),
    "target_session_attrs": _warn(S),
    "catchup_timeout": _warn(U),
    "reserved_clients": _warn(SI),
    "storage": _warn(ValueKind.STR_LIST),
    "balancing": _warn(ValueKind.BLOCK),
}

STORAGE_OPTIONS: dict[str, OptionSpec] = {
    "type": _yes(E, *STORAGE_TYPES),
    "host": _yes(S),
    "port": _yes(U),
    "tls": _yes(E, *TLS_MODES),
    "tls_cert_file": _yes(S),
    "tls_key_file": _yes(S),
    "tls_ca_file": _yes(S),
    "tls_protocols": _yes(S),
    "target_session_attrs": _warn(S),
    "server_max_routing": _warn(U),
    "endpoints_status_poll_interval": _warn(U),
    "balancing": _warn(ValueKind.BLOCK),
    "watchdog": _warn(ValueKind.BLOCK),
}

RULE_OPTIONS: dict[str, OptionSpec] = {
    # implemented
    "authentication": _yes(E, *AUTH_METHODS),
    "password": _yes(S),
    "auth_common_name": _yes(ValueKind.COMMON_NAME),
    "auth_query": _yes(S),
    "auth_query_db": _yes(S),
    "auth_query_user": _yes(S),
    "password_passthrough": _yes(B),
    "storage": _yes(S),
    "storage_db": _yes(S),
    "storage_user": _yes(S),
    "storage_password": _yes(S),
    "pool": _yes(E, *POOL_MODES),
    "pool_size": _yes(U),
    "min_pool_size": _yes(U),
    "pool_timeout": _yes(U),
    "pool_ttl": _yes(U),
    "pool_discard": _yes(B),
    "pool_cancel": _yes(B),
    "pool_rollback": _yes(B),
    "pool_reserve_prepared_statement": _yes(B),
    "pool_client_idle_timeout": _yes(U),
    "pool_idle_in_transaction_timeout": _yes(U),
    "server_lifetime": _yes(U),
    "client_max": _yes(U),
    "application_name_add_host": _yes(B),
    "maintain_params": _yes(B),
    "role": _yes(E, "admin", "stat", "notallow"),
    "log_debug": _warn(B),
    "log_query": _warn(B),
    # accepted, warns
    "auth_pam_service": _warn(S),
    "pool_smart_discard": _warn(B),
    "pool_discard_string": _warn(S),
    "pool_routing": _warn(E, "internal", "client_visible"),
    "client_fwd_error": _warn(B),
    "reserve_session_server_connection": _warn(B),
    "quantiles": _warn(S),
    "target_session_attrs": _warn(S),
    "catchup_timeout": _warn(U),
    "catchup_checks": _warn(U),
    "shared_pool": _warn(S),
    "ldap_endpoint_name": _warn(S),
    "ldap_storage_credentials_attr": _warn(S),
    "ldap_pool_size": _warn(U),
    "ldap_pool_timeout": _warn(U),
    "ldap_pool_ttl": _warn(U),
    "ldap_storage_credentials": _warn(ValueKind.BLOCK),
}

# Values that equal Odyssey's "not set" and therefore do not warn: writing down the default of an
# unimplemented option changes nothing, and Odyssey's own sample config does it all the time.
NO_EFFECT_VALUES: dict[str, tuple[object, ...]] = {
    # ithaca always passes PostgreSQL's own login errors on (3D000, 28P01, ...): `yes`
    "client_fwd_error": (True,),
    "log_query": (False,),
    "log_debug": (False,),
    "log_syslog": (False,),
    "compression": (False,),
    "sequential_routing": (False,),
    "enable_online_restart": (False,),
    "bindwith_reuseport": (False,),
    "graceful_die_on_errors": (False,),
    "log_general_stats_prom": (False,),
    "log_route_stats_prom": (False,),
}
