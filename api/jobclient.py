"""Sending jobs and awaiting their results from the API, without blocking its event loop.

`CeleryJobClient` implements `pipeline.jobs.JobClient` on a Celery app, sending by job name
(the API never imports `workers`). Two ways to wait:

- Redis result backend: one `redis.asyncio` pub/sub connection per event loop, subscribed
  once to this replica's own result channel, which `run` names in each job's `reply_to`
  (workers.results publishes the result there); one reader task resolves every waiter's
  future, and waiting adds no Redis command. A replica reads its own results only, however
  many replicas and workers the deployment has. `wait` (a job sent earlier, maybe by
  another replica: its result is published on its key's name) GETs the key, and only if
  the result is not there yet SUBSCRIBEs to the key's channel for the wait. Either way the
  key is re-read every `RECHECK` seconds, so a message lost to a reconnect only delays.
- a backend that pushes results in-process (duck-typed: it has `add_result_callback`, as
  the embedded worker's `InProcessBackend` does): the callback, run in the worker thread
  that stored the result, resolves the waiter's asyncio future with
  `loop.call_soon_threadsafe`. No thread per waiter, no polling; a result that landed
  before the callback was registered is delivered at once.
- any other backend: `AsyncResult.get` in a dedicated thread pool, so waiters never queue
  behind the loop's small default executor.

Embedded mode gives the client a `direct` runner (workers.direct, chosen by
lading.composition): `run` and `send` hand the job to it instead of the in-memory broker,
and `run` gets the outcome back through a callback as above. Only a retried job (and beat's
maintenance jobs) still goes through the broker; `wait` is unchanged (a sent job's result
is stored in the backend).

Sending builds and publishes the task message the way `Celery.send_task` does, minus its
per-call costs that buy Lading nothing (measured 21-27% of the API's Python time): the
route and execution options are resolved once per job name, producers are reused (one per
publishing thread at most), and the result backend's `on_task_call` hook is skipped (the
Redis backend would subscribe its own, never-read pub/sub connection to every job's result
and unsubscribe when the returned AsyncResult is collected: two Redis commands per job).

A job's own domain failure comes back in its envelope (`jobs.unwrap` re-raises it). A task
that raised is mapped too: a registry error class by name, StorageUnavailable after its
retries ran out → StorageUnavailable, a time limit → JobTimeout, anything else (a bug,
a storage fault) → JobFailed with only the job id (the exception is logged, never sent).
A wait that runs out raises JobTimeout (the job may still finish later).

The API tests' stand-in (jobs in threads of the test process, no Celery) is
tests.support.inline_jobs.InlineJobClient.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu import Producer
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from api.request_id import note_job
from pipeline import errors, jobs
from pipeline.errors import JobFailed, JobsUnavailable, JobTimeout, LadingError, StorageUnavailable
from pipeline.infra.coordination import RedisTarget, redis_target

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
T = TypeVar("T")

RECHECK = 1.0  # seconds between GETs of a result key while waiting on pub/sub
POLL_INTERVAL = 0.02  # AsyncResult.get polling for backends without push
SENDERS = 8  # threads publishing for `run` (each keeps one producer and broker connection)
REPR_MAX = 1024  # the `kwargsrepr` header Flower shows: as long as Celery's own
REPR_STR_MAX = 100  # long string arguments (a manifest's body_b64) shown truncated
META_PREFIX = "celery-task-meta-"
REDIS_TIMEOUT = 5.0  # socket (connect and read) timeout of the result listener's connection
# A job whose client gave up long ago should not run at all: it expires this long after the
# client's own wait ends (a commit-manifest job redelivered an hour late is dropped).
EXPIRES_AFTER_WAIT = 60.0
_TIME_LIMITS = ("SoftTimeLimitExceeded", "TimeLimitExceeded")


class DirectRunner(Protocol):
    """Runs jobs in this process without the broker (embedded mode: workers.direct)."""

    def submit(
        self,
        job: str,
        job_id: str,
        kwargs: dict[str, Any],
        on_done: Callable[[str, Any], None] | None = None,
        expires: float | None = None,
    ) -> None:
        """Run the job soon; `on_done(status, result)` (a Celery state and the value or
        exception) once it ends, else its result is stored in the result backend."""
        ...


def job_error(job_id: str, exc_type: str, message: str) -> LadingError:
    """The domain error for a task that raised `exc_type(message)` instead of returning
    an envelope."""
    if exc_type in _TIME_LIMITS:
        return JobTimeout({"job_id": job_id, "reason": f"the job hit its time limit ({exc_type})"})
    cls = getattr(errors, exc_type, None)
    if isinstance(cls, type) and issubclass(cls, errors.RegistryError):
        return errors.from_payload({"kind": exc_type, "message": message or None, "detail": None})
    if isinstance(cls, type) and issubclass(cls, StorageUnavailable):
        return StorageUnavailable({"job_id": job_id})  # after its retries; no paths shown
    # A bug or an unexpected fault in the worker: its text stays in the log (it may name
    # paths, hosts or code), the client gets a clean error with the job id to look for.
    log.error("job %s failed: %s: %s", job_id, exc_type, message)
    return JobFailed({"job_id": job_id})


def _exception_parts(exc: Any) -> tuple[str, str]:
    if isinstance(exc, BaseException):
        return type(exc).__name__, str(exc.args[0]) if exc.args else ""
    return "UnknownError", str(exc)


def _value(job_id: str, status: str, result: Any) -> dict[str, Any]:
    """The job's value from a ready (status, result) pair, or raise its error."""
    if status == states.SUCCESS:
        return jobs.unwrap(result)
    if status == states.FAILURE:
        if isinstance(result, dict):  # serialized exception, as read from Redis
            message = result.get("exc_message")
            if isinstance(message, list | tuple):
                message = message[0] if message else ""
            raise job_error(job_id, str(result.get("exc_type")), "" if message is None else str(message))
        raise job_error(job_id, *_exception_parts(result))
    raise LadingError({"job_id": job_id, "state": status}, "job did not complete")


def _redis_backend_url(app: Celery) -> RedisTarget | None:
    url = app.conf.result_backend
    target = redis_target(url, app.conf.result_backend_transport_options) if isinstance(url, str) else None
    if target is None:
        return None
    if app.conf.result_serializer != "json" or app.conf.result_compression:
        return None  # the listener reads raw JSON metadata
    return target


class _ResultListener:
    """One pub/sub connection, one channel subscription and one reader task, bound to one
    event loop.

    `channel` is this listener's own result channel (behind the backend's
    `global_keyprefix`): `run` names it in each job's `reply_to`, and the worker's result
    backend (workers.results) PUBLISHes the job's result there. The listener SUBSCRIBEs to
    it once (when the first job is awaited) and resolves the future of each awaited id as
    its result arrives: waiting for a job costs no Redis command at all, a frozen Redis
    cannot block the start or end of a wait, and no replica reads another's results.

    A job this replica did not send with its channel (`wait` on an id sent earlier, by any
    replica) has its result published on its key's name (`celery-task-meta-<id>`): `follow`
    SUBSCRIBEs to that channel for as long as someone waits for it."""

    def __init__(self, target: RedisTarget, key_prefix: str) -> None:
        # Socket timeouts: a frozen Redis fails a GET (and a read) instead of blocking.
        self._client = target.async_client(timeout=REDIS_TIMEOUT)
        self._pubsub = self._client.pubsub()
        self._prefix = key_prefix + META_PREFIX
        self.channel = key_prefix + jobs.RESULT_CHANNEL_PREFIX + uuid.uuid4().hex
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._watchers: dict[str, int] = {}
        self._followers: dict[str, int] = {}
        self._fetch = _Coalesced(self._mget)
        self._subscribe = _Coalesced(lambda keys: self._subscription(self._pubsub.subscribe, keys))
        self._unsubscribe = _Coalesced(lambda keys: self._subscription(self._pubsub.unsubscribe, keys))
        self.received = 0  # results read off pub/sub, ours or not
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = False
        self._subscribing: asyncio.Lock | None = None

    def key(self, job_id: str) -> str:
        return self._prefix + job_id

    async def start(self) -> None:
        """Subscribe to the listener's channel once (raises JobsUnavailable if Redis does
        not answer); later calls return at once."""
        if self._subscribed:
            return
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._subscribed:
                return
            try:
                await self._pubsub.subscribe(self.channel)
            except (RedisError, OSError) as exc:
                raise JobsUnavailable(f"result backend unreachable: {type(exc).__name__}") from exc
            self._subscribed = True
            self._reader = asyncio.create_task(self._read(), name="lading-job-results")

    def watch(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        future = self._futures.get(job_id)
        if future is None:
            future = self._futures[job_id] = asyncio.get_running_loop().create_future()
            self._watchers[job_id] = 0
        self._watchers[job_id] += 1
        return future

    def unwatch(self, job_id: str) -> None:
        self._watchers[job_id] = self._watchers.get(job_id, 1) - 1
        if self._watchers[job_id] > 0:
            return
        self._watchers.pop(job_id, None)
        self._futures.pop(job_id, None)

    async def follow(self, job_id: str) -> None:
        """Subscribe to the channel of the job's key (where a result is published when the
        job named no channel of ours) until `unfollow`. A failure only leaves the waiter
        to its re-reads of the key."""
        key = self.key(job_id)
        count = self._followers.get(key, 0)
        self._followers[key] = count + 1
        if not count:
            await asyncio.shield(self._subscribe.ask(key))

    def unfollow(self, job_id: str) -> None:
        """One waiter less on the job's key; the last one unsubscribes, in the background
        (a frozen Redis never holds the end of a wait; a subscription left behind costs
        one message at most)."""
        key = self.key(job_id)
        count = self._followers.get(key, 1) - 1
        if count > 0:
            self._followers[key] = count
            return
        self._followers.pop(key, None)
        self._unsubscribe.ask(key)

    async def _subscription(self, command: Callable[..., Awaitable[Any]], keys: list[str]) -> None:
        try:
            await asyncio.wait_for(command(*keys), REDIS_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("job result listener: %s %s", getattr(command, "__name__", command), type(exc).__name__)

    async def _mget(self, keys: list[str]) -> dict[str, Any]:
        return dict(zip(keys, await self._client.mget(keys), strict=True))

    async def fetch(self, job_id: str) -> dict[str, Any] | None:
        """The job's metadata if it is ready, else None (the fetches of one loop turn,
        such as a manifest PUT's waits for its blobs, share one MGET)."""
        key = self.key(job_id)
        try:
            raws = await asyncio.shield(self._fetch.ask(key))
        except (RedisError, OSError) as exc:
            raise JobsUnavailable(f"result backend unreachable: {type(exc).__name__}") from exc
        return _ready_meta(raws.get(key))

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: pub/sub reconnects and resubscribes on the next read;
                # waiters re-read their keys every RECHECK seconds meanwhile.
                log.warning("job result listener: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if not message or message.get("type") != "message":
                continue
            self.received += 1
            meta = _ready_meta(message.get("data"))
            if meta is None:
                continue
            future = self._futures.get(str(meta.get("task_id")))
            if future is not None and not future.done():
                future.set_result(meta)

    async def aclose(self) -> None:
        for coalesced in (self._fetch, self._subscribe, self._unsubscribe):
            coalesced.cancel()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        await self._pubsub.aclose()
        await self._client.aclose()


class _Coalesced:
    """Runs `call(keys)` once for all the keys asked for in one turn of the event loop
    (the concurrent waits of one manifest PUT for its blobs): one MGET, SUBSCRIBE or
    UNSUBSCRIBE for all of them instead of one each. Each asker gets the shared future of
    the call's value (shield it: one asker giving up cancels nobody else's)."""

    def __init__(self, call: Callable[[list[str]], Awaitable[Any]]) -> None:
        self._call = call
        self._keys: list[str] = []
        self._done: asyncio.Future[Any] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def ask(self, key: str) -> asyncio.Future[Any]:
        done = self._done
        if done is None:
            loop = asyncio.get_running_loop()
            done = self._done = loop.create_future()
            done.add_done_callback(_retrieve)
            loop.call_soon(self._flush, loop)
        self._keys.append(key)
        return done

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        keys, done = self._keys, self._done
        self._keys, self._done = [], None
        assert done is not None
        task = loop.create_task(self._run(keys, done))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, keys: list[str], done: asyncio.Future[Any]) -> None:
        try:
            value = await self._call(keys)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(value)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception seen (its askers may all have given up)."""
    if not future.cancelled():
        future.exception()


def _ready_meta(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(meta, dict) and meta.get("status") in states.READY_STATES:
        return meta
    return None  # RETRY (published too) or garbage


def _kwargs_repr(kwargs: dict[str, Any]) -> str:
    """The `kwargsrepr` header: what Celery's saferepr shows, at a fraction of its cost."""
    shown = {
        key: value[:REPR_STR_MAX] + "..." if isinstance(value, str) and len(value) > REPR_STR_MAX else value
        for key, value in kwargs.items()
    }
    text = repr(shown)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."


class _Sender:
    """Publishes jobs by name: the task message `Celery.send_task` would publish (same
    headers, queue, serializer, time limits, retry policy, publish signals and sent event).

    Per job name, the route and the task's execution options are resolved once. Producers
    (each with its own broker connection) are kept in a LIFO stack: a publishing thread
    takes one and puts it back, so there are never more than the threads publishing at
    once, and one that failed is closed rather than reused."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._routes: dict[str, tuple[dict[str, Any], Any, Any, bool]] = {}
        self._idle: list[Producer] = []
        self._opened: list[Producer] = []
        self._lock = threading.Lock()

    def publish(
        self,
        job: str,
        job_id: str,
        kwargs: dict[str, Any],
        expires: float | None = None,
        awaited: bool = True,
        reply_to: str | None = None,
    ) -> None:
        """`awaited`: someone waits for the result, so it is stored whatever the task
        declares; else the task's own `ignore_result` decides (a fire-and-forget job).
        `reply_to`: the result channel of the replica awaiting it (else Celery's default,
        which names none of ours: the result is published on its key's name)."""
        options, time_limit, soft_time_limit, ignores = self._route(job)
        app = self._app
        amqp = app.amqp
        message = amqp.create_task_message(
            job_id,
            job,
            (),
            kwargs,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            create_sent_event=app.conf.task_send_sent_event,
            reply_to=reply_to or app.thread_oid,
            ignore_result=False if awaited else ignores,
            argsrepr="()",
            kwargsrepr=_kwargs_repr(kwargs),
            expires=expires,
        )
        producer = self._take()
        connection = producer.connection
        try:
            amqp.send_task_message(producer, job, message, **options)
        except (*connection.connection_errors, *connection.channel_errors) as exc:
            self._discard(producer)
            raise OperationalError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._discard(producer)
            raise
        self._idle.append(producer)

    def close(self) -> None:
        with self._lock:
            opened, self._opened, self._idle = self._opened, [], []
        for producer in opened:
            _close_quietly(producer)

    def _route(self, job: str) -> tuple[dict[str, Any], Any, Any, bool]:
        route = self._routes.get(job)
        if route is None:
            queue = jobs.ROUTES.get(job)
            if queue is None:
                raise ValueError(f"unknown job {job!r}")
            task = self._app.tasks.get(job)
            exec_options = task._get_exec_options() if task is not None else {}
            options = {key: value for key, value in exec_options.items() if value is not None}
            options.update(queue=queue, routing_key=queue)
            options = self._app.amqp.router.route(options, job, (), {}, task)
            time_limit = options.pop("time_limit", None)
            soft_time_limit = options.pop("soft_time_limit", None)
            for key in ("expires", "ignore_result"):
                options.pop(key, None)
            ignores = bool(task is not None and task.ignore_result)
            route = self._routes[job] = (options, time_limit, soft_time_limit, ignores)
        return route

    def _take(self) -> Producer:
        try:
            return self._idle.pop()  # atomic: two threads never get the same producer
        except IndexError:
            pass
        producer = self._app.amqp.Producer(self._app.connection_for_write(), auto_declare=False)
        with self._lock:
            self._opened.append(producer)
        return producer

    def _discard(self, producer: Producer) -> None:
        with self._lock:
            if producer in self._opened:
                self._opened.remove(producer)
        _close_quietly(producer)


def _close_quietly(producer: Producer) -> None:
    try:
        producer.connection.release()
    except Exception as exc:
        log.debug("closing a job producer: %s", exc)


class CeleryJobClient:
    """`pipeline.jobs.JobClient` over a Celery app (see module docstring).

    `redis_url`: where to listen for results; by default the app's result backend when it
    is Redis with JSON results, else results are awaited in threads."""

    def __init__(
        self,
        app: Celery,
        redis_url: str | None = None,
        *,
        max_blocking_waiters: int = 64,
        direct: DirectRunner | None = None,
    ) -> None:
        self._app = app
        self._direct = direct
        self._redis_url = redis_target(redis_url) if redis_url else _redis_backend_url(app)
        options = app.conf.result_backend_transport_options or {}
        self._key_prefix = str(options.get("global_keyprefix") or "")
        self._listener: _ResultListener | None = None
        self._listener_loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._send_executor: ThreadPoolExecutor | None = None
        self._max_blocking_waiters = max_blocking_waiters
        self._sender = _Sender(app)
        # The in-memory broker cannot block or be unreachable: publish right on the loop
        # rather than paying two thread hand-offs per job.
        self._publish_inline = str(app.conf.broker_url or "").startswith("memory://")
        self._add_result_callback: Callable[..., Callable[[], None]] | None = getattr(
            app.backend, "add_result_callback", None
        )

    @property
    def uses_pubsub(self) -> bool:
        return self._redis_url is not None

    @property
    def results_received(self) -> int:
        """Results this client's pub/sub listener has read so far (each replica reads
        those it awaits, not the deployment's)."""
        return self._listener.received if self._listener is not None else 0

    def send(self, job: str, **kwargs: Any) -> str:
        """Publish now, in the caller's thread (1-2 ms; `run` publishes off the loop), or
        hand the job to the direct runner."""
        job_id = str(uuid.uuid4())
        note_job(job_id)  # listed in the request's access-log line (api.request_id)
        if self._direct is not None:
            self._direct.submit(job, job_id, kwargs)
        else:
            self._publish(job, job_id, kwargs, awaited=False)
        return job_id

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        add_callback = self._add_result_callback
        if add_callback is not None:
            return await self._wait_pushed(add_callback, job_id, timeout)
        if self._redis_url is None:
            return await self._wait_blocking(job_id, timeout)
        listener = self._get_listener()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        meta = await _bounded(listener.fetch(job_id), deadline, "result backend")
        if meta is not None:  # already there: no subscription at all
            return _value(job_id, str(meta.get("status")), meta.get("result"))
        await _bounded(listener.start(), deadline, "result backend")
        future = listener.watch(job_id)
        try:
            try:
                await asyncio.wait_for(listener.follow(job_id), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                pass  # Redis is slow or frozen: the re-reads of the key go on until the deadline
            # Subscribed now: the GET again, for a result stored in between.
            return await self._wait_pubsub(
                listener, job_id, future, max(deadline - loop.time(), 0.001), check_now=True
            )
        finally:
            listener.unwatch(job_id)
            listener.unfollow(job_id)

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        """send + wait, all of it (subscribe, publish, wait) within `timeout` seconds:
        a broker that is down, partitioned or frozen makes it fail with JobsUnavailable
        or JobTimeout (both 503) by then."""
        job_id = str(uuid.uuid4())
        note_job(job_id)  # listed in the request's access-log line (api.request_id)
        if self._direct is not None:
            return await self._run_direct(self._direct, job, job_id, kwargs, timeout)
        add_callback = self._add_result_callback
        if add_callback is not None:
            return await self._wait_pushed(add_callback, job_id, timeout, (job, kwargs))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._redis_url is None:
            await self._publish_async(job, job_id, kwargs, timeout)
            return await self._wait_blocking(job_id, max(deadline - loop.time(), 0.001))
        listener = self._get_listener()
        await _bounded(listener.start(), deadline, "result backend")
        future = listener.watch(job_id)  # before the job exists
        try:
            remaining = max(deadline - loop.time(), 0.001)
            await self._publish_async(job, job_id, kwargs, remaining, listener.channel)
            return await self._wait_pubsub(
                listener, job_id, future, max(deadline - loop.time(), 0.001), check_now=False
            )
        finally:
            listener.unwatch(job_id)

    async def aclose(self) -> None:
        """Release the listener connection and the waiting threads (API shutdown)."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.aclose()
        for executor in (self._executor, self._send_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._send_executor = None
        self._sender.close()

    # --- internals ---------------------------------------------------------------------

    def _publish(
        self,
        job: str,
        job_id: str,
        kwargs: dict[str, Any],
        expires: float | None = None,
        awaited: bool = True,
        reply_to: str | None = None,
    ) -> None:
        try:
            self._sender.publish(job, job_id, kwargs, expires, awaited, reply_to)
        except (OperationalError, RedisError, OSError) as exc:
            raise JobsUnavailable(f"job broker unreachable: {type(exc).__name__}") from exc

    async def _publish_async(
        self,
        job: str,
        job_id: str,
        kwargs: dict[str, Any],
        timeout: float | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Publish `job`; with `timeout` (the caller's whole wait), within it, and the job
        expires EXPIRES_AFTER_WAIT after the wait ends when its name is in
        `jobs.EXPIRE_WITH_WAIT`."""
        expires = (
            timeout + EXPIRES_AFTER_WAIT if timeout is not None and job in jobs.EXPIRE_WITH_WAIT else None
        )
        if self._publish_inline:
            self._publish(job, job_id, kwargs, expires, True, reply_to)
            return
        # Publishing to a broker takes about a millisecond and, with the broker unreachable
        # or frozen, as long as its socket timeouts and retries: off the event loop, and the
        # wait for it bounded by the caller's deadline (the thread finishes on its own).
        if self._send_executor is None:
            self._send_executor = ThreadPoolExecutor(SENDERS, thread_name_prefix="lading-job-send")
        loop = asyncio.get_running_loop()
        sent = loop.run_in_executor(
            self._send_executor, self._publish, job, job_id, kwargs, expires, True, reply_to
        )
        if timeout is None:
            await sent
            return
        try:
            await asyncio.wait_for(sent, max(timeout, 0.001))
        except TimeoutError:
            raise JobsUnavailable(f"job broker did not answer within {timeout:g}s") from None

    def _get_listener(self) -> _ResultListener:
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener_loop is not loop:
            assert self._redis_url is not None
            self._listener = _ResultListener(self._redis_url, self._key_prefix)
            self._listener_loop = loop
        return self._listener

    async def _wait_pubsub(
        self,
        listener: _ResultListener,
        job_id: str,
        future: asyncio.Future[dict[str, Any]],
        timeout: float,
        check_now: bool,
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        meta = await _bounded(listener.fetch(job_id), deadline, "result backend") if check_now else None
        while meta is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise JobTimeout({"job_id": job_id, "timeout": timeout})
            try:
                meta = await asyncio.wait_for(asyncio.shield(future), min(remaining, RECHECK))
            except TimeoutError:
                try:
                    meta = await _bounded(listener.fetch(job_id), deadline, "result backend")
                except JobsUnavailable:
                    # Redis is unreachable or frozen: keep waiting (it may come back and the
                    # result with it) until the deadline, then answer JobTimeout.
                    if deadline - loop.time() <= 0:
                        raise JobTimeout({"job_id": job_id, "timeout": timeout}) from None
                    await asyncio.sleep(min(RECHECK, max(deadline - loop.time(), 0)))
        return _value(job_id, str(meta.get("status")), meta.get("result"))

    async def _wait_pushed(
        self,
        add_callback: Callable[..., Callable[[], None]],
        job_id: str,
        timeout: float,
        send: tuple[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Wait for a result the backend pushes; publish `send` (job, kwargs) first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()

        def deliver(meta: dict[str, Any]) -> None:  # in the thread that stored the result
            try:
                loop.call_soon_threadsafe(_resolve, future, meta)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        cancel = add_callback(job_id, deliver)  # before sending: the result cannot be missed
        try:
            if send is not None:
                await self._publish_async(send[0], job_id, send[1])
            try:
                async with asyncio.timeout(timeout):
                    meta = await future
            except TimeoutError:
                raise JobTimeout({"job_id": job_id, "timeout": timeout}) from None
        finally:
            cancel()
        return _value(job_id, str(meta.get("status")), meta.get("result"))

    async def _run_direct(
        self, direct: DirectRunner, job: str, job_id: str, kwargs: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Run `job` on the direct runner; its outcome comes back through a callback from
        the thread that finished it (or stored its retried result)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, Any]] = loop.create_future()

        def deliver(status: str, result: Any) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future, (status, result))
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        expires = time.time() + timeout + EXPIRES_AFTER_WAIT if job in jobs.EXPIRE_WITH_WAIT else None
        direct.submit(job, job_id, kwargs, deliver, expires)
        try:
            async with asyncio.timeout(timeout):
                status, result = await future
        except TimeoutError:
            raise JobTimeout({"job_id": job_id, "timeout": timeout}) from None
        return _value(job_id, status, result)

    async def _wait_blocking(self, job_id: str, timeout: float) -> dict[str, Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_blocking_waiters, thread_name_prefix="lading-job-wait"
            )
        loop = asyncio.get_running_loop()
        status, result = await loop.run_in_executor(self._executor, self._get, job_id, timeout)
        return _value(job_id, status, result)

    def _get(self, job_id: str, timeout: float) -> tuple[str, Any]:
        result = AsyncResult(job_id, app=self._app)
        try:
            # disable_sync_subtasks=False: an embedded worker in this process turns on
            # Celery's "never get() inside a task" guard process-wide; this is no task.
            value = result.get(
                timeout=timeout, interval=POLL_INTERVAL, propagate=False, disable_sync_subtasks=False
            )
        except CeleryTimeoutError:
            raise JobTimeout({"job_id": job_id, "timeout": timeout}) from None
        return result.state, value


async def _bounded(awaitable: Awaitable[T], deadline: float, what: str) -> T:
    """`awaitable`'s value if it completes before `deadline` (loop time), else
    JobsUnavailable: nothing that waits on Redis waits past the request's bound."""
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(awaitable, max(remaining, 0.001))
    except TimeoutError:
        raise JobsUnavailable(f"{what} did not answer in time") from None


def _resolve(future: asyncio.Future[T], meta: T) -> None:
    if not future.done():  # it may have been cancelled by a timeout meanwhile
        future.set_result(meta)
