"""workers.transport's Redis channel keeps one redis-py client per connection pool instead
of building one per command (kombu's `_create_client`, called by `conn_or_acquire` for
every publish, delivery record and acknowledgement), on a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.support import redis_server
from workers.transport import TRANSPORT, Channel

URL = redis_server.url(29)  # this module's own database


@pytest.fixture
def connection() -> Iterator[Connection]:
    redis.Redis.from_url(URL).flushdb()
    with Connection(URL, transport=TRANSPORT) as conn:
        yield conn


def test_a_channel_reuses_one_client_per_pool(connection: Connection) -> None:
    channel = connection.default_channel
    assert isinstance(channel, Channel)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
    assert channel._create_client(asynchronous=True) is not first  # BRPOP's own connection

    channel._disconnect_pools()  # what kombu does when the connection drops
    with channel.conn_or_acquire() as third:
        assert third is not first and third.connection_pool is channel.pool


def test_messages_go_through_and_are_acknowledged(connection: Connection) -> None:
    queue = Queue("lading-transport-test", Exchange("lading-transport-test", type="direct"), "t")
    with connection.Producer() as producer:
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="t", declare=[queue])
    received = []
    simple = connection.SimpleQueue(queue)
    for _ in range(3):
        message = simple.get(timeout=5)
        received.append(message.payload["n"])
        message.ack()
    simple.close()
    assert sorted(received) == [0, 1, 2]
    client = redis.Redis.from_url(URL)
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
