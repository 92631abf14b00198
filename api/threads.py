"""Blocking calls (storage, mostly) run from the event loop in a worker thread.

`run_blocking(func, *args)` is `anyio.to_thread.run_sync(func, *args)` with the same
guarantees — the caller's context variables (request id, the request's job list) are
current in the thread, and the call is never abandoned: a caller cancelled meanwhile
(client gone, shutdown) waits for it to end before the cancellation goes on, so a storage
writer is never left open behind it — at under half the event loop's CPU per call
(measured ~16 against ~40 µs: anyio looks up its backend, a run variable, a capacity
limiter and a cancel scope on every call). Every request makes one or more of these
calls, so this is part of the API's cost per request.

The threads are one pool per process, as many as anyio's default limiter allows. The pool
is a queue and threads of its own rather than `loop.run_in_executor` on a
`ThreadPoolExecutor`: that chain (a `concurrent.futures.Future` with its Condition, a work
item, `wrap_future`'s two-way callbacks and the shield's outer future) was ~10% of the
embedded API's GIL time at 8 concurrent 4 KiB pushes (py-spy). Here a call costs one queue
put and, when it ends, one `call_soon_threadsafe` that resolves the caller's future.
Threads start on demand, one per call that finds none idle, up to MAX_THREADS (as
ThreadPoolExecutor does), and are daemons: no call outlives its caller, who always waits
for it (see above).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["MAX_THREADS", "run_blocking"]

T = TypeVar("T")

MAX_THREADS = 40  # anyio's default thread limiter


class _Call(Generic[T]):
    """One call: run in a pool thread, resolved on its caller's loop."""

    __slots__ = ("args", "context", "ended", "func", "future", "loop", "waiter")

    def __init__(
        self, func: Callable[..., T], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.func = func
        self.args = args
        self.context = contextvars.copy_context()
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None  # a cancelled caller waits on it

    def run(self) -> None:
        """In a pool thread."""
        try:
            result = self.context.run(self.func, *self.args)
        except StopIteration as exc:  # an asyncio future refuses it
            outcome: tuple[Any, BaseException | None] = (None, RuntimeError(f"StopIteration: {exc}"))
        except BaseException as exc:
            outcome = (None, exc)
        else:
            outcome = (result, None)
        try:
            self.loop.call_soon_threadsafe(self._finish, *outcome)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _finish(self, result: T, exc: BaseException | None) -> None:
        """On the caller's loop."""
        self.ended = True
        future = self.future
        if not future.done():  # else the caller was cancelled
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Pool:
    """Up to `size` daemon threads taking calls from one queue (see module)."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: SimpleQueue[_Call[Any]] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a call no submitter has claimed yet
        self._threads = 0

    def submit(self, call: _Call[Any]) -> None:
        self._queue.put(call)
        with self._lock:
            if self._idle > 0:
                self._idle -= 1  # that thread takes this call
                return
            if self._threads >= self._size:
                return  # the next thread to end a call takes it
            self._threads += 1
            number = self._threads
        threading.Thread(target=self._work, name=f"{self._name}_{number}", daemon=True).start()

    def _work(self) -> None:
        queue, lock = self._queue, self._lock
        while True:
            queue.get().run()
            with lock:
                self._idle += 1


_pool: _Pool | None = None
_pool_guard = threading.Lock()


def _threads() -> _Pool:
    global _pool
    if _pool is None:
        with _pool_guard:
            if _pool is None:
                _pool = _Pool(MAX_THREADS, "lading-blocking")
    return _pool


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a worker thread, in a copy of the caller's context (see module)."""
    call = _Call(func, args, asyncio.get_running_loop())
    (_pool or _threads()).submit(call)
    try:
        return await call.future
    except asyncio.CancelledError:
        if not call.ended:
            # Only now pay for a cancel scope: shielded, anyio delivers no further
            # cancellation until the call has ended.
            waiter = call.waiter = call.loop.create_future()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([waiter])
        raise
