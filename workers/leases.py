"""Leases on the messages a worker holds: a killed worker's jobs come back in seconds, a
live worker's long jobs are never re-run.

kombu's Redis transport emulates acknowledgements: a delivered message is copied to the
`unacked` hash and its delivery tag scored with the delivery time in the `unacked_index`
sorted set; every consuming worker periodically moves back to its queue each entry older
than `visibility_timeout` (`QoS.restore_visible`). With one fixed timeout, a short one
re-runs long jobs of live workers, and a long one (it used to be derived from the
longest job's hard limit: 67 minutes) leaves a dead worker's jobs stranded that long.

So the timeout is short (`LEASE`) and each worker renews the lease of every message it
still holds — running, prefetched, or waiting for its retry countdown — by re-scoring its
delivery tag with the current time every third of the visibility timeout (`ZADD XX`, which never
re-creates an entry acknowledged meanwhile). A worker killed whole stops renewing, and a
live worker restores its messages after `LEASE` plus one restore interval. A worker that
cannot reach Redis for longer than `LEASE` may see its running jobs re-run by another:
jobs are idempotent and a late commit never moves a tag back (pipeline.stores.tags).

kombu has no public API for this. What is used: the consumer channel's `qos._delivered` and
`qos._dirty` (delivery tags held / acknowledged, kombu.transport.virtual.QoS), `channel.unacked_index_key` and
`channel.global_keyprefix`, and the sorted set's layout (tag → delivery time). The test
tests/workers/test_leases.py fails the day any of these changes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps

log = logging.getLogger(__name__)

LEASE = 30  # seconds: broker visibility_timeout for late-acknowledged jobs
RESTORE_INTERVAL = 5  # seconds between scans for expired leases (each worker)


def held_tags(channel: Any) -> list[str]:
    """Delivery tags of the messages `channel` has received and not yet acknowledged."""
    qos = getattr(channel, "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if delivered is None:
        return []
    dirty = getattr(qos, "_dirty", ())  # acknowledged, not yet flushed from _delivered
    for _ in range(5):
        try:
            acked = set(dirty)
            return [str(tag) for tag in list(delivered) if tag not in acked]
        except RuntimeError:  # changed size while copied by the consumer thread
            continue
    return []


def index_key(channel: Any) -> str | None:
    """The full Redis key of the channel's unacked index, None if not a Redis channel."""
    key = getattr(channel, "unacked_index_key", None)
    if not isinstance(key, str):
        return None
    return str(getattr(channel, "global_keyprefix", "") or "") + key


def renew(client: redis.Redis, key: str, tags: list[str], now: float | None = None) -> int:
    """Re-score `tags` in the unacked index `key` with `now`; returns how many exist."""
    if not tags:
        return 0
    stamp = time.time() if now is None else now
    return int(client.zadd(key, dict.fromkeys(tags, stamp), xx=True, ch=True) or 0)


class LeaseKeeper(bootsteps.StartStopStep):
    """Consumer bootstep: a daemon thread renewing the leases of held messages."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._consumer = c
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None

    def start(self, c: Any) -> None:
        self._consumer = c
        url = str(c.app.conf.broker_url or "")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return
        if self._thread is not None and self._thread.is_alive():
            return  # a reconnect restarts the consumer's steps; one thread is enough
        options = c.app.conf.broker_transport_options or {}
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=float(options.get("socket_timeout") or 5),
            socket_connect_timeout=float(options.get("socket_connect_timeout") or 5),
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lading-lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, c: Any) -> None:
        pass  # a reconnect stops and restarts consumer steps: keep renewing meanwhile

    def shutdown(self, c: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._client is not None:
            self._client.close()

    def _run(self) -> None:
        options = self._consumer.app.conf.broker_transport_options or {}
        interval = float(options.get("visibility_timeout") or LEASE) / 3
        while not self._stop.wait(interval):
            self.renew_once()

    def renew_once(self) -> int:
        consumer = getattr(self._consumer, "task_consumer", None)
        channel = getattr(consumer, "channel", None)
        key = index_key(channel)
        if key is None or self._client is None:
            return 0
        try:
            return renew(self._client, key, held_tags(channel))
        except redis.RedisError as exc:
            log.warning("could not renew job leases: %s", exc)
            return 0
