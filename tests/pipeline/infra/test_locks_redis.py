"""Redis repository locks (fakeredis standing in for the shared Redis of many workers)."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest

from pipeline.errors import TooManyRequests
from pipeline.infra.locks import KEY_PREFIX, RedisLocks


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def locks(server: fakeredis.FakeServer, lease: float = 30.0) -> RedisLocks:
    """One worker process's view of the shared Redis."""
    return RedisLocks(fakeredis.FakeRedis(server=server), lease=lease)


def test_a_repository_lock_excludes_other_processes(server: fakeredis.FakeServer) -> None:
    one, two = locks(server), locks(server)
    with one.lock("team/app"), pytest.raises(TooManyRequests), two.lock("team/app", timeout=0.2):
        pass
    with two.lock("team/app", timeout=0.2):  # released on exit
        pass


def test_locks_are_per_repository(server: fakeredis.FakeServer) -> None:
    one, two = locks(server), locks(server)
    with one.lock("team/app"), two.lock("team/other", timeout=0.1):
        pass


def test_the_lock_is_released_when_the_block_raises(server: fakeredis.FakeServer) -> None:
    one, two = locks(server), locks(server)
    with pytest.raises(RuntimeError), one.lock("team/app"):
        raise RuntimeError("commit failed")
    with two.lock("team/app", timeout=0.1):
        pass


def test_a_waiter_gets_the_lock_when_the_holder_finishes(server: fakeredis.FakeServer) -> None:
    one, two = locks(server), locks(server)
    order: list[str] = []
    holding = threading.Event()

    def holder() -> None:
        with one.lock("team/app"):
            holding.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    with two.lock("team/app", timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_a_long_critical_section_keeps_its_lock_beyond_one_lease(server: fakeredis.FakeServer) -> None:
    one, two = locks(server, lease=0.3), locks(server, lease=0.3)
    with one.lock("team/app"):
        time.sleep(1.0)  # more than three leases: renewed meanwhile
        with pytest.raises(TooManyRequests), two.lock("team/app", timeout=0):
            pass


def test_a_dead_holders_lock_expires(server: fakeredis.FakeServer) -> None:
    # A process that died holding the lock never releases or renews it.
    dead = fakeredis.FakeRedis(server=server).lock(KEY_PREFIX + "team/app", timeout=0.3)
    assert dead.acquire(blocking=False)
    with locks(server).lock("team/app", timeout=10):
        pass
