"""odyssey.conf parsing: typed values, defaults, includes, rule matching and warnings."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from ithaca.config import (
    Config,
    ConfigError,
    Listen,
    Rule,
    Storage,
    load_config,
    parse_config_text,
)
from ithaca.config.lexer import Kind, tokenize
from ithaca.config.options import (
    GLOBAL_OPTIONS,
    LISTEN_OPTIONS,
    RULE_OPTIONS,
    STORAGE_OPTIONS,
    ValueKind,
)

MINIMAL = """
listen { host "*" port 6432 }
storage "pg" { type "remote" host "127.0.0.1" port 5432 }
database default { user default { authentication "none" storage "pg" } }
"""

# The shape of Odyssey's own sample odyssey.conf (comments trimmed, values kept).
ODYSSEY_SAMPLE = r"""
###
### Odyssey configuration file.
###
daemonize no
# pid_file "/var/run/odyssey.pid"
unix_socket_dir "/tmp"
unix_socket_mode "0644"
log_format "%p %t %l [%i %s] (%c) %m\n"
log_to_stdout yes
log_syslog no
log_syslog_ident "odyssey"
log_syslog_facility "daemon"
log_debug no
log_config yes
log_session yes
log_query no
log_stats yes
stats_interval 60
workers 1
resolvers 1
readahead 8192
pipeline 32768
cache 100
cache_chunk 0
cache_coroutine 128
coroutine_stack_size 4
nodelay yes
keepalive 7200
# client_max 100

listen {
	host "*"
	port 6432
	backlog 128
#	tls "disable"
}

storage "postgres_server" {
	type "remote"
	host "localhost"
	port 5432
}

database default {
	user default {
		authentication "none"
		storage "postgres_server"
		pool "session"
		pool_size 0
		pool_timeout 0
		pool_ttl 60
		pool_cancel yes
		pool_rollback yes
		client_fwd_error no
		log_debug no
	}
}

storage "local" {
	type "local"
}

database "console" {
	user default {
		authentication "none"
		pool "session"
		storage "local"
	}
}
"""


def parse(text: str, path: str = "t.conf") -> Config:
    return parse_config_text(textwrap.dedent(text), path=path)


def test_odyssey_sample_parses_to_typed_values() -> None:
    cfg = parse(ODYSSEY_SAMPLE, "/etc/odyssey/odyssey.conf")
    assert cfg.path == "/etc/odyssey/odyssey.conf"
    assert cfg.daemonize is False
    assert cfg.pid_file is None
    assert cfg.unix_socket_dir == "/tmp"
    assert cfg.unix_socket_mode == "0644"
    assert cfg.log_format == "%p %t %l [%i %s] (%c) %m\n"
    assert cfg.log_to_stdout is True and cfg.log_config is True and cfg.log_debug is False
    assert cfg.stats_interval == 60
    assert cfg.workers == 1
    assert cfg.readahead == 8192
    assert cfg.pipeline == 32768 and cfg.cache == 100 and cfg.cache_chunk == 0
    assert cfg.cache_coroutine == 128 and cfg.coroutine_stack_size == 4
    assert cfg.nodelay is True and cfg.keepalive == 7200
    assert cfg.client_max is None

    assert cfg.listens == (
        Listen(host="*", port=6432, backlog=128, location="/etc/odyssey/odyssey.conf:32"),
    )
    assert set(cfg.storages) == {"postgres_server", "local"}
    pg = cfg.storages["postgres_server"]
    assert (pg.name, pg.type, pg.host, pg.port, pg.tls) == (
        "postgres_server",
        "remote",
        "localhost",
        5432,
        "disable",
    )
    assert cfg.storages["local"].is_local

    rule = cfg.match_rule("db", "alice")
    assert rule is not None
    assert rule.is_default_db and rule.is_default_user
    assert rule.storage is pg
    assert rule.authentication == "none"
    assert (rule.pool, rule.pool_size, rule.pool_timeout, rule.pool_ttl) == ("session", 0, 0, 60)
    assert rule.pool_cancel is True and rule.pool_rollback is True
    assert rule.location == "/etc/odyssey/odyssey.conf:46"

    console = cfg.match_rule("console", "anyone")
    assert console is not None and console.database == "console"
    assert console.storage.type == "local"


def test_sample_warns_only_for_unimplemented_options_that_take_effect() -> None:
    cfg = parse(ODYSSEY_SAMPLE, "o.conf")
    warned = [w.split("'")[1] for w in cfg.warnings]
    assert warned == [
        "log_syslog_ident",
        "log_syslog_facility",
        "resolvers",
        "readahead",
        "pipeline",
        "cache",
        "cache_chunk",
        "cache_coroutine",
        "coroutine_stack_size",
        "client_fwd_error",  # `no`: ithaca passes PostgreSQL's login errors on regardless
    ]
    assert cfg.warnings[0] == (
        "o.conf:12: option 'log_syslog_ident' is accepted but not supported by ithaca yet; "
        "it has no effect"
    )


def test_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.log_format == "%p %t %l [%i %s] (%c) %m\n"
    assert cfg.log_to_stdout is True
    assert cfg.stats_interval == 3
    assert cfg.workers == 1
    assert cfg.readahead == 8192
    assert cfg.nodelay is True
    assert cfg.keepalive == 15
    assert cfg.client_max is None
    assert cfg.graceful_shutdown_timeout_ms == 30000
    assert cfg.backend_connect_timeout_ms == 30000
    assert cfg.max_sigterms_to_die == 2
    assert cfg.warnings == ()
    listen = cfg.listens[0]
    assert (listen.backlog, listen.tls, listen.client_login_timeout) == (128, "disable", 15000)
    rule = cfg.rules[0]
    assert rule.pool == "session"
    assert rule.pool_size == 0 and rule.pool_timeout == 0 and rule.pool_ttl == 0
    assert rule.pool_discard is True and rule.pool_cancel is True and rule.pool_rollback is True
    assert rule.server_lifetime == 3600
    assert rule.client_max is None
    assert rule.maintain_params is True
    assert rule.password is None and rule.auth_common_name == ()


def test_model_is_immutable() -> None:
    cfg = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.storages["x"] = cfg.storages["pg"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rules[0].pool_size = 3  # type: ignore[misc]


def test_option_tables_match_model_fields() -> None:
    pairs = [
        (GLOBAL_OPTIONS, Config),
        (LISTEN_OPTIONS, Listen),
        (STORAGE_OPTIONS, Storage),
        (RULE_OPTIONS, Rule),
    ]
    for table, model in pairs:
        fields = {f.name for f in dataclasses.fields(model)}
        for name, spec in table.items():
            if spec.kind is not ValueKind.BLOCK:
                assert name in fields, (model.__name__, name)


def test_rule_options_typed() -> None:
    cfg = parse(
        """
        listen { host "127.0.0.1" port 7000 }
        storage "pg" { type "remote" host "h1:5433,h2" }
        database "app" {
            user "bob" {
                authentication "scram-sha-256"
                password "SCRAM-SHA-256$4096:abc"
                storage "pg"
                storage_db "real_app"
                storage_user "svc"
                storage_password "pw"
                pool "transaction"
                pool_size 20
                min_pool_size 2
                pool_timeout 4000
                pool_ttl 60
                pool_discard no
                pool_cancel no
                pool_rollback no
                pool_reserve_prepared_statement yes
                pool_client_idle_timeout 300
                pool_idle_in_transaction_timeout 30
                server_lifetime 600
                client_max 100
                application_name_add_host yes
                maintain_params no
                role "admin"
                log_debug yes
                log_query yes
                auth_common_name default
                auth_common_name "svc1"
                auth_common_name "svc2"
                auth_query "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
                auth_query_db "postgres"
                auth_query_user "auth"
                password_passthrough yes
            }
        }
        """
    )
    # per-route log_debug/log_query yes parse but have no effect yet
    assert [w.split("'")[1] for w in cfg.warnings] == ["log_debug", "log_query"]
    rule = cfg.rules[0]
    assert (rule.database, rule.user) == ("app", "bob")
    assert rule.storage.host == "h1:5433,h2" and rule.storage.port == 5432
    assert rule.authentication == "scram-sha-256"
    assert rule.password == "SCRAM-SHA-256$4096:abc"
    assert (rule.storage_db, rule.storage_user, rule.storage_password) == ("real_app", "svc", "pw")
    assert (rule.pool, rule.pool_size, rule.min_pool_size) == ("transaction", 20, 2)
    assert (rule.pool_timeout, rule.pool_ttl, rule.server_lifetime) == (4000, 60, 600)
    assert not (rule.pool_discard or rule.pool_cancel or rule.pool_rollback)
    assert rule.pool_reserve_prepared_statement is True
    assert (rule.pool_client_idle_timeout, rule.pool_idle_in_transaction_timeout) == (300, 30)
    assert rule.client_max == 100
    assert rule.application_name_add_host is True and rule.maintain_params is False
    assert rule.role == "admin" and rule.log_debug is True and rule.log_query is True
    assert rule.auth_common_name == ("svc1", "svc2") and rule.auth_common_name_default is True
    assert rule.auth_query.endswith("usename=$1")  # type: ignore[union-attr]
    assert (rule.auth_query_db, rule.auth_query_user) == ("postgres", "auth")
    assert rule.password_passthrough is True
    assert rule.effective_storage_db("app") == "real_app"
    assert rule.effective_storage_user("bob") == "svc"
    assert "pw" not in repr(rule) and "SCRAM" not in repr(rule)


def test_effective_storage_names_fall_back_to_client_names() -> None:
    rule = parse(MINIMAL).rules[0]
    assert rule.effective_storage_db("clientdb") == "clientdb"
    assert rule.effective_storage_user("clientuser") == "clientuser"


def test_listen_tls_and_global_typed() -> None:
    cfg = parse(
        """
        workers "auto"
        client_max 500
        pid_file "/run/ithaca.pid"
        log_file "/var/log/ithaca.log"
        graceful_shutdown_timeout_ms 1000
        backend_connect_timeout_ms 2000
        max_sigterms_to_die 5
        listen {
            host "0.0.0.0"
            port 6433
            backlog 16
            tls "verify_full"
            tls_cert_file "/c.pem"
            tls_key_file "/k.pem"
            tls_ca_file "/ca.pem"
            tls_protocols "tlsv1.2"
            client_login_timeout 5000
        }
        listen { port 6434 }
        storage "pg" { type "remote" tls "require" tls_ca_file "/sca.pem" }
        database default { user default { authentication "none" storage "pg" } }
        """
    )
    assert cfg.workers == 0  # "auto": one per CPU
    assert cfg.client_max == 500 and cfg.pid_file == "/run/ithaca.pid"
    assert cfg.log_file == "/var/log/ithaca.log"
    assert cfg.graceful_shutdown_timeout_ms == 1000 and cfg.backend_connect_timeout_ms == 2000
    assert cfg.max_sigterms_to_die == 5
    first, second = cfg.listens
    assert (first.host, first.port, first.backlog, first.tls) == (
        "0.0.0.0",
        6433,
        16,
        "verify_full",
    )
    assert (first.tls_cert_file, first.tls_key_file, first.tls_ca_file) == (
        "/c.pem",
        "/k.pem",
        "/ca.pem",
    )
    assert first.tls_protocols == "tlsv1.2" and first.client_login_timeout == 5000
    assert second.host is None and second.port == 6434
    storage = cfg.storages["pg"]
    assert storage.host is None and storage.tls == "require" and storage.tls_ca_file == "/sca.pem"


def test_comments_and_string_escapes() -> None:
    cfg = parse(
        r"""
        # a comment line
        log_format "a\tb \"q\" back\\slash %m\n" # trailing comment with "quotes" { }
        listen { host "*" } # } not a brace
        storage "p#g" { type "remote" }
        database default { user default { authentication "none" storage "p#g" } }
        """
    )
    assert cfg.log_format == 'a\tb "q" back\\slash %m\n'
    assert "p#g" in cfg.storages


def test_lexer_tokens_and_negative_integers() -> None:
    tokens = tokenize('priority -10\nname "x" {\n}\n', "f")
    assert [(t.kind, t.value, t.line) for t in tokens] == [
        (Kind.WORD, "priority", 1),
        (Kind.INT, -10, 1),
        (Kind.WORD, "name", 2),
        (Kind.STRING, "x", 2),
        (Kind.LBRACE, "{", 2),
        (Kind.RBRACE, "}", 3),
        (Kind.EOF, "", 4),
    ]
    cfg = parse(MINIMAL + "priority -10\nkeepalive_usr_timeout -1\n")
    assert cfg.priority == -10 and cfg.keepalive_usr_timeout == -1


def test_match_rule_order() -> None:
    cfg = parse(
        """
        listen { }
        storage "pg" { type "remote" }
        database default { user default { authentication "block" storage "pg" } }
        database default { user "alice" { authentication "md5" storage "pg" } }
        database "app" { user default { authentication "clear_text" storage "pg" } }
        database "app" { user "alice" { authentication "cert" storage "pg" } }
        """
    )

    def auth(db: str, user: str) -> str:
        rule = cfg.match_rule(db, user)
        assert rule is not None
        return rule.authentication

    assert auth("app", "alice") == "cert"  # exact
    assert auth("app", "bob") == "clear_text"  # db, default user
    assert auth("other", "alice") == "md5"  # default db, user
    assert auth("other", "bob") == "block"  # default, default


def test_match_rule_none_without_default() -> None:
    cfg = parse(
        """
        listen { }
        storage "pg" { type "remote" }
        database "app" { user "alice" { authentication "none" storage "pg" } }
        """
    )
    assert cfg.match_rule("app", "bob") is None
    assert cfg.match_rule("app", "alice") is not None


def test_storage_may_be_defined_after_use() -> None:
    cfg = parse(
        """
        database default { user default { authentication "none" storage "late" } }
        listen { }
        storage "late" { type "remote" }
        """
    )
    assert cfg.rules[0].storage.name == "late"


def test_unimplemented_options_warn_with_location() -> None:
    cfg = parse(
        """
        listen {
            host "*"
            compression yes
            target_session_attrs "read-write"
            balancing { method "roundrobin" { az_aware no } show_notice_messages yes }
        }
        storage "pg" { type "remote" server_max_routing 4 watchdog { watchdog_lag_interval 10 } }
        hba_file "/etc/hba"
        soft_oom { limit 750MB process "postgres" check_interval_ms 500 }
        online_restart_drop_options { drop_enabled no }
        database default {
            user default {
                authentication "none"
                storage "pg"
                client_fwd_error no
                quantiles "0.99,0.95"
                ldap_storage_credentials "group_ro" { ldap_storage_username "ro" }
            }
        }
        """
    )
    assert list(cfg.warnings) == [
        f"t.conf:{line}: {what} '{name}' is accepted but not supported by ithaca yet; "
        "it has no effect"
        for line, what, name in [
            (4, "option", "compression"),
            (5, "option", "target_session_attrs"),
            (6, "block", "balancing"),
            (8, "option", "server_max_routing"),
            (8, "block", "watchdog"),
            (10, "block", "soft_oom"),
            (11, "block", "online_restart_drop_options"),
            (16, "option", "client_fwd_error"),
            (17, "option", "quantiles"),
            (18, "block", "ldap_storage_credentials"),
        ]
    ]
    assert cfg.listens[0].compression is True
    assert cfg.hba_file == "/etc/hba"
    assert cfg.rules[0].quantiles == "0.99,0.95"


def test_include_relative_and_nested(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "rules.conf").write_text(
        'database default {\n  include "users.conf"\n}\n'
    )
    (tmp_path / "conf.d" / "users.conf").write_text(
        'user default {\n  authentication "none"\n  storage "pg"\n}\n'
    )
    (tmp_path / "storage.conf").write_text('storage "pg" {\n  type "remote"\n}\n')
    main = tmp_path / "odyssey.conf"
    main.write_text('include "storage.conf"\nlisten { }\ninclude "conf.d/rules.conf"\nworkers 2\n')
    cfg = load_config(main)
    assert cfg.workers == 2
    assert cfg.storages["pg"].location == f"{tmp_path}/storage.conf:1"
    assert cfg.rules[0].location == f"{tmp_path}/conf.d/users.conf:1"


def test_parse_config_text_resolves_includes_next_to_path(tmp_path: Path) -> None:
    (tmp_path / "listen.conf").write_text("listen { port 7777 }\n")
    text = 'include "listen.conf"\n' + MINIMAL.replace('listen { host "*" port 6432 }', "")
    cfg = parse_config_text(text, path=str(tmp_path / "virtual.conf"))
    assert cfg.listens[0].port == 7777


def test_include_cycle_names_the_chain(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text('include "b.conf"\n')
    (tmp_path / "b.conf").write_text('\n\ninclude "a.conf"\n')
    main = tmp_path / "main.conf"
    main.write_text(MINIMAL + 'include "a.conf"\n')
    with pytest.raises(ConfigError) as info:
        load_config(main)
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    assert info.value.errors == [
        f"{b}:3: include cycle: {main} -> {a} -> {b} -> {a}",
    ]


def test_missing_include_file(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    main.write_text(MINIMAL + '\ninclude "nope.conf"\n')
    with pytest.raises(ConfigError) as info:
        load_config(main)
    (error,) = info.value.errors
    assert error.startswith(f"{main}:6: cannot read include file '{tmp_path}/nope.conf'")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.conf")
    assert str(info.value).startswith(f"{tmp_path}/absent.conf:0: cannot read config file")
