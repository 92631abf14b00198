"""Shared fixtures.

pytest-celery 1.x shadows the classic `celery_worker` fixture with a Docker-based one that
cannot run here (pytest-celery#442); importing the classic one restores it.

Every test that needs Redis uses the session's own `redis-server` (tests.support.
redis_server). It is started when this file is imported: pytest imports the root conftest
before any other conftest or test module, and those read the server's URL at import time.
"""

from celery.contrib.pytest import celery_worker  # noqa: F401

from tests.support import redis_server

redis_server.start()
