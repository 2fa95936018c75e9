"""Unit tests of proxyd.pool.PoolState: the pure decisions of one backend's keep-alive pool.

No I/O: connections and waiters are plain objects; each test drives acquire / release / discard /
cancel and checks the decision and the bookkeeping (idle list, total, FIFO of waiters).
"""

import pytest

from proxyd.pool import (CONNECT, CONTENDED_STALL, FULL, USE, WAIT, PoolState, StreamPoolState,
                         stalls_to_end)


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


# -- StreamPoolState (HTTP/2 backends) ----------------------------------------------------------


class StreamConn:
    """A stand-in connection: ``room`` streams left, ``busy`` streams in flight."""

    def __init__(self, room):
        self.room = room
        self.busy = 0


def stream_pool(max_connections=2, max_pending=3):
    """A StreamPoolState over Conn stand-ins."""
    return StreamPoolState(max_connections, max_pending, lambda c: c.room, lambda c: c.busy)


def test_stream_pool_queues_and_opens_one_connection_at_a_time():
    """The first request queues and opens a connection; the next ones queue behind the same
    attempt; a full queue refuses."""
    pool = stream_pool()
    assert pool.acquire("a") == (CONNECT, None)
    assert pool.acquire("b") == (WAIT, None) and pool.acquire("c") == (WAIT, None)
    assert pool.acquire("d") == (FULL, None)
    assert pool.total == 1 and pool.connecting == 1


def test_stream_pool_serves_waiters_by_capacity_and_opens_more_when_full():
    """A new connection takes waiters while it has room (oldest first); when waiters remain and
    fewer than max_connections exist, another connection is opened; never beyond the limit."""
    pool = stream_pool(max_connections=2, max_pending=10)
    for name in "abc":
        pool.acquire(name)
    conn = StreamConn(room=2)
    pool.connected(conn)
    taken = []
    while (waiter := pool.serve(conn)) is not None:
        taken.append(waiter)
        conn.room -= 1
    assert taken == ["a", "b"]
    assert pool.connect_more() is True and pool.connect_more() is False  # one at a time
    pool.connected(StreamConn(room=0))
    assert pool.connect_more() is False  # two connections: the limit
    assert list(pool.waiting) == ["c"]


def test_stream_pool_uses_a_connection_with_room_at_once():
    """A connection with room is used without queueing."""
    pool = stream_pool()
    conn = StreamConn(room=1)
    pool.acquire("x")
    pool.connected(conn)
    assert pool.serve(conn) == "x"
    assert pool.acquire("y") == (USE, conn)


def test_stream_pool_queues_behind_waiters_without_asking_connections():
    """While requests wait, a new one queues behind them (first come, first served) and no
    connection's capacity is asked (a dozen full connections would be asked for every request
    of a long queue); once the queue is empty, connections are asked again."""
    asked = []
    pool = StreamPoolState(4, 100, lambda c: asked.append(c) or c.room, lambda c: c.busy)
    full = [StreamConn(room=0) for _ in range(3)]
    pool.acquire("a")
    for conn in full:
        pool.connected(conn)
    asked.clear()
    assert [pool.acquire(name)[0] for name in "bcd"] == [WAIT, WAIT, WAIT]
    assert asked == [] and list(pool.waiting) == ["a", "b", "c", "d"]
    full[1].room = 4
    assert [pool.serve(full[1]) for _ in range(4)] == ["a", "b", "c", "d"]
    assert not pool.waiting
    assert pool.acquire("e") == (USE, full[1]) and asked[-1] is full[1]


def test_stream_pool_retires_and_closes_drained_connections():
    """A retired connection (GOAWAY) takes no stream; it closes once its streams ended; a
    waiter then gets a new connection."""
    pool = stream_pool()
    conn = StreamConn(room=5)
    pool.acquire("a")
    pool.connected(conn)
    pool.serve(conn)
    pool.acquire("b")  # queued behind nothing: a WAIT (conn has room, but serve decides)
    assert pool.retire(conn) in (True, False)
    assert conn not in pool.connections and conn in pool.retired
    assert pool.drained(conn, has_streams=True) is False
    assert pool.drained(conn, has_streams=False) is True
    assert pool.serve(conn) is None


def test_stream_pool_retires_a_spent_connection_only_when_another_could_take_over():
    """A connection that spent its resets may retire while another connection accepts
    streams, or one more may be opened, or it carries no stream (it closes, and its place goes
    to a fresh one); the last one allowed, carrying streams, keeps serving (retired, it would
    leave new requests waiting behind its long streams); a retired one is not asked again."""
    pool = stream_pool(max_connections=2)
    first, second = StreamConn(room=5), StreamConn(room=5)
    pool.connecting = 1
    pool.connected(first)
    assert pool.may_retire(first, has_streams=True)  # one more connection may be opened
    pool.connecting = 1
    pool.connected(second)
    assert pool.may_retire(first, True) and pool.may_retire(second, True)  # one takes over
    pool.retire(first)
    assert not pool.may_retire(first, False)  # retired already
    assert not pool.may_retire(second, has_streams=True)  # nothing could replace it
    assert pool.may_retire(second, has_streams=False)  # empty: it closes, a fresh one follows
    pool.lost(first, was_connecting=False)
    assert pool.may_retire(second, has_streams=True)  # a place is free again


def test_stream_pool_connect_failure_answers_every_waiter():
    """A failed connection attempt hands every waiter back (each gets its 502)."""
    pool = stream_pool()
    pool.acquire("a")
    pool.acquire("b")
    assert pool.connect_failed() == ["a", "b"] and not pool.waiting and pool.connecting == 0


def test_stream_pool_lost_connection_reconnects_for_waiters():
    """A lost connection leaves the counts; waiters get a new attempt; a connection lost before
    it was ready stops counting as connecting."""
    pool = stream_pool(max_connections=1)
    conn = StreamConn(room=0)
    pool.acquire("a")
    pool.connected(conn)
    assert pool.lost(conn, was_connecting=False) is True and pool.connecting == 1
    # that new attempt fails its TLS handshake: "a" still waits, so one more attempt
    assert pool.lost(StreamConn(0), was_connecting=True) is True and pool.connecting == 1
    pool.cancel("a")
    assert pool.lost(StreamConn(0), was_connecting=True) is False and pool.connecting == 0


def test_stream_pool_idle_and_capacity():
    """Idle connections carry no stream; has_capacity says whether a request would wait."""
    pool = stream_pool(max_connections=1)
    conn = StreamConn(room=1)
    pool.acquire("a")
    pool.connected(conn)
    assert pool.idle == [conn] and pool.has_capacity()
    conn.busy, conn.room = 1, 0
    assert pool.idle == [] and not pool.has_capacity()


def test_stalls_to_end_takes_the_longest_stalled_one_per_waiter():
    """Exchanges stalled for the grace period end longest first, no more than requests wait;
    the next due time is the earliest of those not yet due."""
    stalled = {"b": 3.0, "a": 1.0, "c": 2.0, "d": 9.0}
    assert stalls_to_end(stalled, 8.5, waiting=2, grace=5.0) == (["a", "c"], 14.0)
    assert stalls_to_end(stalled, 8.5, waiting=5, grace=5.0) == (["a", "c", "b"], 14.0)
    assert stalls_to_end(stalled, 6.0, waiting=5, grace=5.0) == (["a"], 7.0)
    assert stalls_to_end(stalled, 5.0, waiting=5, grace=5.0) == ([], 6.0)
    assert stalls_to_end(stalled, 100.0, waiting=9, grace=5.0) == (["a", "c", "b", "d"], None)


def test_stalls_to_end_ends_nothing_without_waiters_or_stalls():
    """Nobody waiting: nothing ends and nothing needs a later look; nothing stalled: likewise."""
    assert stalls_to_end({"a": 0.0}, 100.0, waiting=0) == ([], None)
    assert stalls_to_end({}, 100.0, waiting=3) == ([], None)
    assert stalls_to_end({"a": 0.0}, CONTENDED_STALL - 0.5, waiting=1) == ([], CONTENDED_STALL)
