"""The one lock rule of maintenance jobs: a job runs only when no other run of it holds its
registry lock, and never waits for one (beat may trigger a duplicate; it answers skipped)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from pipeline.errors import TooManyRequests

if TYPE_CHECKING:
    from pipeline.registry import Registry


@contextmanager
def exclusive(registry: Registry, name: str) -> Iterator[bool]:
    """Hold the registry lock `name` for the block if it is free (yield True); yield False
    at once when another process holds it. Names start with `_`, which no repository can."""
    with ExitStack() as stack:
        try:
            stack.enter_context(registry.locks.lock(name, timeout=0))
        except TooManyRequests:
            yield False
            return
        yield True
