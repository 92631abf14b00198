"""workers.leases relies on kombu Redis transport internals (no public API renews a held
message's visibility): these tests fail the day they change. Real Redis, DB 19."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.support import redis_server
from workers.leases import held_tags, index_key, renew

URL = redis_server.url(19)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with redis_server.emptied(URL) as client:
        yield client


@pytest.mark.parametrize("prefix", ["", "lading-test:"])
def test_a_held_message_is_found_and_its_lease_renewed(client: redis.Redis, prefix: str) -> None:
    options = {"visibility_timeout": 30, "global_keyprefix": prefix} if prefix else {"visibility_timeout": 30}
    queue = Queue("lease-test", Exchange("lease-test", type="direct"), routing_key="lease-test")
    with Connection(URL, transport_options=options) as conn:
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="lease-test", declare=[queue])
        received = []
        with conn.Consumer(queue, callbacks=[lambda body, message: received.append(message)]) as consumer:
            conn.drain_events(timeout=5)
            (message,) = received
            channel = consumer.channel
            # the internals: the channel's QoS holds the delivery tag until acknowledged...
            assert held_tags(channel) == [message.delivery_tag]
            # ...and the unacked index scores it with its delivery time
            key = index_key(channel)
            assert key == prefix + "unacked_index"
            delivered_at = client.zscore(key, message.delivery_tag)
            assert delivered_at is not None
            assert renew(client, key, held_tags(channel), now=delivered_at + 100) == 1
            assert client.zscore(key, message.delivery_tag) == delivered_at + 100
            message.ack()
            assert held_tags(channel) == []
            # an acknowledged message is never brought back by a late renewal
            assert renew(client, key, [message.delivery_tag]) == 0
            assert client.zscore(key, message.delivery_tag) is None


def test_a_non_redis_channel_has_no_leases() -> None:
    with Connection("memory://") as conn:
        channel = conn.channel()
        assert index_key(channel) is None
