"""Issue 4, point 5: client parameters in transaction pooling (``maintain_params``).

Settings a client SETs that PostgreSQL reports with ParameterStatus (application_name,
TimeZone, DateStyle, IntervalStyle, client_encoding, standard_conforming_strings, and
search_path where the server reports it) follow the client to whatever server it gets next;
startup parameters (application_name in the conninfo) and ``options`` (-c key=value) are
applied; clients with different settings sharing one server each see their own values.

Expected values come from a "reference" connection made directly to PostgreSQL with the same
conninfo and the same statements, so nothing about PostgreSQL's formatting is hard-coded.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from helpers import ServerPinner, is_ithaca

# a hung pooler fails the test quickly instead of after the suite-wide 120 s
pytestmark = pytest.mark.timeout(30)

PROBE = (
    "SELECT current_setting('application_name'), current_setting('TimeZone'), "
    "current_setting('DateStyle'), current_setting('IntervalStyle'), "
    "current_setting('client_encoding'), current_setting('standard_conforming_strings'), "
    "current_setting('statement_timeout'), current_setting('search_path'), "
    "'2020-01-02 03:04:05+00'::timestamptz::text, "
    "interval '1 day 2 hours 3 minutes'::text, %s::text"
)
REPORTED = ["application_name", "TimeZone", "DateStyle", "IntervalStyle", "client_encoding",
            "standard_conforming_strings", "search_path"]


@pytest.fixture
def pooler2(ithaca, ithaca_config):
    return ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=10000))


def probe(conn) -> tuple:
    """Session settings as seen by SQL, plus what the driver was told (ParameterStatus)."""
    row = conn.execute(PROBE, ("é",), prepare=False).fetchone()
    reported = {name: conn.info.parameter_status(name) for name in REPORTED}
    return row, reported


class Twin:
    """The same client twice: through ``target`` and directly to PostgreSQL (reference)."""

    def __init__(self, target, pg, **connect_kw):
        # unnamed statements only: named ones are test_extended_pstmt.py's subject
        connect_kw.setdefault("prepare_threshold", None)
        self.conn = psycopg.connect(target.dsn(), autocommit=True, **connect_kw)
        try:
            self.ref = psycopg.connect(pg.dsn(), autocommit=True, **connect_kw)
        except BaseException:
            self.conn.close()
            raise
        self.search_path_reported = self.ref.info.parameter_status("search_path") is not None

    def run(self, *statements: str) -> None:
        for conn in (self.ref, self.conn):
            for sql in statements:
                conn.execute(sql, prepare=False)

    def check(self, where: str = "") -> None:
        want_row, want_reported = probe(self.ref)
        got_row, got_reported = probe(self.conn)
        if not self.search_path_reported:
            # PostgreSQL before 18 does not report search_path: it need not follow the client
            want_row, got_row = want_row[:7] + want_row[8:], got_row[:7] + got_row[8:]
            want_reported.pop("search_path")
            got_reported.pop("search_path")
        assert got_row == want_row, where
        assert got_reported == want_reported, where

    def close(self) -> None:
        self.conn.close()
        self.ref.close()

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SET_A = [
    "SET application_name = 'client_a_set'",
    "SET TimeZone = 'Asia/Tokyo'",
    "SET DateStyle = 'SQL, DMY'",
    "SET IntervalStyle = 'iso_8601'",
    "SET client_encoding = 'LATIN1'",
    "SET standard_conforming_strings = off",
    "SET search_path = pg_catalog, public",
]
SET_B = [
    "SET TimeZone = 'America/New_York'",
    "SET DateStyle = 'German'",
    "SET IntervalStyle = 'sql_standard'",
]


def test_set_parameters_follow_the_client_to_another_server(pg, pooler2):
    """SET on server X, then every later transaction on Y (and back) sees the values;
    the next client on X sees none of them."""
    with Twin(pooler2, pg) as a, Twin(pooler2, pg) as b, \
            ServerPinner(pooler2.dsn(), 2) as pins:
        x, y = pins.pids
        pins.route_to(x)
        a.run(*SET_A)
        a.check("on the server where SET ran")
        for pid in [y, x, y]:
            pins.route_to(pid)
            a.check(f"on server {pid}")
            assert a.conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        pins.route_to(x)
        b.check("another client on the server A used")
        pins.route_to(y)
        b.run(*SET_B)
        pins.route_to(x)
        b.check("B on the other server")
        a.check("A after B")
        pins.release_all()


def test_startup_parameters_and_options_are_applied(pg, target):
    """application_name from the conninfo and options='-c ...' on every server."""
    kw = {"application_name": "startup_app",
          "options": "-c statement_timeout=1234 -c DateStyle=German -c TimeZone=Europe/Berlin"}
    with Twin(target, pg, **kw) as a:
        pins = ServerPinner(target.dsn(), 2) if is_ithaca(target) else None
        try:
            pids = pins.pids if pins else [None]
            for pid in pids + pids:
                if pins:
                    pins.route_to(pid)
                a.check(f"server {pid}")
                assert a.conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
                assert a.conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                ).fetchone() == ("startup_app",)
            # statement_timeout really applies (1.234 s instead of the 5 s sleep)
            if pins:
                pins.route_to(pids[-1])
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                a.conn.execute("SELECT pg_sleep(5)")
            assert time.monotonic() - started < 4
            if pins:
                pins.release_all()
        finally:
            if pins:
                pins.close()


def test_two_clients_with_different_settings_share_one_server(pg, target1):
    """pool_size 1: two clients with different startup parameters, options and SETs are
    interleaved 30 times (with SET inside rolled-back transactions, SET LOCAL, RESET);
    each always sees its own values."""
    with Twin(target1, pg, application_name="client_a",
              options="-c statement_timeout=1111") as a, \
            Twin(target1, pg, application_name="client_b",
                 options="-c statement_timeout=2222 -c IntervalStyle=postgres_verbose") as b:
        a.run(*SET_A)
        b.run(*SET_B)
        a.check("A after its SETs")
        b.check("B after its SETs")
        for i in range(30):
            if i == 5:
                a.run("BEGIN", "SET TimeZone = 'UTC'")
                a.check("A inside a transaction with a SET")
                a.run("ROLLBACK")
            if i == 8:
                b.run("BEGIN", "SET LOCAL DateStyle = 'Postgres, MDY'")
                b.check("B with SET LOCAL")
                b.run("COMMIT")
            if i == 12:
                a.run("SET TimeZone = 'Europe/Berlin'")
            if i == 15:
                # RESET of a setting the client SET. (RESET of one it got through startup
                # `options` returns the server's default in transaction pooling: PostgreSQL
                # keeps startup values as reset values only for the session that got them.)
                b.run("RESET DateStyle")
            if i == 20:
                a.run("SET client_encoding = 'UTF8'", "SET standard_conforming_strings = on")
            a.check(f"A, round {i}")
            b.check(f"B, round {i}")
        pids = {c.conn.execute("SELECT pg_backend_pid()").fetchone()[0] for c in (a, b)}
        assert len(pids) == (1 if is_ithaca(target1) else 2)


def test_many_clients_keep_their_time_zones(pg, target1):
    """Six clients, six time zones, one server: SHOW TimeZone and now()-based rendering."""
    zones = ["Asia/Tokyo", "America/New_York", "Europe/Berlin", "UTC",
             "Australia/Sydney", "America/Sao_Paulo"]
    conns = []
    try:
        for z in zones:
            conns.append(psycopg.connect(target1.dsn(), autocommit=True, prepare_threshold=None,
                                         options=f"-c TimeZone={z}" if z == "UTC" else ""))
            if z != "UTC":
                conns[-1].execute(f"SET TimeZone = '{z}'")
        for _ in range(10):
            for z, conn in zip(zones, conns, strict=True):
                assert conn.execute("SHOW TimeZone").fetchone() == (z,)
                # the session renders timestamptz in its own zone
                assert conn.execute(
                    "SELECT current_setting('TimeZone'), starts_with("
                    "'2021-01-15 12:00+00'::timestamptz::text, "
                    "('2021-01-15 12:00+00'::timestamptz AT TIME ZONE %s)::text)",
                    (z,)).fetchone() == (z, True)
                assert conn.info.parameter_status("TimeZone") == z
    finally:
        for conn in conns:
            conn.close()
