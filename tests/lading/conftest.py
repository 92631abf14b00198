"""Fixtures for running `lading` commands as real processes.

`private_redis` is a redis-server of its own for tests that run a whole deployment (the
compose services) and want a server no other test touches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    try:
        yield server.url
    finally:
        server.stop()
