"""Fixtures shared by the integration tests that run the same checks against PostgreSQL
itself ("direct") and through ithaca, so the direct run proves the test's own logic."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["direct", "ithaca"])
def target(request, pg, ithaca, ithaca_config):
    """pool_size 2 transaction pooling, or PostgreSQL itself."""
    if request.param == "direct":
        return pg
    return ithaca(ithaca_config(pool="transaction", pool_size=2, pool_timeout=10000))


@pytest.fixture(params=["direct", "ithaca"])
def target1(request, pg, ithaca, ithaca_config):
    """pool_size 1 transaction pooling (clients share one server), or PostgreSQL itself."""
    if request.param == "direct":
        return pg
    return ithaca(ithaca_config(pool="transaction", pool_size=1, pool_timeout=10000))
