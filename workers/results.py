"""Celery's Redis result backend, storing a job's result in one round trip instead of two.

Before writing a result, Celery's key-value backends read the one already stored and keep
it if it says SUCCESS (`BaseKeyValueStoreBackend._store_result`): a redelivered job (its
worker died after storing, before acknowledging) must not overwrite the first run's
result. That read is a GET round trip per job, then MULTI / SETEX / PUBLISH / EXEC: five
commands and two round trips for every commit a worker runs.

Here the same rule runs inside Redis, as one Lua script: read the stored result, keep it if
its status is SUCCESS, else write the new one with its expiry (`result_expires`, or
`result_failure_expires` for a FAILURE, as Celery's own `_set_with_state` does) and
PUBLISH it. One EVALSHA, atomic, so the check cannot race another write the way the
GET-then-SET pair could.

Where it is published: a job whose `reply_to` names an API replica's result channel
(`pipeline.jobs.RESULT_CHANNEL_PREFIX`, set by api.jobclient for the jobs it awaits) on that
channel, so each replica reads only its own results; any other job on its key's name, as
Celery does (what a replica waiting for a job it did not send subscribes to).
Results that are not plain JSON (a result serializer other than json, or compression)
take Celery's own path: the script reads the stored status as JSON.

What this leans on: `_store_result(task_id, result, state, traceback, request)` is the
internal `store_result` calls (after its retry wrapper), `_get_result_meta`, `encode`,
`get_key_for_task`, `ensure`, `expires`, `failure_expires`, `client` and the task request's
`reply_to` (the message property, as Celery's Context carries it). The tests in
tests/workers/test_results.py fail the day Celery stores results another way (they count
the Redis commands a stored result costs and check that SUCCESS is never overwritten).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, states
from celery.app.backends import by_url
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str

from pipeline.jobs import RESULT_CHANNEL_PREFIX

__all__ = ["RedisResults", "SentinelResults", "backend_class"]

# KEYS[1]: the result key; ARGV[1]: the encoded result, ARGV[2]: expiry in seconds (0: none),
# ARGV[3]: the channel to PUBLISH it on.
# Returns 1 when stored, 0 when a SUCCESS already there was kept.
STORE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local expires = tonumber(ARGV[2])
if expires and expires > 0 then
  redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""


class _StoreOnce:
    """Mixin for RedisBackend / SentinelBackend: `_store_result` in one script call."""

    _MAX_STR_VALUE_SIZE: int
    app: Celery
    expires: Any
    failure_expires: Any
    _script: Any = None
    _channels: str | None = None  # the reply_to prefix naming a result channel

    def __init__(self, app: Celery | None = None, url: str | None = None, **kwargs: Any) -> None:
        if url is None and app is not None:
            # Given as the app's backend class (`Celery(backend=...)`), Celery passes no
            # URL: take the configured one as Celery's own lookup would.
            _cls, url = by_url(app.conf.result_backend, app.loader)
        super().__init__(app=app, url=url, **kwargs)  # type: ignore[call-arg]

    @property
    def _scripted(self) -> bool:
        conf = self.app.conf
        return conf.result_serializer == "json" and not conf.result_compression

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not self._scripted:
            return super()._store_result(  # type: ignore[misc]
                task_id, result, state, traceback=traceback, request=request, **kwargs
            )
        backend: Any = self
        meta = backend._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = backend.encode(meta)
        if isinstance(value, str | bytes) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = backend.get_key_for_task(task_id)
        channel = self._channel(request) or key
        backend.ensure(self._store_unless_succeeded, (key, value, int(expires or 0), channel))
        return result

    def _channel(self, request: Any) -> Any:
        """The result channel the job's `reply_to` names, or None (publish on the key)."""
        reply_to = getattr(request, "reply_to", None)
        if not isinstance(reply_to, str):
            return None
        if self._channels is None:
            options = self.app.conf.result_backend_transport_options or {}
            self._channels = str(options.get("global_keyprefix") or "") + RESULT_CHANNEL_PREFIX
        return reply_to if reply_to.startswith(self._channels) else None

    def _store_unless_succeeded(self, key: Any, value: Any, expires: int, channel: Any = None) -> int:
        client = self.client  # type: ignore[attr-defined]
        if self._script is None:
            self._script = client.register_script(STORE_SCRIPT)
        args = [value, expires, key if channel is None else channel]
        return int(self._script(keys=[key], args=args, client=client))


class RedisResults(_StoreOnce, RedisBackend):
    """RedisBackend storing each result in one round trip."""


class SentinelResults(_StoreOnce, SentinelBackend):
    """SentinelBackend storing each result in one round trip."""


def backend_class(result_backend: str) -> type[RedisBackend] | None:
    """The result backend class for a configured `result_backend` URL: ours for Redis
    (redis, rediss, redis+socket, sentinel), None (Celery's choice) for anything else."""
    scheme = result_backend.split("://", 1)[0] if "://" in result_backend else ""
    if scheme in ("redis", "rediss", "redis+socket"):
        return RedisResults
    if scheme == "sentinel":
        return SentinelResults
    return None
