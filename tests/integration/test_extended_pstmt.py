"""Issue 4, point 2: prepared statements in transaction pooling
(``pool_reserve_prepared_statement yes``, set on the default route by make_config).

A named Parse is recorded per client and re-prepared on whatever server the client's next
Bind/Describe lands on; Close/DEALLOCATE/DISCARD ALL affect only that client's names; errors
are PostgreSQL's own (42P05 duplicate, 26000 unknown).  ServerPinner (tests/helpers.py)
steers a client's next transaction to a chosen server.  Tests that do not depend on pooling
across servers also run directly against PostgreSQL ("direct") to check their own logic.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import threading

import asyncpg
import psycopg
import pytest
from helpers import ServerPinner, is_ithaca, pq_call, pq_next, pq_pipeline_results, run_threads

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(30)

TIMEOUT = 10.0
OK = ("COMMAND_OK", None, ())


@pytest.fixture
def pooler2(ithaca, ithaca_config):
    return ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=10000))


def _enc(params):
    return [None if p is None else str(p).encode() for p in params]


# libpq-level requests (bounded waits; each returns a list of (status, sqlstate, rows))
def prepare(conn, name: str, sql: str) -> list:
    pgc = conn.pgconn
    return pq_call(pgc, lambda: pgc.send_prepare(name.encode(), sql.encode()), TIMEOUT)


def execp(conn, name: str, *params) -> list:
    pgc = conn.pgconn
    return pq_call(pgc, lambda: pgc.send_query_prepared(name.encode(), _enc(params)), TIMEOUT)


def close_stmt(conn, name: str) -> list:
    pgc = conn.pgconn
    return pq_call(pgc, lambda: pgc.send_close_prepared(name.encode()), TIMEOUT)


def simple(conn, sql: str) -> list:
    """Simple Query protocol."""
    pgc = conn.pgconn
    return pq_call(pgc, lambda: pgc.send_query(sql.encode()), TIMEOUT)


def describe(conn, name: str) -> tuple:
    """(status, sqlstate, parameter type OIDs, column names) of Describe('S', name)."""
    from psycopg import pq

    pgc = conn.pgconn
    pgc.send_describe_prepared(name.encode())
    res = pq_next(pgc, TIMEOUT)
    status = pq.ExecStatus(res.status).name
    state = res.error_field(pq.DiagnosticField.SQLSTATE)
    out = (status, state.decode() if state else None,
           [res.param_type(i) for i in range(res.nparams)],
           [res.fname(i).decode() for i in range(res.nfields)])
    assert pq_next(pgc, TIMEOUT) is None
    return out


def rows(*values) -> list:
    return [("TUPLES_OK", None, (tuple(None if v is None else str(v) for v in values),))]


def err(sqlstate: str) -> tuple:
    return ("FATAL_ERROR", sqlstate)


def status_of(result: list) -> tuple:
    assert len(result) == 1, result
    return result[0][:2]


def connect(target, **kw):
    return psycopg.connect(target.dsn(), autocommit=True, **kw)


# ------------------------------------------------------------------ across servers (ithaca)
def test_named_statement_follows_client_to_every_server(pooler2):
    """Parse once on server X; Bind/Execute and Describe on Y and X, many times."""
    with connect(pooler2) as a, ServerPinner(pooler2.dsn(), 2) as pins:
        x, y = pins.pids
        pins.route_to(x)
        assert prepare(a, "S_1", "SELECT $1::int + 1 AS n, pg_backend_pid() AS pid") == [OK]
        pins.route_to(x)
        assert prepare(a, "S_2", "SELECT $1::text AS t, $2::int AS i, pg_backend_pid()") == [OK]
        for pid in [y, x, y, y, x, y]:
            pins.route_to(pid)
            assert execp(a, "S_1", 41) == rows(42, pid)
        pins.route_to(y)
        assert describe(a, "S_2") == ("COMMAND_OK", None, [25, 23], ["t", "i", "pg_backend_pid"])
        pins.route_to(y)
        assert execp(a, "S_2", "t", 7) == rows("t", 7, y)
        # a transaction that spans Parse and Execute on the other server
        pins.route_to(y)
        assert simple(a, "BEGIN") == [OK]
        assert prepare(a, "S_3", "SELECT $1::int * 3, pg_backend_pid()") == [OK]
        assert execp(a, "S_1", 1) == rows(2, y)
        assert simple(a, "COMMIT") == [OK]
        pins.route_to(x)
        assert execp(a, "S_3", 5) == rows(15, x)
        pins.release_all()


def test_psycopg_pipeline_with_prepared_statements_across_servers(pooler2):
    """psycopg prepare=True inside pipelines, each pipeline steered to the other server."""
    with connect(pooler2, prepare_threshold=0) as a, ServerPinner(pooler2.dsn(), 2) as pins:
        x, y = pins.pids
        for i, pid in enumerate([x, y, x, y]):
            pins.route_to(pid)
            with a.pipeline():
                c1 = a.execute("SELECT %s::int + 1, pg_backend_pid()", (i,), prepare=True)
                c2 = a.execute("SELECT %s::text || '!'", (f"p{i}",), prepare=True)
                c3 = a.execute("SELECT %s::int * 2", (i,), prepare=True)
            assert c1.fetchone() == (i + 1, pid)
            assert c2.fetchone() == (f"p{i}!",)
            assert c3.fetchone() == (2 * i,)
        pins.release_all()


def test_failed_parse_and_errors_across_servers(pooler2):
    """A failed Parse is not replayed on another server; a duplicate name is 42P05 and an
    unknown name 26000 whichever server the request lands on."""
    with connect(pooler2) as a, ServerPinner(pooler2.dsn(), 2) as pins:
        x, y = pins.pids
        pins.route_to(x)
        assert status_of(prepare(a, "bad", "SELECT * FROM no_such_table")) == err("42P01")
        pins.route_to(x)
        assert prepare(a, "good", "SELECT $1::int - 1") == [OK]
        pins.route_to(y)
        assert execp(a, "good", 10) == rows(9)
        pins.route_to(y)
        assert status_of(execp(a, "bad")) == err("26000")
        pins.route_to(y)
        assert status_of(prepare(a, "good", "SELECT $1::int - 1")) == err("42P05")
        pins.route_to(x)
        assert status_of(prepare(a, "good", "SELECT 'other text'")) == err("42P05")
        pins.route_to(y)
        assert execp(a, "good", 3) == rows(2)
        pins.route_to(y)
        assert prepare(a, "bad", "SELECT $1::text") == [OK]
        pins.route_to(x)
        assert execp(a, "bad", "now fine") == rows("now fine")
        pins.release_all()


def test_parse_of_statement_the_server_has_needs_no_round_trip(pg, target1):
    """pool_size 1: the server prepares a query text once; later Parses of the same text by
    other clients and Executes in later transactions do not Parse on the server again
    (counted in PostgreSQL's log with log_min_duration_statement = 0)."""
    pg.set_config(log_min_duration_statement=0)
    pg.reload()
    text = "SELECT $1::int * 7 AS no_round_trip_marker"
    with connect(target1) as a, connect(target1) as b, connect(target1) as c:
        for conn in (a, b, c):
            assert prepare(conn, "S_1", text) == [OK]
        for i in range(3):
            for conn in (a, b, c):
                assert execp(conn, "S_1", i) == rows(7 * i)
    parses = re.findall(r"\bparse [^:\n]*: " + re.escape(text), pg.log_text())
    assert parses, "log_min_duration_statement logged no parse"
    assert len(parses) == (1 if is_ithaca(target1) else 3), parses


# ------------------------------------------------------- per-client names (direct + ithaca)
def test_close_and_deallocate_affect_only_own_names(target1):
    with connect(target1) as a, connect(target1) as b:
        assert prepare(a, "s", "SELECT 'a:' || $1::text") == [OK]
        assert prepare(a, "t", "SELECT 'a-t'") == [OK]
        assert prepare(b, "s", "SELECT 'b:' || $1::text") == [OK]
        assert prepare(b, "t", "SELECT 'b-t'") == [OK]
        # protocol Close('S')
        assert close_stmt(a, "s") == [OK]
        assert status_of(execp(a, "s", "x")) == err("26000")
        assert execp(b, "s", "x") == rows("b:x")
        assert prepare(a, "s", "SELECT 'a2:' || $1::text") == [OK]
        assert execp(a, "s", "x") == rows("a2:x")
        # SQL DEALLOCATE name (simple protocol)
        assert simple(b, "DEALLOCATE s") == [OK]
        assert status_of(execp(b, "s", "x")) == err("26000")
        assert execp(a, "s", "y") == rows("a2:y")
        assert execp(b, "t") == rows("b-t")
        # SQL DEALLOCATE ALL
        assert simple(a, "DEALLOCATE ALL") == [OK]
        assert status_of(execp(a, "s", "x")) == err("26000")
        assert status_of(execp(a, "t")) == err("26000")
        assert execp(b, "t") == rows("b-t")
        # SQL DEALLOCATE through the extended protocol
        b.execute("DEALLOCATE t")
        assert status_of(execp(b, "t")) == err("26000")
        # both can reuse the names now
        assert prepare(a, "t", "SELECT 'a-t2'") == [OK]
        assert prepare(b, "t", "SELECT 'b-t2'") == [OK]
        assert execp(a, "t") == rows("a-t2")
        assert execp(b, "t") == rows("b-t2")


def test_discard_all_clears_only_the_clients_names(target1):
    with connect(target1) as a, connect(target1) as b:
        assert prepare(a, "s1", "SELECT 1") == [OK]
        assert prepare(a, "s2", "SELECT 2") == [OK]
        assert prepare(b, "s1", "SELECT 'b1'") == [OK]
        assert execp(a, "s1") == rows(1)
        assert simple(a, "DISCARD ALL") == [OK]
        assert status_of(execp(a, "s1")) == err("26000")
        assert status_of(execp(a, "s2")) == err("26000")
        assert execp(b, "s1") == rows("b1")
        assert prepare(a, "s1", "SELECT 'again'") == [OK]
        assert execp(a, "s1") == rows("again")
        assert execp(b, "s1") == rows("b1")


def test_failed_parse_is_not_remembered(target):
    with connect(target) as a:
        assert status_of(prepare(a, "bad", "SELECT * FROM no_such_table")) == err("42P01")
        assert status_of(prepare(a, "bad2", "SELEC 1")) == err("42601")
        assert status_of(execp(a, "bad")) == err("26000")
        for _ in range(3):
            assert a.execute("SELECT 1").fetchone() == (1,)
        assert prepare(a, "bad", "SELECT $1::int + 100") == [OK]
        assert execp(a, "bad", 1) == rows(101)
        assert prepare(a, "bad2", "SELECT 'two'") == [OK]
        assert execp(a, "bad2") == rows("two")


def test_duplicate_name_is_42P05(target):
    with connect(target) as a:
        assert prepare(a, "dup", "SELECT $1::int") == [OK]
        assert status_of(prepare(a, "dup", "SELECT $1::int")) == err("42P05")
        assert status_of(prepare(a, "dup", "SELECT 'different'")) == err("42P05")
        assert execp(a, "dup", 5) == rows(5)
        # inside a transaction the error aborts it, as in PostgreSQL
        assert simple(a, "BEGIN") == [OK]
        assert status_of(prepare(a, "dup", "SELECT 1")) == err("42P05")
        assert status_of(execp(a, "dup", 1)) == err("25P02")
        assert simple(a, "ROLLBACK") == [OK]
        assert execp(a, "dup", 6) == rows(6)


def test_unknown_statement_is_26000(target):
    with connect(target) as a:
        assert status_of(execp(a, "nosuch", 1)) == err("26000")
        assert describe(a, "nosuch")[:2] == err("26000")
        assert a.execute("SELECT 'usable'").fetchone() == ("usable",)


def test_unnamed_statement_passes_through(target):
    """The unnamed statement works within a pipeline and never clashes with named ones."""
    with connect(target) as a:
        assert prepare(a, "named", "SELECT 'named'") == [OK]
        pgc = a.pgconn
        pgc.enter_pipeline_mode()
        pgc.send_prepare(b"", b"SELECT $1::int * 3 AS tripled")
        pgc.send_describe_prepared(b"")
        pgc.send_query_prepared(b"", [b"5"])
        pgc.send_query_prepared(b"named", None)
        pgc.send_prepare(b"", b"SELECT $1::text || '?'")
        pgc.send_query_prepared(b"", [b"why"])
        pgc.pipeline_sync()
        results = pq_pipeline_results(pgc, syncs=1, timeout=TIMEOUT)
        pgc.exit_pipeline_mode()
        got = [r for r in results if isinstance(r, tuple)]
        assert got == [OK, OK, ("TUPLES_OK", None, (("15",),)),
                       ("TUPLES_OK", None, (("named",),)), OK,
                       ("TUPLES_OK", None, (("why?",),))]
        # psycopg without named statements, many times
        for i in range(10):
            assert a.execute("SELECT %s::int + 1", (i,), prepare=False).fetchone() == (i + 1,)
        assert execp(a, "named") == rows("named")


def test_sql_prepare_execute_deallocate(target):
    """SQL-level PREPARE/EXECUTE/DEALLOCATE: correct results on every server, or refused
    with 0A000 feature_not_supported; nothing else (in particular not 26000)."""

    def accept(result: list, expected: list) -> bool:
        """True if it worked (and matched), False if refused with 0A000."""
        if result and result[0][0] == "FATAL_ERROR":
            assert status_of(result) == err("0A000"), result
            return False
        assert result == expected
        return True

    with connect(target) as a:
        pins = ServerPinner(target.dsn(), 2) if is_ithaca(target) else None
        try:
            pids = pins.pids if pins else [a.info.backend_pid]

            def route(pid):
                if pins:
                    pins.route_to(pid)

            route(pids[0])
            if not accept(simple(a, "PREPARE sq(int) AS SELECT $1 * 2, pg_backend_pid()"), [OK]):
                if pins:
                    pins.release_all()
                assert a.execute("SELECT 'usable'").fetchone() == ("usable",)
                return
            for pid in [pids[-1], pids[0], pids[-1]]:
                route(pid)
                accept(simple(a, "EXECUTE sq(21)"), rows(42, pid))
            route(pids[-1])
            if accept(simple(a, "DEALLOCATE sq"), [OK]):
                route(pids[0])
                result = simple(a, "EXECUTE sq(1)")
                assert status_of(result) in (err("26000"), err("0A000"))
            if pins:
                pins.release_all()
            assert a.execute("SELECT 'usable'").fetchone() == ("usable",)
        finally:
            if pins:
                pins.close()


# ------------------------------------------------------------------------------ drivers
def _pgbench_env() -> dict:
    env = dict(os.environ)
    env.update(PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    return env


def test_pgbench_prepared_select_only(pg, target):
    init = subprocess.run(
        ["/usr/bin/pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port),
         "-U", "postgres", "postgres"],
        capture_output=True, text=True, timeout=60, env=_pgbench_env(),
        stdin=subprocess.DEVNULL)
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        ["/usr/bin/pgbench", "-n", "-S", "-M", "prepared", "-c", "8", "-j", "2", "-T", "3",
         "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres", "postgres"],
        capture_output=True, text=True, timeout=60, env=_pgbench_env(),
        stdin=subprocess.DEVNULL)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert re.search(r"^number of failed transactions: 0\b", run.stdout, re.M), out[-3000:]
    processed = re.search(r"^number of transactions actually processed: (\d+)", run.stdout,
                          re.M)
    assert processed and int(processed.group(1)) > 0, out[-3000:]
    # pgbench only logs a failed PQprepare ("prepared statement "P_0" already exists")
    # and goes on, so its stderr must be clean too
    assert "error" not in run.stderr.lower(), run.stderr[-3000:]


def test_psycopg_prepared_statements_many_clients(target):
    """8 psycopg clients with prepare_threshold=0 through two servers: each client's
    _pg3_N names map to different texts (each runs the queries in its own order), in
    autocommit, explicit transactions and pipelines."""
    queries = [
        ("SELECT %s::int + 1000", lambda v: v + 1000),
        ("SELECT %s::int * 3", lambda v: v * 3),
        ("SELECT length(repeat('ab', %s::int))", lambda v: 2 * v),
        ("SELECT (SELECT sum(g) FROM generate_series(1, %s::int) g)::int",
         lambda v: v * (v + 1) // 2),
        ("SELECT %s::int - 7", lambda v: v - 7),
    ]
    def client(n: int) -> None:
        rnd = random.Random(77 + n)
        order = list(range(len(queries)))
        rnd.shuffle(order)
        with connect(target, prepare_threshold=0) as conn:
            for step in range(30):
                qi = order[step % len(order)] if step < 10 else rnd.choice(order)
                sql, fn = queries[qi]
                v = rnd.randint(1, 50)
                mode = rnd.choice(["plain", "txn", "pipeline"])
                if mode == "plain":
                    got = [conn.execute(sql, (v,)).fetchone()[0]]
                    want = [fn(v)]
                elif mode == "txn":
                    with conn.transaction():
                        got = [conn.execute(sql, (v,)).fetchone()[0],
                               conn.execute(sql, (v + 1,)).fetchone()[0]]
                    want = [fn(v), fn(v + 1)]
                else:
                    with conn.pipeline():
                        curs = [conn.execute(queries[q][0], (v,)) for q in order]
                    got = [c.fetchone()[0] for c in curs]
                    want = [queries[q][1](v) for q in order]
                assert got == want, (n, step, mode, sql)

    run_threads(client, 8, timeout=25)


def test_asyncpg_default_statement_cache_many_clients(target):
    """asyncpg prepares every statement (named, cached) and executes it in later sync
    groups: 8 connections through two servers, concurrent."""

    async def client(n: int) -> list:
        conn = await asyncpg.connect(host="127.0.0.1", port=target.port, user="postgres",
                                     database="postgres", ssl=False, timeout=TIMEOUT)
        try:
            out = []
            for i in range(15):
                out.append(await conn.fetchval("SELECT $1::int * 2", n * 100 + i))
                out.append(await conn.fetchval("SELECT $1::text || '-' || $2::int", f"c{n}", i))
                rows_ = await conn.fetch("SELECT g, g * $1::int AS m FROM generate_series(1, 3) g",
                                         n)
                out.append([(r["g"], r["m"]) for r in rows_])
                if i % 5 == 0:
                    async with conn.transaction():
                        out.append(await conn.fetchval("SELECT $1::bigint + 1", i))
                        stmt = await conn.prepare("SELECT $1::text || $2::text")
                        out.append(await stmt.fetchval("x", str(n)))
            return out
        finally:
            await conn.close()

    def expected(n: int) -> list:
        out = []
        for i in range(15):
            out += [(n * 100 + i) * 2, f"c{n}-{i}", [(g, g * n) for g in (1, 2, 3)]]
            if i % 5 == 0:
                out += [i + 1, f"x{n}"]
        return out

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(8))), 30)

    results = asyncio.run(main())
    for n, got in enumerate(results):
        assert got == expected(n), n


def test_jdbc_style_named_statements_many_clients(target):
    """pgjdbc style: each client Parses S_1/S_2 once (same names, different texts per
    client) and Binds/Executes them many times across transactions, 6 clients in lock
    step through two servers."""
    nclients, rounds = 6, 15
    barrier = threading.Barrier(nclients, timeout=TIMEOUT)

    def client(n: int) -> None:
        try:
            with connect(target) as conn:
                assert prepare(conn, "S_1", f"SELECT $1::int + {n * 1000}, {n}") == [OK]
                assert prepare(conn, "S_2", f"SELECT $1::text || ':{n}'") == [OK]
                for r in range(rounds):
                    barrier.wait()
                    assert execp(conn, "S_1", r) == rows(n * 1000 + r, n)
                    if r % 3 == 0:
                        assert simple(conn, "BEGIN") == [OK]
                        assert execp(conn, "S_2", f"t{r}") == rows(f"t{r}:{n}")
                        assert execp(conn, "S_1", -r) == rows(n * 1000 - r, n)
                        assert simple(conn, "COMMIT") == [OK]
                    else:
                        assert execp(conn, "S_2", f"r{r}") == rows(f"r{r}:{n}")
        except threading.BrokenBarrierError:
            raise
        except BaseException:
            barrier.abort()  # the others stop waiting for this client
            raise

    try:
        run_threads(client, nclients, timeout=25)
    except threading.BrokenBarrierError as exc:
        # the real failure is in the notes (run_threads lists the other threads' errors)
        raise AssertionError(f"a client failed: {exc.__notes__}") from exc


def test_same_name_different_text_on_shared_server(target1):
    """pool_size 1: two clients, one statement name, different texts and row shapes."""
    with connect(target1) as a, connect(target1) as b:
        assert prepare(a, "S_1", "SELECT $1::int * 10 AS a_col") == [OK]
        assert prepare(b, "S_1", "SELECT 'b' || $1::text AS b_col, 2 AS two") == [OK]
        for i in range(20):
            assert execp(a, "S_1", i) == rows(10 * i)
            assert execp(b, "S_1", i) == rows(f"b{i}", 2)
            if i % 5 == 0:
                assert describe(a, "S_1") == ("COMMAND_OK", None, [23], ["a_col"])
                assert describe(b, "S_1") == ("COMMAND_OK", None, [25], ["b_col", "two"])
