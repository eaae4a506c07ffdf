"""Checks of the test harness itself (no pooler needed)."""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from helpers import (
    IthacaProcess,
    IthacaStartError,
    backend_count,
    free_port,
    make_config,
    wait_until,
)
from pgcluster import PgCluster


def test_cluster_accepts_psycopg_connection(pg: PgCluster) -> None:
    with psycopg.connect(pg.dsn()) as conn:
        row = conn.execute("SELECT current_user, inet_server_port(), version()").fetchone()
    assert row is not None
    assert row[0] == "postgres"
    assert row[1] == pg.port
    assert "PostgreSQL" in row[2]
    assert pg.scalar("SHOW fsync") == "off"
    assert pg.scalar("SHOW max_connections") == "200"


@pytest.mark.parametrize("method", ["md5", "scram-sha-256"])
def test_password_roles_and_hba(pg: PgCluster, method: str) -> None:
    pg.set_password_encryption(method)
    pg.create_role("alice", password="s3cret'x")
    pg.create_database("alicedb", owner="alice")
    stored = pg.scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'")
    assert stored.startswith("md5" if method == "md5" else "SCRAM-SHA-256$")

    pg.set_hba([f"host all alice 127.0.0.1/32 {method}", "host all all 127.0.0.1/32 trust"])
    with psycopg.connect(pg.dsn("alicedb", "alice", password="s3cret'x")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("alicedb",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn("alicedb", "alice", password="wrong")).close()
    # other roles still trusted over TCP, admin socket unaffected
    with psycopg.connect(pg.dsn()) as conn:
        conn.execute("SELECT 1")

    pg.set_hba(["host all all 127.0.0.1/32 trust"])
    with psycopg.connect(pg.dsn("alicedb", "alice", password="wrong")) as conn:
        conn.execute("SELECT 1")


def test_two_clusters_and_cleanup(pg_factory) -> None:
    a, b = pg_factory(), pg_factory()
    assert a.port != b.port
    assert a.datadir != b.datadir
    assert a.scalar("SHOW port") == str(a.port)
    assert b.scalar("SHOW port") == str(b.port)
    base = a.base
    a.restart()
    assert a.scalar("SELECT 1") == "1"
    a.cleanup()
    assert not base.exists()
    assert b.scalar("SELECT 1") == "1"
    a.cleanup()  # idempotent


def test_backend_count_and_wait_until(pg: PgCluster) -> None:
    pg.create_role("bob")
    assert backend_count(pg, usename="bob") == 0
    with psycopg.connect(pg.dsn(user="bob")):
        assert wait_until(lambda: backend_count(pg, usename="bob") == 1, timeout=5)
        assert backend_count(pg, datname="postgres") >= 1
    wait_until(lambda: backend_count(pg, usename="bob") == 0, timeout=5, message="bob gone")
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.2, message="never")


def test_make_config_shape() -> None:
    text = make_config(5433, 6433, pool="session", pool_size=7, auth="md5", password="pw",
                       extra_route="client_max 10", extra_global="coroutine_stack_size 8")
    assert re.search(r"listen \{\n\thost \"127.0.0.1\"\n\tport 6433\n\}", text)
    assert re.search(r"storage \"postgres_server\" \{\n\ttype \"remote\"\n\thost \"127.0.0.1\"\n"
                     r"\tport 5433\n\}", text)
    assert '\t\tpool "session"\n' in text and "\t\tpool_size 7\n" in text
    assert '\t\tauthentication "md5"\n\t\tpassword "pw"\n' in text
    assert "\t\tclient_max 10\n" in text and "coroutine_stack_size 8\n" in text
    assert 'database "console"' in text
    assert text.count("{") == text.count("}")


FAKE_SERVER = textwrap.dedent(r"""
    import re, signal, socket, sys
    if len(sys.argv) > 1 and sys.argv[1] == "-m":
        del sys.argv[1:3]
    text = open(sys.argv[1]).read()
    if "fail" in text:
        print("fake: refusing config", flush=True)
        sys.exit(3)
    port = int(re.search(r"listen \{[^}]*port (\d+)", text).group(1))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen()
    print(f"fake: listening on {port}", flush=True)
    def bye(*a):
        print("fake: got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    while True:
        c, _ = s.accept(); c.close()
""")


def _fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    exe = tmp_path / "fakepython"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    os.chmod(exe, 0o755)
    return str(exe)


def test_ithaca_process_lifecycle_with_fake_server(tmp_path: Path) -> None:
    port = free_port()
    proc = IthacaProcess(make_config(5432, port), tmp_path / "ok", port,
                         python=_fake_python(tmp_path))
    try:
        assert proc.poll() is None
        assert f"port={port}" in proc.dsn("db", "u")
        assert "password='p q'" in proc.dsn("db", "u", password="p q")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 0
        assert "got SIGTERM" in proc.log_text()
    finally:
        proc.terminate()


def test_ithaca_process_start_failure_is_clear(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(IthacaStartError, match="refusing config") as exc:
        IthacaProcess("fail\n" + make_config(5432, port), tmp_path / "bad", port,
                      python=_fake_python(tmp_path))
    assert "exit code 3" in str(exc.value)


def test_ithaca_factory_placeholders(ithaca, pg: PgCluster, tmp_path: Path) -> None:
    # The factory's templating and teardown, with the fake server standing in for ithaca.
    port = ithaca.port
    assert ithaca.port == port  # stable until used
    text = make_config(0, 0).replace("\tport 0\n}\nstorage", "\tport {port}\n}\nstorage", 1)
    text = text.replace("\tport 0\n", "\tport {pg_port}\n")
    proc = ithaca(text, python=_fake_python(tmp_path))
    assert proc.port == port
    conf = proc.config_path.read_text()
    assert f"\tport {pg.port}\n" in conf and f"\tport {port}\n" in conf
    assert ithaca.port != port  # a fresh port for the next process
    proc2 = ithaca(lambda p: make_config(pg.port, p), python=_fake_python(tmp_path))
    assert proc2.poll() is None and proc2.port != port
