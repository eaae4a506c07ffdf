"""Issue 4, point 7: results equivalence.

The same seeded random mix of plain (extended, unnamed), simple-protocol, psycopg-prepared,
pgjdbc-style named, pipelined (psycopg and libpq-level, errors included) statements, explicit
transactions and per-client session settings, run by 16 client threads through ithaca
(transaction pooling, pool_size 2) and directly against PostgreSQL, must give identical
per-client result sequences.  The "direct" case compares two direct runs (checks that the
workload is deterministic); the "ithaca" case compares ithaca against a direct run.
"""

from __future__ import annotations

import random

import psycopg
import pytest
from helpers import pq_call, pq_flush, pq_pipeline_results, run_threads

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(60)

SEED = 20240611
NCLIENTS = 16
NOPS = 40
TIMEOUT = 10.0
ZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Berlin"]
DATESTYLES = ["ISO, MDY", "SQL, DMY", "German", "Postgres, MDY"]

# (sql with %s placeholders, parameter generator)
QUERIES = [
    ("SELECT %s::int + %s::int", lambda r: (r.randint(-1000, 1000), r.randint(-1000, 1000))),
    ("SELECT %s::int * %s::int, %s::text", lambda r: (r.randint(0, 99), r.randint(0, 99),
                                                      r.choice(["a", "bé", "ĉ", ""]))),
    ("SELECT g, g * %s::int FROM generate_series(1, %s::int) g",
     lambda r: (r.randint(1, 9), r.randint(0, 30))),
    ("SELECT upper(%s::text) || repeat('x', %s::int)",
     lambda r: (r.choice(["abc", "héllo", "z"]), r.randint(0, 20))),
    ("SELECT md5(%s::text), length(%s::text)", lambda r: (str(r.random()), "k" * r.randint(0, 9))),
    ("SELECT 1000 / %s::int", lambda r: (r.choice([0, 1, 3, 7, 0]),)),
    ("SELECT %s::numeric / 7, round(%s::numeric, 2)",
     lambda r: (r.randint(1, 10**6), r.uniform(-5, 5))),
    ("SELECT array_agg(g ORDER BY g DESC)::text FROM generate_series(1, %s::int) g",
     lambda r: (r.randint(1, 12),)),
    ("SELECT current_setting('application_name'), "
     "'2020-05-06 07:08:09+00'::timestamptz::text, %s::date::text",
     lambda r: (f"2021-0{r.randint(1, 9)}-1{r.randint(0, 9)}",)),
    ("SELECT %s::int / (%s::int - %s::int)",
     lambda r: (r.randint(1, 50), (x := r.randint(0, 3)), r.choice([x, x + 1]))),
    ("SELECT nosuch_column FROM (SELECT %s::int AS a) s", lambda r: (r.randint(0, 1),)),
]
# pgjdbc-style named statements: the same names in every client, texts differ per client
NAMED = {
    "S_1": "SELECT $1::int + {n}",
    "S_2": "SELECT $1::text || ':{n}:' || $2::text",
    "S_3": "SELECT g * {n} FROM generate_series(1, $1::int) g",
}
NAMED_PARAMS = {
    "S_1": lambda r: (r.randint(0, 100),),
    "S_2": lambda r: (r.choice(["x", "y"]), r.randint(0, 9)),
    "S_3": lambda r: (r.randint(0, 6),),
}


def _dollar(sql: str) -> str:
    out, i = [], 0
    for part in sql.split("%s")[:-1]:
        i += 1
        out.append(f"{part}${i}")
    return "".join(out) + sql.split("%s")[-1]


def make_plan(n: int) -> list[tuple]:
    rnd = random.Random(SEED * 1000 + n)
    plan: list[tuple] = []
    for k in range(NOPS):
        kind = rnd.choices(
            ["plain", "simple", "prepared", "named", "pipeline", "rawpipe", "txn", "set"],
            weights=[4, 2, 4, 3, 2, 2, 2, 1])[0]
        q = rnd.randrange(len(QUERIES))
        sql, gen = QUERIES[q]
        if kind in ("plain", "simple", "prepared"):
            plan.append((kind, sql, gen(rnd)))
        elif kind == "named":
            name = rnd.choice(sorted(NAMED))
            plan.append((kind, name, NAMED_PARAMS[name](rnd)))
        elif kind == "pipeline":
            # psycopg pipeline: no errors (where psycopg raises them depends on timing)
            safe = [0, 1, 2, 3, 4, 6, 7, 8]
            stmts = []
            for _ in range(rnd.randint(2, 6)):
                s, g = QUERIES[rnd.choice(safe)]
                stmts.append((s, g(rnd), rnd.random() < 0.5, rnd.random() < 0.3))
            plan.append((kind, stmts))
        elif kind == "rawpipe":
            stmts = []
            for _ in range(rnd.randint(2, 7)):
                s, g = QUERIES[rnd.randrange(len(QUERIES))]
                stmts.append((_dollar(s), g(rnd), rnd.random() < 0.4))
            plan.append((kind, stmts))
        elif kind == "txn":
            body = []
            for _ in range(rnd.randint(1, 4)):
                s, g = QUERIES[rnd.randrange(len(QUERIES))]
                body.append((s, g(rnd)))
            plan.append((kind, body, rnd.random() < 0.3))
        else:
            setting = rnd.choice(["application_name", "TimeZone", "DateStyle"])
            value = {"application_name": f"eq_{n}_{k}", "TimeZone": rnd.choice(ZONES),
                     "DateStyle": rnd.choice(DATESTYLES)}[setting]
            plan.append((kind, setting, value))
    return plan


def _outcome(fn):
    try:
        return ("ok", fn())
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)


def run_op(conn, n: int, op: tuple, prepared: set[str]):
    """Run one planned operation; returns a comparable description of its results."""
    pgc = conn.pgconn
    kind = op[0]
    if kind == "plain":
        return _outcome(lambda: conn.execute(op[1], op[2], prepare=False).fetchall())
    if kind == "simple":
        cur = psycopg.ClientCursor(conn)
        return _outcome(lambda: cur.execute(op[1], op[2]).fetchall())
    if kind == "prepared":
        return _outcome(lambda: conn.execute(op[1], op[2], prepare=True).fetchall())
    if kind == "named":
        name, params = op[1], op[2]
        parse = None
        if name not in prepared:
            sql = NAMED[name].format(n=n)
            parse = pq_call(pgc, lambda: pgc.send_prepare(name.encode(), sql.encode()), TIMEOUT)
            prepared.add(name)
        enc = [str(p).encode() for p in params]
        return parse, pq_call(pgc, lambda: pgc.send_query_prepared(name.encode(), enc), TIMEOUT)
    if kind == "pipeline":
        with conn.pipeline() as p:
            curs = []
            for sql, params, prep, sync in op[1]:
                curs.append(conn.execute(sql, params, prepare=prep))
                if sync:
                    p.sync()
        return [c.fetchall() for c in curs]
    if kind == "rawpipe":
        pgc.enter_pipeline_mode()
        syncs = 0
        for sql, params, sync in op[1]:
            pgc.send_query_params(sql.encode(), [str(p).encode() for p in params])
            if sync:
                pgc.pipeline_sync()
                syncs += 1
        pgc.pipeline_sync()
        pq_flush(pgc, TIMEOUT)
        results = pq_pipeline_results(pgc, syncs + 1, TIMEOUT)
        pgc.exit_pipeline_mode()
        return results
    if kind == "txn":
        body, rollback = op[1], op[2]

        def txn():
            rows = []
            with conn.transaction(force_rollback=rollback):
                for sql, params in body:
                    rows.append(conn.execute(sql, params).fetchall())
            return rows

        return _outcome(txn)
    setting, value = op[1], op[2]
    conn.execute(f"SET {setting} = '{value}'")
    return conn.execute(f"SHOW {setting}").fetchone()


def run_client(dsn: str, n: int) -> list:
    """One entry per planned operation: (its results, transaction status afterwards)."""
    out: list = []
    prepared: set[str] = set()
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        for op in make_plan(n):
            out.append((run_op(conn, n, op, prepared), conn.info.transaction_status.name))
    return out


def run_all(dsn: str) -> list:
    return run_threads(lambda n: run_client(dsn, n), NCLIENTS, timeout=25)


@pytest.mark.parametrize("target", ["direct", "ithaca"])
def test_same_results_through_ithaca_as_directly(pg, ithaca, ithaca_config, target):
    reference = run_all(pg.dsn())
    kinds = {op[0] for n in range(NCLIENTS) for op in make_plan(n)}
    assert kinds == {"plain", "simple", "prepared", "named", "pipeline", "rawpipe", "txn", "set"}
    flat = repr(reference)
    assert "'error', '22012'" in flat and "FATAL_ERROR" in flat and "PIPELINE_ABORTED" in flat
    if target == "direct":
        other = run_all(pg.dsn())
    else:
        proc = ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=30000))
        other = run_all(proc.dsn())
    for n in range(NCLIENTS):
        plan = make_plan(n)
        got, want = other[n], reference[n]
        assert len(got) == len(want) == len(plan)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if g != w:
                pytest.fail(f"client {n}: first difference at operation {i} {plan[i]!r}:\n"
                            f"  {target}: {g!r}\n  direct: {w!r}")
