"""Queries through ithaca with real drivers: simple and extended protocol, NULLs, large
messages, the console placeholder, and login errors."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import psycopg
import pytest
from helpers import login_error


@pytest.fixture
def pooler(ithaca, ithaca_config):
    return ithaca(ithaca_config(pool="transaction", pool_size=2))


def test_simple_and_extended_queries_with_nulls(pooler):
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        # simple protocol (no parameters, prepare=False)
        rows = conn.execute("SELECT 1 AS a, NULL::text AS b, 'x' AS c", prepare=False).fetchall()
        assert rows == [(1, None, "x")]
        # extended protocol with parameters, including NULL
        row = conn.execute("SELECT %s::int + 1, %s::text, %s::text IS NULL", (41, "hé", None)).fetchone()
        assert row == (42, "hé", True)
        cur = conn.cursor(binary=True)
        assert cur.execute("SELECT %s::bigint * 2", (21,)).fetchone() == (42,)
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        assert server_version == conn.info.parameter_status("server_version")


def test_ten_thousand_rows(pooler):
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 10000) g").fetchall()
    assert len(rows) == 10000
    assert rows[0] == (1, hashlib.md5(b"1").hexdigest())
    assert rows[-1] == (10000, hashlib.md5(b"10000").hexdigest())


def test_one_megabyte_query_and_sixteen_megabyte_result(pooler):
    literal = "x" * (1 << 20)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        # 1 MB of query text, simple protocol
        length = conn.execute(f"SELECT length('{literal}')", prepare=False).fetchone()[0]
        assert length == 1 << 20
        big = conn.execute("SELECT repeat('abcdefgh', 2 * 1024 * 1024)").fetchone()[0]
        assert len(big) == 16 << 20
        assert hashlib.sha256(big.encode()).hexdigest() == hashlib.sha256(
            b"abcdefgh" * (2 * 1024 * 1024)).hexdigest()
        # the connection is still usable afterwards
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_errors_keep_the_connection_usable(pooler):
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table WHERE a = %s", (1,))
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_asyncpg_session_pooling(ithaca, ithaca_config):
    proc = ithaca(ithaca_config(pool="session", pool_size=2))

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=proc.port, user="postgres",
                                     database="postgres", ssl=False)
        try:
            assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
            rows = await conn.fetch("SELECT g, NULL::int AS n FROM generate_series(1, 3) g")
            assert [(r["g"], r["n"]) for r in rows] == [(1, None), (2, None), (3, None)]
            stmt = await conn.prepare("SELECT $1::text || '!'")
            assert await stmt.fetchval("hi") == "hi!"
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE t (a int)")
                await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (3,)])
                assert await conn.fetchval("SELECT sum(a) FROM t") == 6
        finally:
            await conn.close()

    asyncio.run(main())


def test_asyncpg_transaction_pooling_without_statement_cache(pooler):
    async def main():
        conns = [await asyncpg.connect(host="127.0.0.1", port=pooler.port, user="postgres",
                                       database="postgres", ssl=False, statement_cache_size=0)
                 for _ in range(4)]
        try:
            results = await asyncio.gather(*(c.fetchval("SELECT $1::int FROM pg_sleep(0.05)", i)
                                             for i, c in enumerate(conns)))
            assert results == [0, 1, 2, 3]
        finally:
            for c in conns:
                await c.close()

    asyncio.run(main())


def test_console_show_version(pooler):
    with psycopg.connect(pooler.dsn(dbname="console"), autocommit=True) as conn:
        version = conn.execute("SHOW VERSION", prepare=False).fetchone()[0]
    assert version.startswith("ithaca ")


def test_unknown_database_without_rule(ithaca, pg):
    text = f"""
listen {{
	host "127.0.0.1"
	port {ithaca.port}
}}
storage "pg" {{
	type "remote"
	host "127.0.0.1"
	port {pg.port}
}}
database "postgres" {{
	user default {{
		authentication "none"
		storage "pg"
		pool "session"
	}}
}}
"""
    proc = ithaca(text)
    sqlstate, message = login_error(proc.port, database="nosuchdb")
    assert sqlstate == "3D000"
    assert "nosuchdb" in message
    # the process is unaffected
    with psycopg.connect(proc.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_unknown_database_on_the_server(pooler):
    sqlstate, message = login_error(pooler.port, database="missing_db")
    assert sqlstate == "3D000"
    assert 'database "missing_db" does not exist' in message
