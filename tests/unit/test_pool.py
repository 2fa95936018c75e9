"""Unit tests of proxyd.pool.PoolState: the pure decisions of one backend's keep-alive pool.

No I/O: connections and waiters are plain objects; each test drives acquire / release / discard /
cancel and checks the decision and the bookkeeping (idle list, total, FIFO of waiters).
"""

import pytest

from proxyd.pool import CONNECT, FULL, USE, WAIT, PoolState


class Conn:
    """A stand-in connection with a name for readable failures."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Conn({self.name})"


def test_connect_until_max_then_wait_then_full():
    """Requests open connections up to max_connections, then queue up to max_pending, then FULL."""
    pool = PoolState(max_connections=2, max_pending=2)
    assert pool.acquire("r1") == (CONNECT, None)
    assert pool.acquire("r2") == (CONNECT, None)
    assert pool.total == 2
    assert pool.acquire("r3") == (WAIT, None)
    assert pool.acquire("r4") == (WAIT, None)
    assert pool.acquire("r5") == (FULL, None)
    assert list(pool.waiting) == ["r3", "r4"]
    assert pool.total == 2


def test_idle_connection_is_used_before_connecting():
    """A released connection is handed out (USE) instead of opening another one."""
    pool = PoolState(max_connections=5, max_pending=5)
    assert pool.acquire("r1") == (CONNECT, None)
    conn = Conn("a")
    assert pool.release(conn) is None
    assert pool.idle == [conn]
    assert pool.acquire("r2") == (USE, conn)
    assert pool.idle == [] and pool.total == 1


def test_idle_reuse_is_last_in_first_out():
    """The most recently released (warmest) idle connection is used first."""
    pool = PoolState(max_connections=5, max_pending=5)
    a, b = Conn("a"), Conn("b")
    pool.acquire("r1")
    pool.acquire("r2")
    pool.release(a)
    pool.release(b)
    assert pool.acquire("r3") == (USE, b)
    assert pool.acquire("r4") == (USE, a)


def test_release_hands_connection_to_waiters_in_fifo_order():
    """A released connection goes to the oldest waiter, not to the idle list."""
    pool = PoolState(max_connections=1, max_pending=3)
    pool.acquire("r1")
    for name in ("w1", "w2", "w3"):
        assert pool.acquire(name) == (WAIT, None)
    conn = Conn("a")
    assert pool.release(conn) == "w1"
    assert pool.release(conn) == "w2"
    assert pool.release(conn) == "w3"
    assert pool.idle == []
    assert pool.release(conn) is None
    assert pool.idle == [conn]
    assert pool.total == 1


def test_discard_frees_a_slot():
    """A closed connection no longer counts: the next request may CONNECT again."""
    pool = PoolState(max_connections=1, max_pending=1)
    pool.acquire("r1")
    conn = Conn("a")
    pool.release(conn)
    assert pool.discard(conn) is None
    assert pool.idle == [] and pool.total == 0
    assert pool.acquire("r2") == (CONNECT, None)


def test_discard_hands_a_waiter_a_connect():
    """When a connection dies while requests wait, the oldest waiter gets a counted CONNECT slot."""
    pool = PoolState(max_connections=1, max_pending=2)
    pool.acquire("r1")
    pool.acquire("w1")
    pool.acquire("w2")
    assert pool.discard(None) == "w1"  # a failed connect: no connection object
    assert pool.total == 1  # w1's new connection already counts
    assert list(pool.waiting) == ["w2"]
    assert pool.acquire("r3") == (WAIT, None)


def test_discard_of_busy_connection_leaves_idle_alone():
    """Discarding a connection that is not idle does not touch the idle list."""
    pool = PoolState(max_connections=3, max_pending=1)
    pool.acquire("r1")
    pool.acquire("r2")
    idle, busy = Conn("idle"), Conn("busy")
    pool.release(idle)
    assert pool.discard(busy) is None
    assert pool.idle == [idle] and pool.total == 1


def test_cancel_removes_a_waiter():
    """A waiter that went away is not handed a connection later; unknown waiters are ignored."""
    pool = PoolState(max_connections=1, max_pending=2)
    pool.acquire("r1")
    pool.acquire("w1")
    pool.acquire("w2")
    pool.cancel("w1")
    pool.cancel("never-queued")
    assert list(pool.waiting) == ["w2"]
    assert pool.release(Conn("a")) == "w2"
    assert pool.acquire("r3") == (WAIT, None)  # the queue has room again


def test_cancel_makes_room_in_a_full_queue():
    """Cancelling a waiter turns the next FULL into a WAIT."""
    pool = PoolState(max_connections=1, max_pending=1)
    pool.acquire("r1")
    pool.acquire("w1")
    assert pool.acquire("w2") == (FULL, None)
    pool.cancel("w1")
    assert pool.acquire("w2") == (WAIT, None)


@pytest.mark.parametrize("idle, total, expected", [
    (0, 0, True), (0, 1, True), (0, 2, False), (1, 2, True),
])
def test_has_capacity(idle, total, expected):
    """has_capacity is True exactly when a request would not have to wait."""
    pool = PoolState(max_connections=2, max_pending=1)
    pool.total = total
    pool.idle = [Conn(str(i)) for i in range(idle)]
    assert pool.has_capacity() is expected
    decision, _ = pool.acquire("r")
    assert (decision in (USE, CONNECT)) is expected
