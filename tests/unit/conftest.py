"""Fixtures shared by the unit tests."""

import pytest

from tests.unit.redis_server import MISSING, find_binary, redis_server


@pytest.fixture(scope="session")
def redis_url():
    """One real redis-server for the session; each test keeps to its own key prefix."""
    if find_binary() is None:
        pytest.skip(MISSING)
    with redis_server() as url:
        yield url
