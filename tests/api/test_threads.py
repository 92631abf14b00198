"""api.threads.run_blocking: what anyio.to_thread.run_sync guaranteed, which it replaces."""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar

import pytest

from api.threads import MAX_THREADS, run_blocking

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


async def test_concurrent_calls_each_get_a_thread_up_to_the_bound() -> None:
    # Each call waits for all the others: served one after another, they would deadlock.
    count = min(16, MAX_THREADS)
    together = threading.Barrier(count, timeout=30)
    names = await asyncio.gather(
        *(run_blocking(lambda: (together.wait(), threading.current_thread().name)[1]) for _ in range(count))
    )
    assert len(set(names)) == count


async def test_a_stop_iteration_comes_back_as_an_error() -> None:
    def stops() -> None:
        raise StopIteration("end of listing")

    with pytest.raises(RuntimeError, match="end of listing"):
        await run_blocking(stops)
