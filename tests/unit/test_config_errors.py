"""odyssey.conf errors: each names FILE:LINE; option errors are collected, syntax errors stop."""

from __future__ import annotations

import textwrap

import pytest

from ithaca.config import ConfigError, parse_config_text

HEAD = 'listen { }\nstorage "pg" { type "remote" }\n'  # lines 1-2
RULE = 'database default { user default { authentication "none" storage "pg" } }\n'


def errors_of(text: str, path: str = "e.conf") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(textwrap.dedent(text), path=path)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # unknown options, per block kind
        ("bogus 1\n" + HEAD + RULE, "e.conf:1: unknown option 'bogus' in global section"),
        (
            'listen {\n  hots "*"\n}\nstorage "pg" { type "remote" }\n' + RULE,
            "e.conf:2: unknown option 'hots' in listen block",
        ),
        (
            'listen { }\nstorage "pg" {\n type "remote"\n prot 5432\n}\n' + RULE,
            "e.conf:4: unknown option 'prot' in storage block",
        ),
        (
            HEAD + 'database default {\n user default {\n authentication "none"\n'
            ' storage "pg"\n pool_sise 5\n }\n}\n',
            "e.conf:7: unknown option 'pool_sise' in user block",
        ),
        (
            HEAD + 'database default {\n group "g" { }\n}\n',
            "e.conf:4: unknown option 'group' in database block",
        ),
        # wrong value types
        (
            HEAD + 'database default { user default { authentication "none" storage "pg"\n'
            ' pool_size "ten" } }\n',
            "e.conf:4: option 'pool_size' expects an integer, got string",
        ),
        (HEAD + RULE + "nodelay 1\n", "e.conf:4: option 'nodelay' expects yes or no, got integer"),
        (
            HEAD + RULE + "log_debug true\n",
            "e.conf:4: option 'log_debug' expects yes or no, got 'true'",
        ),
        (HEAD + RULE + "pid_file yes\n", "e.conf:4: option 'pid_file' expects a string, got 'yes'"),
        (
            HEAD + RULE + "readahead -1\n",
            "e.conf:4: option 'readahead' must not be negative, got -1",
        ),
        (
            HEAD + RULE + "workers 0\n",
            "e.conf:4: option 'workers' expects a positive integer or \"auto\", got integer",
        ),
        # bad enum values
        (
            HEAD + 'database default { user default { authentication "none" storage "pg"\n'
            ' pool "sometimes" } }\n',
            "e.conf:4: option 'pool' must be one of session, transaction, statement; "
            "got 'sometimes'",
        ),
        (
            HEAD
            + 'database default { user default { authentication "kerberos"\n storage "pg" } }\n',
            "e.conf:3: option 'authentication' must be one of none, block, clear_text, md5, "
            "scram-sha-256, cert; got 'kerberos'",
        ),
        (
            'listen {\n tls "maybe"\n}\nstorage "pg" { type "remote" }\n' + RULE,
            "e.conf:2: option 'tls' must be one of disable, allow, prefer, require, verify_ca, "
            "verify_full; got 'maybe'",
        ),
        (
            'listen { }\nstorage "pg" { type "cloud" }\n' + RULE,
            "e.conf:2: option 'type' must be one of remote, local; got 'cloud'",
        ),
        # references and duplicates
        (
            HEAD + 'database default {\n user default {\n authentication "none"\n'
            ' storage "missing"\n }\n}\n',
            "e.conf:6: storage 'missing' is not defined",
        ),
        (
            HEAD + 'storage "pg" {\n type "local"\n}\n' + RULE,
            "e.conf:3: duplicate storage 'pg' (first defined at e.conf:2)",
        ),
        (
            HEAD + 'database "a" {\n user "u" { authentication "none" storage "pg" }\n'
            ' user "u" { authentication "none" storage "pg" }\n}\n',
            "e.conf:5: duplicate rule for database 'a' user 'u' (first defined at e.conf:4)",
        ),
        (
            HEAD + 'database default {\n user default {\n authentication "none"\n }\n}\n',
            "e.conf:4: rule for database default user default has no 'storage'",
        ),
        (
            HEAD + 'database "d" {\n user "u" {\n storage "pg"\n }\n}\n',
            "e.conf:4: rule for database 'd' user 'u' has no 'authentication'",
        ),
        (
            'listen { }\nstorage "pg" {\n host "h"\n}\n' + RULE,
            'e.conf:2: storage \'pg\' has no type ("remote" or "local")',
        ),
        (
            'storage "pg" { type "remote" }\n' + RULE,
            "e.conf:3: no listen block: at least one listen { } is required",
        ),
        (
            'listen {\n tls "require"\n}\nstorage "pg" { type "remote" }\n' + RULE,
            'e.conf:1: listen with tls "require" needs tls_cert_file and tls_key_file',
        ),
        (
            'listen {\n port 70000\n}\nstorage "pg" { type "remote" }\n' + RULE,
            "e.conf:1: port 70000 is out of range 1..65535",
        ),
        (
            "daemonize yes\n" + HEAD + RULE,
            "e.conf:1: daemonize yes is not supported; run ithaca under a service manager",
        ),
        (
            HEAD + 'database "d" {\n user "u" "::1/64" { authentication "none" storage "pg" }\n}\n',
            "e.conf:4: client address ranges on user blocks are not supported by ithaca",
        ),
    ],
)
def test_single_error(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('listen { }\nlog_file "/var/log\n', "e.conf:2: unterminated string"),
        ('listen { }\nlog_file "/var/log', "e.conf:2: unterminated string"),
        (
            HEAD + "database default {\n user default {\n",
            "e.conf:4: block opened here is not closed ('}' missing)",
        ),
        (HEAD + "}\n", "e.conf:3: unexpected '}' outside of any block"),
        (HEAD + '"stray"\n', "e.conf:3: unexpected string, expected an option name"),
        (HEAD + "listen\nport 1\n", "e.conf:4: unexpected 'port', expected '{' after 'listen'"),
        (
            HEAD + 'storage pg { type "remote" }\n',
            "e.conf:3: 'storage' expects a quoted name, got 'pg'",
        ),
        (
            HEAD + "database everyone { }\n",
            "e.conf:3: 'database' expects a quoted name or default, got 'everyone'",
        ),
        (
            HEAD + "include missing_quotes.conf\n",
            "e.conf:3: include expects a file name string, got 'missing_quotes.conf'",
        ),
    ],
)
def test_syntax_error_stops(text: str, expected: str) -> None:
    assert errors_of(text)[-1] == expected


def test_errors_are_collected() -> None:
    errors = errors_of(
        """\
        bogus 1
        listen { backlog "x" }
        storage "pg" { type "remote" }
        database default {
            user default { authentication "nope" storage "pg" pool_size -3 }
        }
        database "app" { user "u" { authentication "none" storage "gone" } }
        """
    )
    assert errors == [
        "e.conf:1: unknown option 'bogus' in global section",
        "e.conf:2: option 'backlog' expects an integer, got string",
        "e.conf:5: option 'authentication' must be one of none, block, clear_text, md5, "
        "scram-sha-256, cert; got 'nope'",
        "e.conf:5: option 'pool_size' must not be negative, got -3",
        "e.conf:7: storage 'gone' is not defined",
    ]


def test_error_inside_include_names_included_file(tmp_path) -> None:
    (tmp_path / "inc.conf").write_text('\nlisten {\n  port "x"\n}\n')
    main = tmp_path / "main.conf"
    with pytest.raises(ConfigError) as info:
        parse_config_text(
            'include "inc.conf"\n' + 'storage "pg" { type "remote" }\n' + RULE, path=str(main)
        )
    assert info.value.errors == [
        f"{tmp_path}/inc.conf:3: option 'port' expects an integer, got string"
    ]


def test_lexer_error_inside_include(tmp_path) -> None:
    (tmp_path / "inc.conf").write_text('pid_file "oops\n')
    with pytest.raises(ConfigError) as info:
        parse_config_text(HEAD + RULE + 'include "inc.conf"\n', path=str(tmp_path / "m.conf"))
    assert info.value.errors == [f"{tmp_path}/inc.conf:1: unterminated string"]


def test_self_include_is_a_cycle(tmp_path) -> None:
    main = tmp_path / "main.conf"
    main.write_text(HEAD + RULE + 'include "main.conf"\n')
    with pytest.raises(ConfigError) as info:
        parse_config_text(main.read_text(), path=str(main))
    assert info.value.errors == [f"{main}:4: include cycle: {main} -> {main}"]


def test_unknown_option_skips_its_value_and_continues() -> None:
    errors = errors_of(HEAD + RULE + 'frobnicate "x" 3 yes\nfrob2 { a 1 }\nworkers "many"\n')
    assert errors == [
        "e.conf:4: unknown option 'frobnicate' in global section",
        "e.conf:5: unknown option 'frob2' in global section",
        "e.conf:6: option 'workers' expects a positive integer or \"auto\", got string",
    ]


def test_bad_values_do_not_cascade_or_crash() -> None:
    errors = errors_of(
        'daemonize "yes"\nlisten {\n port "x"\n tls 5\n storage 1\n}\n'
        'storage "pg" {\n type 1\n port -1\n}\n'
        'database default {\n user default {\n authentication "none"\n storage 7\n'
        ' auth_common_name 3\n auth_common_name "ok"\n }\n}\n'
    )
    assert errors == [
        "e.conf:1: option 'daemonize' expects yes or no, got string",
        "e.conf:3: option 'port' expects an integer, got string",
        "e.conf:4: option 'tls' must be one of disable, allow, prefer, require, verify_ca, "
        "verify_full; got integer",
        "e.conf:5: option 'storage' expects a string, got integer",
        "e.conf:8: option 'type' must be one of remote, local; got integer",
        "e.conf:9: option 'port' must not be negative, got -1",
        "e.conf:14: option 'storage' expects a string, got integer",
        "e.conf:15: option 'auth_common_name' expects a string or default, got integer",
    ]
