"""Periodic work, one tick per second (issue 3, point 3): pool_ttl, server_lifetime,
min_pool_size, pool_client_idle_timeout, pool_idle_in_transaction_timeout (seconds, route
options), client_login_timeout (ms, listen), backend_connect_timeout_ms (ms, global) and the
stats line every stats_interval seconds with log_stats yes."""

from __future__ import annotations

import re
import socket
import threading
import time

import psycopg
import pytest
from helpers import (
    backend_count,
    backend_pids,
    backend_state,
    login_error,
    make_config,
    run_threads,
    wait_readable,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


def _real_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_pool_ttl_closes_idle_servers(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=2, extra_route="pool_ttl 1"))
    a = psycopg.connect(proc.dsn(), autocommit=True)
    b = psycopg.connect(proc.dsn(), autocommit=True)
    try:
        assert {_real_pid(a), _real_pid(b)} == backend_pids(pg)
    finally:
        a.close()
        b.close()
    left = time.monotonic()
    assert backend_count(pg, usename="postgres") >= 1, "servers were not kept in the pool"
    wait_until(lambda: backend_count(pg, usename="postgres") == 0, timeout=4,
               message="idle servers to expire after pool_ttl 1")
    assert time.monotonic() - left >= 0.5, "servers were closed at once, not after pool_ttl"
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_server_lifetime_replaces_old_servers_without_failing_queries(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1, extra_route="server_lifetime 1"))
    pids: list[int] = []
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        started = time.monotonic()
        while time.monotonic() - started < 6:
            pids.append(_real_pid(conn))  # any failure here fails the test
            if len(set(pids)) >= 2:
                break
            time.sleep(0.3)
        changed_after = time.monotonic() - started
    assert len(set(pids)) >= 2, f"the server was never replaced: {pids}"
    assert changed_after < 5
    wait_until(lambda: backend_state(pg, pids[0]) == "", timeout=3,
               message="the expired server to be closed")


def test_min_pool_size_is_kept(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=4, extra_route="min_pool_size 2"))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_until(lambda: backend_count(pg, usename="postgres") == 2, timeout=4,
               message="min_pool_size 2 servers to be open")
    old = backend_pids(pg)
    assert len(old) == 2
    pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               f"WHERE pid IN ({', '.join(map(str, old))})")
    wait_until(lambda: len(backend_pids(pg) - old) == 2 and not backend_pids(pg) & old,
               timeout=5, message="two new servers to replace the terminated ones")
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert backend_count(pg, usename="postgres") == 2


def test_pool_client_idle_timeout(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=3,
                                extra_route="pool_client_idle_timeout 1"))
    idle = psycopg.connect(proc.dsn(), autocommit=True)
    busy = psycopg.connect(proc.dsn(), autocommit=True)
    slow = psycopg.connect(proc.dsn(), autocommit=True)
    try:
        assert idle.execute("SELECT 1").fetchone() == (1,)
        started = time.monotonic()

        def work(i: int) -> object:
            if i == 0:  # a query every 0.3 s for 2.5 s: never idle for a second
                n = 0
                while time.monotonic() - started < 2.5:
                    assert busy.execute("SELECT 1").fetchone() == (1,)
                    n += 1
                    time.sleep(0.3)
                return n
            # a query running longer than the timeout is not idleness
            return slow.execute("SELECT pg_sleep(2.5), 'slow done'").fetchone()[1]

        results = {}

        def watch_idle() -> None:
            results["readable"] = wait_readable(idle.pgconn.socket, 5)
            results["at"] = time.monotonic() - started

        watcher = threading.Thread(target=watch_idle, daemon=True)
        watcher.start()
        busy_n, slow_result = run_threads(work, 2, timeout=10)
        watcher.join(5)
        assert busy_n >= 5
        assert slow_result == "slow done"
        assert results.get("readable"), "the idle client was not dropped"
        assert 0.8 <= results["at"] < 3.5, results
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
        # the active clients are still there (their idle time starts now)
        assert busy.execute("SELECT 2").fetchone() == (2,)
        assert slow.execute("SELECT 3").fetchone() == (3,)
    finally:
        idle.close()
        busy.close()
        slow.close()


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_idle_in_transaction_timeout(pg, ithaca, ithaca_config, pool):
    pg.execute("CREATE TABLE items (a int)")
    proc = ithaca(ithaca_config(pool=pool, pool_size=3,
                                extra_route="pool_idle_in_transaction_timeout 1"))
    idle = psycopg.connect(proc.dsn())
    busy = psycopg.connect(proc.dsn())
    try:
        idle.execute("INSERT INTO items VALUES (1)")
        idle_pid = _real_pid(idle)
        started = time.monotonic()
        assert backend_state(pg, idle_pid) == "idle in transaction"

        def work(_i: int) -> int:
            # inside a transaction but never idle for a second
            busy.execute("INSERT INTO items VALUES (2)")
            n = 0
            while time.monotonic() - started < 2.5:
                assert busy.execute("SELECT 1").fetchone() == (1,)
                n += 1
                time.sleep(0.3)
            busy.commit()
            return n

        thread_result: list = []
        thread = threading.Thread(target=lambda: thread_result.append(run_threads(work, 1)),
                                  daemon=True)
        thread.start()
        wait_until(lambda: backend_state(pg, idle_pid) != "idle in transaction", timeout=4,
                   message="the idle-in-transaction client to be dropped")
        assert time.monotonic() - started >= 0.8
        thread.join(10)
        assert thread_result and thread_result[0][0] >= 5
        # PostgreSQL's own idle_in_transaction_session_timeout error (25P03) or a
        # connection error: either way the client is gone
        with pytest.raises(psycopg.Error):
            idle.execute("SELECT 1")
        assert idle.closed, "the dropped client's connection is still usable"
        assert pg.scalar("SELECT count(*) FROM pg_stat_activity "
                         "WHERE state LIKE 'idle in transaction%'") == "0"
        assert pg.scalar("SELECT array_agg(a) FROM items") == "{2}"
    finally:
        idle.close()
        busy.close()


def test_client_login_timeout(pg, ithaca, ithaca_config):
    config = ithaca_config().replace("listen {\n", "listen {\n\tclient_login_timeout 1000\n", 1)
    assert "client_login_timeout 1000" in config
    proc = ithaca(config)
    with socket.create_connection((proc.host, proc.port), timeout=10) as silent, \
            socket.create_connection((proc.host, proc.port), timeout=10) as partial:
        partial.sendall(b"\0\0\0\x50\0\3")  # half a startup packet, then nothing
        started = time.monotonic()
        # a normal client is not held up meanwhile
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        for sock in (silent, partial):
            sock.settimeout(max(0.1, started + 5 - time.monotonic()))
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail("a client that never logged in was not closed")
        elapsed = time.monotonic() - started
    assert 0.7 <= elapsed < 3.5, elapsed
    # the pooler still serves logins afterwards
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_backend_connect_timeout(ithaca):
    blackhole = socket.socket()
    try:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)  # accepts TCP (in the kernel) and never answers
        config = make_config(blackhole.getsockname()[1], ithaca.port, pool="session",
                             pool_size=2, pool_timeout=2000,
                             extra_global="backend_connect_timeout_ms 1000")
        proc = ithaca(config)
        started = time.monotonic()
        sqlstate, message = login_error(proc.port, timeout=15)
        elapsed = time.monotonic() - started
    finally:
        blackhole.close()
    assert 0.9 <= elapsed < 5, elapsed
    assert re.search(r"time|connect|server", message, re.I), message
    assert sqlstate.startswith(("08", "53", "57")), (sqlstate, message)


def _stats_lines(proc) -> int:
    text = proc.log_text().replace(str(proc.workdir.parent), "")  # the test name has "stats"
    return sum(1 for line in text.splitlines() if re.search(r"stats", line, re.I))


def test_stats_every_stats_interval(pg, ithaca, ithaca_config):
    on = ithaca(ithaca_config(extra_global="log_stats yes\nstats_interval 1"))
    off = ithaca(ithaca_config(extra_global="log_stats no\nstats_interval 1"))
    for proc in (on, off):
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    base_on, base_off = _stats_lines(on), _stats_lines(off)
    wait_until(lambda: _stats_lines(on) >= base_on + 2, timeout=3.5,
               message="two stats lines with log_stats yes, stats_interval 1")
    assert _stats_lines(off) == base_off, "stats lines logged with log_stats no"
