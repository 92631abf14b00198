"""Shared fixtures.

pytest-celery 1.x shadows the classic `celery_worker` fixture with a Docker-based one that
cannot run here (pytest-celery#442); importing the classic one restores it.
"""

from celery.contrib.pytest import celery_worker  # noqa: F401
