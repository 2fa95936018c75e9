"""The shared per-IP tables (proxyd.sharedlimits) over a plain bytearray: the same decisions as
the single-process ConnectionCounter and KeyedLimiter, whichever seat (worker) asks.

Hypothesis drives random interleavings of opens and closes from several seats on small tables
(collisions, wrap-around and backward-shift deletions happen all the time) and compares them with
a model; the bucket table is compared with KeyedLimiter request by request.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.ratelimit import ConnectionCounter, KeyedLimiter
from proxyd.sharedlimits import (SharedBuckets, SharedConnectionCounter, SharedConnections,
                                 SharedRequestLimiter, table_bytes)


class Lock:
    """Counts acquisitions and checks they are balanced (the real one is fcntl's)."""

    def __init__(self):
        self.held = False
        self.taken = 0

    def acquire(self):
        assert not self.held
        self.held = True
        self.taken += 1

    def release(self):
        assert self.held
        self.held = False


def connections(capacity=16, offset=24):
    """A formatted connection table at an offset inside a larger buffer."""
    buf = bytearray(offset + table_bytes(capacity) + 24)
    table = SharedConnections(buf, offset, capacity, Lock())
    table.format()
    table.check()
    return table, buf


def buckets(capacity=16):
    """A formatted bucket table."""
    buf = bytearray(table_bytes(capacity, bucket=True))
    table = SharedBuckets(buf, 0, capacity, Lock())
    table.format()
    table.check()
    return table


def test_per_ip_limit_counts_every_seat():
    """Two workers (seats 0 and 1) share one client's allowance of 3 connections."""
    table, _ = connections()
    first = SharedConnectionCounter(table, 0, 0, 3)
    second = SharedConnectionCounter(table, 1, 0, 3)
    assert first.try_open(b"10.0.0.1") and second.try_open(b"10.0.0.1")
    assert first.try_open(b"10.0.0.1")
    assert not second.try_open(b"10.0.0.1") and not first.try_open(b"10.0.0.1")
    assert second.try_open(b"10.0.0.2")
    assert first.count(b"10.0.0.1") == 3 and first.total == 4
    second.close(b"10.0.0.1")
    assert second.try_open(b"10.0.0.1")


def test_total_limit_counts_every_seat():
    """max_connections is one number for the daemon."""
    table, _ = connections()
    counters = [SharedConnectionCounter(table, seat, 2, 0) for seat in (0, 5)]
    assert counters[0].try_open(b"a") and counters[1].try_open(b"b")
    assert not counters[0].try_open(b"c") and not counters[1].try_open(b"a")
    counters[0].close(b"a")
    assert counters[1].try_open(b"c")


def test_clear_seat_removes_what_a_dead_worker_held():
    """The supervisor removes a dead worker's connections: counts, total and seat total."""
    table, _ = connections()
    alive = SharedConnectionCounter(table, 1, 0, 2)
    dead = SharedConnectionCounter(table, 2, 0, 2)
    for key in (b"x", b"y", b"z"):
        assert dead.try_open(key)
    assert alive.try_open(b"x") and not alive.try_open(b"x")
    assert table.seat_total(2) == 3
    assert table.clear_seat(2) == 3
    assert (table.total(), table.seat_total(2), table.seat_total(1)) == (1, 0, 1)
    assert alive.try_open(b"x") and alive.count(b"x") == 2 and table.count(b"y") == 0


def test_a_full_table_refuses_new_addresses_only():
    """Past three quarters of its slots, new addresses are refused; known ones still count."""
    table, _ = connections(capacity=8)
    counter = SharedConnectionCounter(table, 0, 0, 0)
    assert all(counter.try_open(b"ip%d" % i) for i in range(6))
    assert not counter.try_open(b"ip6")
    assert counter.try_open(b"ip0") and counter.count(b"ip0") == 2


def test_long_keys_are_digested_and_the_neighbours_are_untouched():
    """A key longer than 48 bytes (an IPv6 address with a long zone) works, and writing it does
    not spill over the bytes around the table."""
    table, buf = connections(offset=24)
    key = b"fe80::1%" + b"z" * 60
    counter = SharedConnectionCounter(table, 0, 0, 1)
    assert counter.try_open(key) and not counter.try_open(key)
    counter.close(key)
    assert counter.count(key) == 0
    assert buf[:24] == bytes(24) and buf[-24:] == bytes(24)


def test_wrong_size_or_garbage_is_refused():
    """Mapping a region of another layout is an error, not silent corruption."""
    table, buf = connections(capacity=16)
    with pytest.raises(ValueError):
        SharedConnections(buf, 24, 32, Lock()).check()
    with pytest.raises(ValueError):
        SharedConnections(bytearray(len(buf)), 24, 16, Lock()).check()
    with pytest.raises(ValueError):
        table_bytes(12)


ops = st.lists(st.tuples(st.sampled_from(["open", "close"]), st.integers(0, 2),
                         st.integers(0, 9)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_total=st.integers(0, 8), max_per_key=st.integers(0, 3))
def test_random_interleavings_match_a_model(ops, max_total, max_per_key):
    """Any sequence of opens and closes from three seats gives the decisions of one
    ConnectionCounter for the whole daemon (what a single process would have decided), and the
    per-seat totals add up."""
    table, _ = connections(capacity=32)
    seats = [SharedConnectionCounter(table, seat, max_total, max_per_key) for seat in range(3)]
    model = ConnectionCounter(max_total, max_per_key)
    held = {}  # (seat, key) -> open connections
    for op, seat, ip in ops:
        key = b"198.51.100.%d" % ip
        if op == "open":
            assert seats[seat].try_open(key) == model.try_open(key)
            if model.count(key) > sum(n for (_, k), n in held.items() if k == key):
                held[seat, key] = held.get((seat, key), 0) + 1
        elif held.get((seat, key)):
            seats[seat].close(key)
            model.close(key)
            held[seat, key] -= 1
        else:
            seats[seat].close(key)  # not held by this seat: ignored
        assert table.total() == model.total
        assert seats[0].count(key) == model.count(key)
    for seat in range(3):
        assert table.seat_total(seat) == sum(n for (s, _), n in held.items() if s == seat)
    assert table.lock.held is False


@settings(max_examples=200, deadline=None)
@given(seat=st.integers(0, 2), ops=ops)
def test_clear_seat_keeps_the_others_findable(seat, ops):
    """After removing one seat's entries, every other entry is still found (the table is
    rebuilt without holes in the probe runs)."""
    table, _ = connections(capacity=32)
    counters = [SharedConnectionCounter(table, s, 0, 0) for s in range(3)]
    held = {}
    for op, who, ip in ops:
        key = b"ip%d" % ip
        if op == "open" and counters[who].try_open(key):
            held[who, key] = held.get((who, key), 0) + 1
        elif op == "close" and held.get((who, key)):
            counters[who].close(key)
            held[who, key] -= 1
    table.clear_seat(seat)
    for ip in range(10):
        key = b"ip%d" % ip
        expected = sum(n for (s, k), n in held.items() if k == key and s != seat)
        assert table.count(key) == expected


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 5), st.floats(0, 2)), max_size=80),
       rate=st.integers(1, 5), burst=st.integers(0, 4))
def test_shared_buckets_decide_like_keyed_limiter(steps, rate, burst):
    """Request by request, the shared bucket table answers as KeyedLimiter does (allowed, and
    the Retry-After of a refusal), for any client and any pace."""
    table = buckets(capacity=32)
    shared = [SharedRequestLimiter(table, rate, burst) for _ in range(2)]
    local = KeyedLimiter(rate, burst)
    now = 1000.0
    for i, (ip, gap) in enumerate(steps):
        now += gap
        key = b"203.0.113.%d" % ip
        assert shared[i % 2].allow(key, now) == local.allow(key, now)



def test_a_shared_bucket_written_on_a_later_clock_refills_again():
    """Workers share the bucket table, each passing its own reading of the clock. A bucket left
    in debt at a later time than a worker's ``now`` (the clock stepped back; or, during a
    reload that upgrades proxyd, an old worker on the wall clock, about 1.8e9, beside a new one
    on the monotonic clock, the machine's uptime) refills from that worker's ``now`` on,
    instead of refusing the client until the clock reaches the old time (for a wall-clock time
    read on the monotonic clock: for ever)."""
    table = buckets()
    old, new = SharedRequestLimiter(table, 1, 1), SharedRequestLimiter(table, 1, 1)
    wall, uptime = 1.8e9, 5000.0
    assert old.allow(b"192.0.2.1", wall) == (True, 0.0)
    assert old.allow(b"192.0.2.1", wall) == (False, 1.0)
    assert new.allow(b"192.0.2.1", uptime) == (False, 1.0)
    assert new.allow(b"192.0.2.1", uptime + 1.0) == (True, 0.0)

def test_bucket_table_makes_room_for_new_clients():
    """Past three quarters full, full buckets are evicted for new clients; a client in debt
    elsewhere keeps its state unless its slot is needed."""
    table = buckets(capacity=8)
    limiter = SharedRequestLimiter(table, 1, 1)
    assert limiter.allow(b"busy", 0.0) == (True, 0.0)
    assert limiter.allow(b"busy", 0.0) == (False, 1.0)
    for i in range(20):
        assert limiter.allow(b"client%d" % i, 100.0 + i)[0]
        assert len(table) <= 6
    assert SharedRequestLimiter(table, 0, 0).allow(b"anyone", 0.0) == (True, 0.0)
