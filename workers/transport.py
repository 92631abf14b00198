"""kombu's Redis transport with one crash fixed (a worker survives Redis restarts) and one
client per channel instead of one per command.

kombu 5.7.0 (with Celery 5.7.0): when Redis goes away, the worker's consumer releases its
broker connection; the connection's default channel then closes and tries to restore the
messages it still holds (`QoS.restore_unacked_once`), which builds a Redis client from the
transport's connection parameters — after the release has already detached the transport
from its connection. `Channel._connparams` reads `None.hostname` and the AttributeError,
not being a connection error, escapes `ignore_errors` and stops the worker ("Unrecoverable
error"). Acknowledging a message of that closed channel takes the same path. Fault
injection saw 2 of 10 Redis restarts kill a worker; the test
tests/workers/test_faults.py::test_workers_survive_twenty_redis_restarts reproduces it on
the first or second restart when the worker holds messages (retry countdowns).

Here a channel detached that way raises a connection error instead, which those paths
already handle: the restore (or ack) is skipped, and the held messages, still in Redis's
`unacked` hash if Redis kept its data, come back through the visibility timeout — a 30 s
lease nobody renews any more (workers.leases) — like any dead worker's messages. No
upstream fix was found in kombu's or Celery's trackers as of kombu 5.7.0; the test fails
again (the worker exits) the day this class stops being used, and passes without it the
day kombu is fixed.

One client per channel: kombu builds a new redis-py client object for every synchronous
command it sends on a channel (`Channel.conn_or_acquire` calls `_create_client`): the
publish of every job in the API, the delivery bookkeeping and the acknowledgement of every
job in the worker. A redis-py 8 client costs ~60 µs of CPU to build (a case-insensitive
table of ~170 reply callbacks), three times per job. The client holds no state beyond its
connection pool, so the channel keeps one per pool (the new pool kombu makes after a
disconnect gets a new client). tests/workers/test_transport.py pins it.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = "workers.transport:Transport"


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            # Detached from its connection (kombu 5.7.0, see above): a connection error,
            # which every caller on these paths (close, restore, ack) handles.
            raise redis.exceptions.ConnectionError("the broker connection was released")
        return super()._connparams(asynchronous=asynchronous)

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP / pub-sub connection: kombu caches it itself
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
