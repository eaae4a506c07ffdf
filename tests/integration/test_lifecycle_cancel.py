"""Cancel requests (issue 3, point 1): forged BackendKeyData per client, a CancelRequest is sent
on to the server attached to that client right now with the server's real key, never to another
client's query; pool_cancel decides whether a vanished client's running query is cancelled and
its server reused (yes) or the server closed (no)."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest
from helpers import (
    RawPgClient,
    backend_state,
    running_query_pid,
    send_cancel_request,
    vanish,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

SLEEP10 = "SELECT pg_sleep(10)"


def _real_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_forged_backend_keys_unique_and_not_the_real_pid(pg, ithaca, ithaca_config, pool):
    proc = ithaca(ithaca_config(pool=pool, pool_size=4))
    conns = [psycopg.connect(proc.dsn(), autocommit=True) for _ in range(4)]
    try:
        forged = [c.info.backend_pid for c in conns]
        real = {_real_pid(c) for c in conns}
        assert len(set(forged)) == 4, f"forged keys are not unique per client: {forged}"
        assert not set(forged) & real, f"a forged key is a real backend pid: {forged} / {real}"
    finally:
        for c in conns:
            c.close()
    with RawPgClient(proc.port) as a, RawPgClient(proc.port) as b:
        assert (a.pid, a.secret) != (b.pid, b.secret)
        assert a.pid != b.pid


def _run_and_record(conn: psycopg.Connection, sql: str, out: dict) -> threading.Thread:
    def run() -> None:
        started = time.monotonic()
        try:
            out["rows"] = conn.execute(sql).fetchall()
        except BaseException as exc:  # inspected by the test
            out["error"] = exc
        out["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_psycopg_cancel_stops_running_query(pg, ithaca, ithaca_config, pool, method):
    proc = ithaca(ithaca_config(pool=pool, pool_size=2))
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        out: dict = {}
        thread = _run_and_record(conn, SLEEP10, out)
        backend = wait_until(lambda: running_query_pid(pg, SLEEP10), timeout=5,
                             message="pg_sleep(10) to run on PostgreSQL")
        asked = time.monotonic()
        getattr(conn, method)()
        thread.join(5)
        assert not thread.is_alive(), "the query was not cancelled"
        assert isinstance(out.get("error"), psycopg.errors.QueryCanceled), out
        assert out["error"].sqlstate == "57014"
        assert time.monotonic() - asked < 3
        wait_until(lambda: backend_state(pg, backend) != "active", timeout=3,
                   message="the backend to stop running the query")
        # the client goes on normally afterwards
        assert conn.execute("SELECT 2").fetchone() == (2,)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_asyncpg_query_timeout_cancels(pg, ithaca, ithaca_config, pool):
    proc = ithaca(ithaca_config(pool=pool, pool_size=1))
    import asyncpg

    async def scenario() -> float:
        conn = await asyncpg.connect(host=proc.host, port=proc.port, user="postgres",
                                     database="postgres", ssl=False, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await conn.fetch("SELECT pg_sleep(10)", timeout=0.5)
            # asyncpg waits for the cancel to finish before the next query
            assert await asyncio.wait_for(conn.fetchval("SELECT 2"), 5) == 2
            return time.monotonic() - started
        finally:
            await asyncio.wait_for(conn.close(), 5)

    elapsed = asyncio.run(scenario())
    assert elapsed < 3.5, f"the cancelled query held the connection for {elapsed:.1f}s"
    assert pg.scalar("SELECT count(*) FROM pg_stat_activity "
                     "WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'") == "0"


def test_raw_cancel_request_with_the_forged_key(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1))
    with RawPgClient(proc.port) as a:
        a.send_query(SLEEP10)
        wait_until(lambda: running_query_pid(pg, SLEEP10), timeout=5, message="pg_sleep(10)")
        started = time.monotonic()
        send_cancel_request(proc.port, a.pid, a.secret)
        _rows, sqlstate = a.result(timeout=5)
        assert sqlstate == "57014"
        assert time.monotonic() - started < 3
        assert a.query("SELECT 7") == ([("7",)], None)


def test_cancel_with_a_wrong_secret_is_ignored(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1))
    with RawPgClient(proc.port) as a:
        sql = "SELECT pg_sleep(1.5)"
        a.send_query(sql)
        wait_until(lambda: running_query_pid(pg, sql), timeout=5, message="pg_sleep(1.5)")
        for delta in (1, 2, 0x80000000):
            send_cancel_request(proc.port, a.pid, a.secret ^ delta)
        send_cancel_request(proc.port, a.pid ^ 1, a.secret)
        rows, sqlstate = a.result(timeout=10)
        assert sqlstate is None, "a cancel with a wrong key cancelled the query"
        assert rows == [("",)]


def test_cancel_of_idle_transaction_client_affects_nobody(pg, ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1, pool_timeout=20000))
    with psycopg.connect(proc.dsn(), autocommit=True) as a, \
            RawPgClient(proc.port) as a_raw, \
            psycopg.connect(proc.dsn(), autocommit=True) as b:
        assert a.execute("SELECT 1").fetchone() == (1,)
        assert a_raw.query("SELECT 1")[1] is None
        out: dict = {}
        sql = "SELECT pg_sleep(1)"
        thread = _run_and_record(b, sql, out)
        wait_until(lambda: running_query_pid(pg, sql), timeout=5, message="B's pg_sleep(1)")
        # A and a_raw hold no server (transaction pooling, idle): their cancels go nowhere
        a.cancel()
        a.cancel_safe()
        for _ in range(5):
            send_cancel_request(proc.port, a_raw.pid, a_raw.secret)
        thread.join(10)
        assert not thread.is_alive()
        assert "error" not in out, f"B's query was hit: {out.get('error')!r}"
        assert len(out["rows"]) == 1
        assert out["elapsed"] >= 0.9
        assert a.execute("SELECT 2").fetchone() == (2,)
        assert a_raw.query("SELECT 3") == ([("3",)], None)


@pytest.mark.parametrize("kind", ["psycopg", "raw"])
def test_cancel_storm_never_hits_another_client(pg, ithaca, ithaca_config, kind):
    """30 threads fire cancels with A's key while A's query runs, while B waits for the single
    server, and all through B's own query: A is cancelled, B never."""
    proc = ithaca(ithaca_config(pool="transaction", pool_size=1, pool_timeout=20000))
    b = psycopg.connect(proc.dsn(), autocommit=True)
    a_conn = a_raw = None
    try:
        assert b.execute("SELECT 1").fetchone() == (1,)
        a_out: dict = {}
        if kind == "psycopg":
            a_conn = psycopg.connect(proc.dsn(), autocommit=True)
            assert a_conn.execute("SELECT 1").fetchone() == (1,)
            a_thread = _run_and_record(a_conn, SLEEP10, a_out)

            def fire() -> None:
                a_conn.cancel()
        else:
            a_raw = RawPgClient(proc.port)
            assert a_raw.query("SELECT 1")[1] is None
            raw = a_raw

            def run_a() -> None:
                try:
                    a_out["sqlstate"] = raw.query(SLEEP10, timeout=15)[1]
                except BaseException as exc:  # inspected by the test
                    a_out["error"] = exc

            a_thread = threading.Thread(target=run_a, daemon=True)
            a_thread.start()

            def fire() -> None:
                send_cancel_request(proc.port, raw.pid, raw.secret)

        wait_until(lambda: running_query_pid(pg, SLEEP10), timeout=5, message="A's pg_sleep")
        b_out: dict = {}
        b_thread = _run_and_record(b, "SELECT pg_sleep(1), 'b done'", b_out)
        time.sleep(0.3)  # let B queue for the single server (nothing to poll for)

        stop = threading.Event()
        sent = [0] * 30
        failures: list[BaseException] = []

        def storm(i: int) -> None:
            deadline = time.monotonic() + 15
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    fire()
                except OSError as exc:  # a refused cancel connection is the pooler's failure
                    failures.append(exc)
                sent[i] += 1
                time.sleep(0.005)

        storm_threads = [threading.Thread(target=storm, args=(i,), daemon=True)
                         for i in range(30)]
        started = time.monotonic()
        for t in storm_threads:
            t.start()
        try:
            a_thread.join(5)
            a_done = time.monotonic() - started
            assert not a_thread.is_alive(), "A's query was not cancelled"
            b_thread.join(10)
            assert not b_thread.is_alive(), "B's query did not finish"
        finally:
            stop.set()
            for t in storm_threads:
                t.join(10)
        if kind == "psycopg":
            assert isinstance(a_out.get("error"), psycopg.errors.QueryCanceled), a_out
        else:
            assert a_out.get("sqlstate") == "57014", a_out
        assert a_done < 3
        assert "error" not in b_out, f"a cancel meant for A hit B: {b_out.get('error')!r}"
        assert b_out["rows"][0][1] == "b done"
        assert b_out["elapsed"] >= 1.0
        assert sum(sent) >= 30, sent
        assert not failures, failures[:3]
        # both clients go on normally
        assert b.execute("SELECT 2").fetchone() == (2,)
        if a_conn is not None:
            assert a_conn.execute("SELECT 3").fetchone() == (3,)
        else:
            assert a_raw.query("SELECT 3") == ([("3",)], None)
    finally:
        b.close()
        if a_conn is not None:
            a_conn.close()
        if a_raw is not None:
            a_raw.close()


def _start_then_vanish(pg, proc, sql: str) -> tuple[psycopg.Connection, int]:
    conn = psycopg.connect(proc.dsn(), autocommit=True)
    real = _real_pid(conn)
    conn.pgconn.send_query(sql.encode())
    assert conn.pgconn.flush() == 0
    assert wait_until(lambda: running_query_pid(pg, sql), timeout=5,
                      message="the query to run") == real
    vanish(conn)
    return conn, real


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_cancel_yes_cancels_and_reuses_the_server(pg, ithaca, ithaca_config, pool):
    proc = ithaca(ithaca_config(pool=pool, pool_size=1, extra_route="pool_cancel yes"))
    conn, real = _start_then_vanish(pg, proc, "SELECT pg_sleep(30)")
    try:
        wait_until(lambda: backend_state(pg, real) == "idle", timeout=5,
                   message="the vanished client's query to be cancelled (backend idle)")
    finally:
        conn.close()
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) == real, "the server was not reused"
        assert nxt.execute("SELECT 4").fetchone() == (4,)


@pytest.mark.parametrize("pool", ["session", "transaction"])
def test_pool_cancel_no_closes_the_server(pg, ithaca, ithaca_config, pool):
    # make PostgreSQL notice a closed socket while the backend is busy in pg_sleep
    pg.set_config(client_connection_check_interval=100)
    pg.reload()
    proc = ithaca(ithaca_config(pool=pool, pool_size=1, extra_route="pool_cancel no"))
    conn, real = _start_then_vanish(pg, proc, "SELECT pg_sleep(30)")
    try:
        wait_until(lambda: backend_state(pg, real) == "", timeout=5,
                   message="the vanished client's server to be closed")
    finally:
        conn.close()
    with psycopg.connect(proc.dsn(), autocommit=True) as nxt:
        assert _real_pid(nxt) != real
        assert nxt.execute("SELECT 4").fetchone() == (4,)
