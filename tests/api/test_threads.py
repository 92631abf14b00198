"""api.threads.run_blocking: what anyio.to_thread.run_sync guaranteed, which it replaces."""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar

import pytest

from api.threads import run_blocking

pytestmark = pytest.mark.anyio

marker: ContextVar[str] = ContextVar("marker", default="unset")


async def test_the_call_runs_in_another_thread_with_the_callers_context() -> None:
    marker.set("request-1")
    here = threading.get_ident()
    seen = await run_blocking(lambda: (marker.get(), threading.get_ident()))
    assert seen[0] == "request-1"
    assert seen[1] != here


async def test_errors_come_back_to_the_caller() -> None:
    def fail() -> None:
        raise ValueError("storage said no")

    with pytest.raises(ValueError, match="storage said no"):
        await run_blocking(fail)


async def test_a_cancelled_caller_waits_for_the_call_to_end() -> None:
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def storage_call() -> None:
        started.set()
        release.wait(30)
        events.append("call ended")

    task = asyncio.create_task(run_blocking(storage_call))
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
    task.cancel()
    for _ in range(20):
        await asyncio.sleep(0)  # loop turns, not time: an abandoned call would be done
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["call ended"]
