"""Pooling behaviour seen by clients and by PostgreSQL: pool_size bounds, FIFO waiting,
pool_timeout, client_max, session state, and what happens when a client vanishes."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import backend_count, login_error, vanish, wait_until


def _sampler(pg, stop: threading.Event, seen: list[int]) -> threading.Thread:
    def run():
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                n = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid() AND usename = 'postgres'").fetchone()[0]
                seen.append(n)
                time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_twenty_threads_through_pool_size_two(pg, ithaca, ithaca_config):
    pg.execute("CREATE TABLE counter (id int primary key, n int); INSERT INTO counter VALUES (1, 0)")
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=30000))
    stop = threading.Event()
    seen: list[int] = []
    sampler = _sampler(pg, stop, seen)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            # named server-side statements in transaction pooling are the prepared
            # statements issue's subject; here every statement stays unnamed
            with psycopg.connect(proc.dsn(), prepare_threshold=None) as conn:
                for _ in range(20):
                    with conn.transaction():
                        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                        conn.execute("SELECT pg_backend_pid()").fetchone()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    sampler.join(10)
    assert not errors, errors[:3]
    assert pg.scalar("SELECT n FROM counter WHERE id = 1") == "400"
    assert seen, "the sampler saw nothing"
    assert max(seen) <= 2, f"more than pool_size backends seen: {max(seen)}"


def test_session_state_is_kept_in_session_mode(ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=2))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        conn.execute("SET application_name = 'ithaca-test'")
        conn.execute("CREATE TEMP TABLE scratch (a int)")
        conn.execute("INSERT INTO scratch VALUES (1), (2)")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        for _ in range(5):
            assert conn.execute("SHOW application_name").fetchone() == ("ithaca-test",)
            assert conn.execute("SELECT count(*) FROM scratch").fetchone() == (2,)
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    # the next client gets a reset server: no temp table, default application_name
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('pg_temp.scratch') IS NULL").fetchone() == (True,)
        assert conn.execute("SHOW application_name").fetchone() != ("ithaca-test",)


def test_second_client_waits_for_pool_size_one(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, pool_timeout=20000))
    first = psycopg.connect(proc.dsn(), autocommit=True)
    first_pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    result: dict[str, object] = {}

    def second_client() -> None:
        with psycopg.connect(proc.dsn(), autocommit=True) as conn:
            result["pid"] = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            result["at"] = time.monotonic()

    thread = threading.Thread(target=second_client)
    thread.start()
    time.sleep(0.5)  # give the second client time to (wrongly) get a server of its own
    assert "pid" not in result, "second client was served while pool_size 1 was in use"
    released_at = time.monotonic()
    first.close()
    thread.join(15)
    assert result["pid"] == first_pid
    assert result["at"] >= released_at
    assert backend_count(pg, usename="postgres") <= 1


def test_pool_timeout_error(ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=1, pool_timeout=500))
    with psycopg.connect(proc.dsn(), autocommit=True) as holder:
        holder.execute("SELECT 1")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            with psycopg.connect(proc.dsn(), autocommit=True) as conn:
                conn.execute("SELECT 1")
        elapsed = time.monotonic() - started
        assert info.value.sqlstate == "53300"
        assert "pool_timeout" in str(info.value)
        assert 0.4 < elapsed < 5
        assert holder.execute("SELECT 2").fetchone() == (2,)


def test_route_client_max(ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, extra_route="client_max 2"))
    a = psycopg.connect(proc.dsn(), autocommit=True)
    b = psycopg.connect(proc.dsn(), autocommit=True)
    try:
        sqlstate, message = login_error(proc.port)
        assert sqlstate == "53300"
        assert "too many connections" in message
        assert a.execute("SELECT 1").fetchone() == (1,)
    finally:
        a.close()
        b.close()
    # a slot is free again once a client leaves
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_global_client_max(ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=2, extra_global="client_max 1"))
    with psycopg.connect(proc.dsn(), autocommit=True):
        assert login_error(proc.port)[0] == "53300"


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_abrupt_disconnect_mid_transaction(pg, ithaca, ithaca_config, pool):
    pg.execute("CREATE TABLE items (a int)")
    proc = ithaca(ithaca_config(pool=pool, pool_size=1))
    conn = psycopg.connect(proc.dsn())
    conn.execute("INSERT INTO items VALUES (1)")
    assert pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'") == "1"
    vanish(conn)  # no Terminate: the socket just goes away
    wait_until(lambda: pg.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'") == "0",
        message="the open transaction to end")
    assert pg.scalar("SELECT count(*) FROM items") == "0"
    conn.close()
    # the pool (size 1) serves the next client with a clean server
    with psycopg.connect(proc.dsn(), autocommit=True) as conn2:
        assert conn2.execute("SELECT count(*) FROM items").fetchone() == (0,)
        assert conn2.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_transaction_pooling_shares_servers(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1))
    conns = [psycopg.connect(proc.dsn(), autocommit=True) for _ in range(5)]
    try:
        pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 1
        assert backend_count(pg, usename="postgres") == 1
    finally:
        for c in conns:
            c.close()


def test_statement_pooling_refuses_transaction_blocks(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="statement", pool_size=1, prepared=False))
    with psycopg.connect(proc.dsn(), autocommit=True) as a, \
            psycopg.connect(proc.dsn(), autocommit=True) as b:
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid_a  # one server, shared
    with psycopg.connect(proc.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as info:
            c.execute("BEGIN")
            c.execute("SELECT 1")
        # the FATAL follows BEGIN's own reply at once; libpq reports either it or the close
        assert "statement pooling" in str(info.value) or "closed" in str(info.value)
        assert c.closed or c.broken
    wait_until(lambda: "transaction blocks are not allowed in statement pooling"
               in proc.log_text(), message="the reason in the log")
    # the server was rolled back and serves the next client
    with psycopg.connect(proc.dsn(), autocommit=True) as d:
        assert d.execute("SELECT 5").fetchone() == (5,)
    assert pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in%'") == "0"


def test_unix_socket_listen(tmp_path, ithaca, ithaca_config):
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    proc = ithaca(ithaca_config(extra_global=f'unix_socket_dir "{sock_dir}"\n'
                                             'unix_socket_mode "0600"'))
    path = sock_dir / f".s.PGSQL.{proc.port}"
    assert path.is_socket()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with psycopg.connect(f"host={sock_dir} port={proc.port} user=postgres dbname=postgres",
                         autocommit=True) as conn:
        assert conn.execute("SELECT 'over unix'").fetchone() == ("over unix",)
