"""Embedded mode: a real Celery worker inside the API's process, with no external broker.

`start_embedded_worker(app, concurrency)` runs a `celery.worker.WorkController` (the same
worker the `celery worker` command runs, minus its signal handlers, logging setup and pid
file) with the threads pool in a background thread, consuming every Lading queue. With
`create_app` on embedded settings the broker is kombu's `memory://` transport, woken rather
than polled (`WakingTransport`, below), and results go to `InProcessBackend`, so a job runs
through exactly the task code a scaled-out worker runs.

Constraints of the mode, all inherent to one process:
- the memory transport keeps its queues in the process (a class attribute of kombu's
  channel), so run one embedded worker per process; queued jobs die with the process;
- the threads pool enforces no time limits;
- `celery.worker.state` (the flag that stops a worker loop) is per process;
- the worker's pool threads run each job through Celery's *default* app (its tracer looks
  the task up on `current_app`), so the app is made the process default while the worker
  runs, as the `celery worker` command does; `stop()` restores the previous default.

`celery.contrib.testing.worker.start_worker` is not used: it is a test helper that sets the
default app, reconfigures logging and requires the `celery.ping` test task.

Waiting for a job costs nothing either: kombu's memory transport polls its queues (the
worker loop sleeps `polling_interval` between empty reads: every 5 ms it took the GIL from
the event loop, and a job waited up to that long to start). `WakingTransport` sleeps on a
condition instead, notified whenever a message is put or a prefetch slot is freed (ack,
reject), so a job starts as soon as it is sent and an idle worker does not wake at all
(`polling_interval` remains only a safety bound on one sleep).

Waiting costs nothing while nothing lands: the result store keeps waiters per task id and
calls back only the waiters of the result just stored (the API's job client hooks in via
`InProcessBackend.add_result_callback`). The previous design, one shared condition
notified on every write plus a polling thread per waiting request, spent more CPU on
waking waiters than on running jobs at 32 concurrent uploads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from celery import Celery, states
from celery import _state as celery_state
from celery.backends.base import KeyValueStoreBackend
from celery.beat import EmbeddedService
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.worker import WorkController
from celery.worker import state as worker_state
from kombu.transport import memory
from kombu.transport.virtual import Empty

from pipeline.jobs import QUEUES

log = logging.getLogger(__name__)

BACKEND = "workers.embedded:InProcessBackend"
TRANSPORT = "workers.embedded:WakingTransport"
MAX_RESULTS = 10_000
WAKE_BOUND = 1.0
"""Longest single sleep of a waiting WakingTransport (kombu's own polling default): only
a path that frees a slot without notifying (none is known) would wait that long."""


class _Wakeups:
    """A generation counter and a condition: anything that may let a waiting consumer
    take a message bumps the counter and wakes every sleeper. One per process, like the
    memory transport's queues (a class attribute of its channel)."""

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.generation = 0

    def notify(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep up to `timeout` s unless a notify came after `seen` was read."""
        with self.condition:
            if self.generation == seen:
                self.condition.wait(timeout)


_WAKEUPS = _Wakeups()


class WakingChannel(memory.Channel):
    """kombu's memory channel, notifying `_WAKEUPS` on every put, ack and reject."""

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        super()._put(queue, message, **kwargs)
        _WAKEUPS.notify()

    def _put_fanout(self, exchange: str, message: Any, routing_key: str | None = None, **kwargs: Any) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _WAKEUPS.notify()

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        _WAKEUPS.notify()  # a prefetch slot is free: the consumer may take the next job

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)
        _WAKEUPS.notify()

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        consumer_tag = super().basic_consume(*args, **kwargs)
        _WAKEUPS.notify()
        return consumer_tag

    def basic_qos(self, *args: Any, **kwargs: Any) -> None:
        super().basic_qos(*args, **kwargs)
        _WAKEUPS.notify()


class WakingTransport(memory.Transport):
    """kombu's memory transport whose `drain_events` sleeps until woken (see module)."""

    Channel = WakingChannel

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        bound = min(self.polling_interval or WAKE_BOUND, WAKE_BOUND)
        cycle = self.cycle
        assert cycle is not None  # set when the transport is created
        while True:
            seen = _WAKEUPS.generation  # before looking: a put after this wakes the sleep
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            remaining = bound if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            _WAKEUPS.wait(seen, min(remaining, bound))


class _ResultStore:
    """Encoded results by key, shared by every thread of one app, with per-key watchers.

    A watcher is called (outside the lock, in the writing thread) on each later write of
    its key only: one result wakes its own waiters and nobody else's. Bounded: oldest
    entries go first past MAX_RESULTS or after `expires`."""

    def __init__(self, expires: float) -> None:
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._expires = expires
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Callable[[Any], None]]] = {}

    def _current(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def _put(self, key: str, value: Any) -> None:
        self._data[key] = (time.monotonic() + self._expires, value)
        self._data.move_to_end(key)
        while len(self._data) > MAX_RESULTS:
            self._data.popitem(last=False)

    def get(self, key: str) -> Any:
        with self._lock:
            return self._current(key)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._put(key, value)
            watchers = self._watchers.get(key)
            watchers = list(watchers) if watchers else None
        for watcher in watchers or ():
            watcher(value)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def incr(self, key: str) -> int:
        with self._lock:
            current = int(self._current(key) or 0) + 1
            self._put(key, current)
            return current

    def watch(self, key: str, watcher: Callable[[Any], None]) -> Any:
        """Call `watcher(value)` on every later write of `key`; return its value now.

        Registering and reading under one lock: a write lands either before (and is
        returned) or after (and is seen by the watcher), never in between unseen."""
        with self._lock:
            self._watchers.setdefault(key, []).append(watcher)
            return self._current(key)

    def unwatch(self, key: str, watcher: Callable[[Any], None]) -> None:
        with self._lock:
            watchers = self._watchers.get(key)
            if watchers is None:
                return
            try:
                watchers.remove(watcher)
            except ValueError:
                return
            if not watchers:
                del self._watchers[key]

    def watched(self) -> int:
        """How many keys have watchers (tests check that waiters clean up)."""
        with self._lock:
            return len(self._watchers)


_STORES_GUARD = threading.Lock()


def _store_for(app: Celery) -> _ResultStore:
    # Celery builds a backend per thread unless it is thread_safe, and may race to build
    # two; keeping the data on the app makes every instance of one app see the same results.
    with _STORES_GUARD:
        store: _ResultStore | None = getattr(app, "_lading_result_store", None)
        if store is None:
            expires = app.conf.result_expires or 86400
            seconds = expires.total_seconds() if hasattr(expires, "total_seconds") else float(expires)
            store = _ResultStore(seconds)
            app._lading_result_store = store
        return store


class InProcessBackend(KeyValueStoreBackend):
    """A result backend living in this process's memory, shared by one app's threads.

    Results are pushed, not polled: `add_result_callback(task_id, callback)` calls back
    when that task's result is stored (the API's job client resolves its asyncio futures
    this way, with no thread per waiter), and `wait_for` (AsyncResult.get) sleeps on an
    event only that result sets."""

    thread_safe = True
    supports_autoexpire = True
    implements_incr = True

    def __init__(self, app: Celery, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.thread_safe = True  # BaseBackend.__init__ resets it from result_backend_thread_safe
        self.url = url
        self._store = _store_for(app)

    def get(self, key: bytes | str) -> Any:
        return self._store.get(_text(key))

    def mget(self, keys: list[bytes | str]) -> list[Any]:
        return [self._store.get(_text(k)) for k in keys]

    def set(self, key: bytes | str, value: Any) -> None:
        self._store.set(_text(key), value)

    def delete(self, key: bytes | str) -> None:
        self._store.delete(_text(key))

    def incr(self, key: bytes | str) -> int:
        return self._store.incr(_text(key))

    def expire(self, key: bytes | str, value: Any) -> None:
        pass  # every entry already expires after result_expires

    def add_result_callback(
        self, task_id: str, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        """Call `callback(meta)` once, when the task's result is ready; return a function
        that cancels (call it whatever happened: it also releases the registration).

        `meta` is what `get_task_meta` returns (`status`, `result`, ...). The callback runs
        in the thread that stores the result (a worker pool thread: keep it short and
        thread-safe), or at once in this thread if the result is already there."""
        key = _text(self.get_key_for_task(task_id))
        fired = threading.Lock()

        def on_write(value: Any) -> None:
            meta = self._ready_meta(value)
            if meta is None or not fired.acquire(blocking=False):
                return  # not final yet (RETRY), or already delivered
            self._store.unwatch(key, on_write)
            try:
                callback(meta)
            except Exception:  # never let a waiter's bug fail the job that stored the result
                log.exception("result callback for %s failed", task_id)

        current = self._store.watch(key, on_write)
        if current is not None:
            on_write(current)
        return lambda: self._store.unwatch(key, on_write)

    def waiting(self) -> int:
        """How many task ids have a callback (or a `wait_for`) registered right now."""
        return self._store.watched()

    def _ready_meta(self, value: Any) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = self.decode_result(value)
        except Exception:
            log.exception("undecodable result %r", value)
            return None
        return meta if meta.get("status") in states.READY_STATES else None

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        landed = threading.Event()
        delivered: list[dict[str, Any]] = []

        def deliver(meta: dict[str, Any]) -> None:
            delivered.append(meta)
            landed.set()

        cancel = self.add_result_callback(task_id, deliver)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if landed.wait(interval if remaining is None else max(0.0, min(interval, remaining))):
                    return delivered[0]
                if on_interval:
                    on_interval()
                if deadline is not None and time.monotonic() >= deadline:
                    raise CeleryTimeoutError("The operation timed out.")
        finally:
            cancel()


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


class EmbeddedWorker:
    """A running embedded worker (and optional embedded beat); `stop()` ends both."""

    def __init__(
        self, worker: WorkController, thread: threading.Thread, beat: Any = None, previous_default: Any = None
    ) -> None:
        self.worker = worker
        self._thread = thread
        self._beat = beat
        self._previous_default = previous_default

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: stop consuming, let running jobs finish (up to `timeout` s),
        then cold-stop whatever still runs."""
        if self._beat is not None:
            self._beat.stop()
            self._beat = None
        if not self._thread.is_alive():
            return
        # The worker loop checks these flags itself, in its own thread; calling
        # WorkController.stop() from here would race its event loop.
        worker_state.should_stop = 0
        try:
            self._wake()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("embedded worker still busy after %ss: terminating", timeout)
                worker_state.should_terminate = 0
                self._thread.join(10.0)
        finally:
            worker_state.should_stop = None
            worker_state.should_terminate = None
            if celery_state.default_app is self.worker.app:
                celery_state.set_default_app(self._previous_default)
        if self._thread.is_alive():
            raise RuntimeError("embedded worker thread did not exit")

    def _wake(self) -> None:
        # The loop checks the flag between broker reads, and a read of the polled memory
        # transport lasts up to 2 s; a remote-control message ends a read at once. Two:
        # on seeing the flag Celery's sync loop still does one more read (in a `finally`).
        try:
            for _ in range(2):
                self.worker.app.control.broadcast("ping", destination=[self.worker.hostname], reply=False)
        except Exception as exc:  # the broker may be gone: the loop then notices by itself
            log.debug("could not wake the embedded worker: %s", exc)


def start_embedded_worker(
    app: Celery,
    concurrency: int = 4,
    *,
    beat: bool = False,
    hostname: str | None = None,
    loglevel: str = "WARNING",
    ready_timeout: float = 30.0,
) -> EmbeddedWorker:
    """Start a threads-pool worker consuming every Lading queue; return once it consumes.

    Works with any broker the app is configured for (tests also run it against Redis and
    RabbitMQ). `beat=True` also runs the beat schedule in a thread, in memory."""
    previous_default = celery_state.default_app
    app.set_default()
    ready = threading.Event()
    ended = threading.Event()
    worker = WorkController(
        app=app,
        hostname=hostname or f"lading-embedded-{threading.get_native_id()}@localhost",
        pool_cls="threads",
        concurrency=concurrency,
        queues=list(QUEUES),
        loglevel=loglevel,
        ready_callback=lambda consumer: ready.set(),
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=False,
    )

    def run() -> None:
        try:
            worker.start()  # logs and returns on a start-up failure (e.g. broker unreachable)
        finally:
            ended.set()

    thread = threading.Thread(target=run, name="lading-embedded-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not ready.wait(0.05):
        if ended.is_set() or time.monotonic() > deadline:
            embedded = EmbeddedWorker(worker, thread, previous_default=previous_default)
            embedded.stop(timeout=5.0)
            raise RuntimeError("embedded worker did not start (see the log for the cause)")
    beat_service = None
    if beat:
        beat_service = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
        beat_service.start()
    return EmbeddedWorker(worker, thread, beat_service, previous_default)
