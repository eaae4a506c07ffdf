"""Shared fixtures: a throw-away PostgreSQL (``pg``) and ithaca processes (``ithaca``).

Fixtures
--------
pg               function scope: a started PgCluster (tests/pgcluster.py), removed after.
pg_factory       function scope: ``pg_factory(start=True) -> PgCluster`` for extra clusters.
ithaca           function scope factory:
                 ``ithaca(config, *, port=None, start_timeout=10, env=None, python=sys.executable)``
                 ``config`` is Odyssey-format text, where ``{port}`` / ``{pg_port}`` are
                 replaced by the listen port and the ``pg`` fixture's port, or a callable
                 ``config(port) -> text``.  ``ithaca.port`` is the listen port the next
                 call will use (a fresh free port), so tests can build the text first.
ithaca_config    function scope: ``ithaca_config(**make_config_kwargs) -> text`` for
                 ``pg`` and ``ithaca.port`` (see helpers.make_config).

On a failing test the tails of the ithaca and PostgreSQL logs are attached to
the report as extra sections.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from helpers import IthacaProcess, free_port, make_config  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

_LOG_SOURCES = pytest.StashKey[list]()
INTEGRATION_TIMEOUT = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs PostgreSQL and/or an ithaca process")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT))


def _register_log(request: pytest.FixtureRequest, title: str, tail: Callable[[], str]) -> None:
    request.node.stash.setdefault(_LOG_SOURCES, []).append((title, tail))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for title, tail in item.stash.get(_LOG_SOURCES, []):
            try:
                text = tail()
            except Exception as e:  # the log is best effort
                text = f"<could not read log: {e}>"
            rep.sections.append((title, text or "<empty>"))


def _new_cluster(request: pytest.FixtureRequest, start: bool = True) -> PgCluster:
    cluster = PgCluster()
    request.addfinalizer(cluster.cleanup)
    _register_log(request, f"postgresql log (port {cluster.port}, last 50 lines)",
                  lambda: cluster.log_tail(50))
    if start:
        cluster.start()
    return cluster


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> PgCluster:
    return _new_cluster(request)


@pytest.fixture
def pg_factory(request: pytest.FixtureRequest) -> Callable[..., PgCluster]:
    def factory(start: bool = True) -> PgCluster:
        return _new_cluster(request, start=start)

    return factory


class IthacaFactory:
    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path):
        self._request = request
        self._tmp = tmp_path
        self._next_port: int | None = None
        self._count = 0
        self.started: list[IthacaProcess] = []

    @property
    def port(self) -> int:
        """Listen port the next ``ithaca(...)`` call will use."""
        if self._next_port is None:
            self._next_port = free_port()
        return self._next_port

    def __call__(self, config: str | Callable[[int], str], *, port: int | None = None,
                 start_timeout: float = 10.0, env: dict | None = None,
                 python: str = sys.executable) -> IthacaProcess:
        listen = port if port is not None else self.port
        if port is None:
            self._next_port = None
        if callable(config):
            text = config(listen)
        else:
            text = config.replace("{port}", str(listen))
            if "{pg_port}" in text:
                pg = self._request.getfixturevalue("pg")
                text = text.replace("{pg_port}", str(pg.port))
        self._count += 1
        name = f"ithaca{self._count}"
        proc_holder: list[IthacaProcess] = []
        _register_log(self._request, f"{name} log (port {listen}, last 50 lines)",
                      lambda: proc_holder[0].log_tail(50) if proc_holder else "")
        proc = IthacaProcess(text, self._tmp / name, listen, start_timeout=start_timeout,
                             env=env, name=name, python=python)
        proc_holder.append(proc)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.started):
            p.terminate()
            tail = p.log_tail(50)
            if tail:
                # shown by pytest only when the test fails
                print(f"--- {p.log_path} (last 50 lines) ---\n{tail}", file=sys.stderr)


@pytest.fixture
def ithaca(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IthacaFactory]:
    factory = IthacaFactory(request, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def ithaca_config(pg: PgCluster, ithaca: IthacaFactory) -> Callable[..., str]:
    def build(**kw: object) -> str:
        return make_config(pg.port, ithaca.port, **kw)

    return build
