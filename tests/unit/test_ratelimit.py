"""Tests of proxyd.ratelimit with explicit ``now`` values: buckets, keyed limiter, connection counts."""

import math

import pytest

from proxyd.ratelimit import ConnectionCounter, KeyedLimiter, TokenBucket


# --- TokenBucket ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rate, burst, steps",
    [
        # (action, n, now, expected) ; action in spend / delay / take
        # starts full: spending within the burst needs no wait
        (100, 1000, [("spend", 400, 0.0, 0.0), ("spend", 600, 0.0, 0.0), ("delay", 0, 0.0, 0.0)]),
        # going into debt: 1000 - 1200 = -200 tokens at 100/s -> 2 s
        (100, 1000, [("spend", 1200, 0.0, 2.0), ("delay", 0, 1.0, 1.0), ("delay", 0, 2.0, 0.0)]),
        # refill: 500 spent, 3 s later full again (capped at burst), spend 1000 -> no wait
        (100, 1000, [("spend", 500, 0.0, 0.0), ("spend", 1000, 10.0, 0.0), ("spend", 100, 10.0, 1.0)]),
        # refill is rate * elapsed: after 1 s only 100 tokens came back
        (100, 1000, [("spend", 1000, 0.0, 0.0), ("spend", 150, 1.0, 0.5)]),
        # debt bounded by max(n, burst): repeated spending without waiting stops growing the wait
        (100, 1000, [("spend", 1000, 0.0, 0.0)] + [("spend", 500, 0.0, None)] * 5 + [("delay", 0, 0.0, 10.0)]),
        # a single spend larger than the burst: debt is that spend
        (100, 1000, [("spend", 1000, 0.0, 0.0), ("spend", 3000, 0.0, 30.0)]),
        # time going backwards adds nothing, and counts from there
        (100, 1000, [("spend", 1000, 5.0, 0.0), ("spend", 100, 4.0, 1.0), ("delay", 0, 4.5, 0.5)]),
        # request-type take
        (1, 2, [("take", 1, 0.0, True), ("take", 1, 0.0, True), ("take", 1, 0.0, False),
                ("take", 1, 0.5, False), ("take", 1, 1.0, True), ("take", 1, 1.0, False)]),
        # burst 0 with a rate: one second's worth
        (10, 0, [("take", 10, 0.0, True), ("take", 1, 0.0, False), ("take", 1, 0.1, True)]),
        # unlimited
        (0, 0, [("spend", 10**12, 0.0, 0.0), ("delay", 0, 0.0, 0.0), ("take", 10**12, 0.0, True)]),
        (0, 500, [("spend", 10**12, 0.0, 0.0), ("take", 10**12, -5.0, True)]),
    ],
)
def test_bucket_steps(rate, burst, steps):
    """Each (action, n, now) step returns the expected wait or decision."""
    bucket = TokenBucket(rate, burst, 0.0)
    for action, n, now, expected in steps:
        if action == "spend":
            got = bucket.spend(n, now)
        elif action == "delay":
            got = bucket.delay(now)
        else:
            got = bucket.try_take(n, now)
        if expected is not None:
            assert got == pytest.approx(expected), (action, n, now)



def test_a_bucket_in_debt_refills_after_the_clock_steps_back():
    """A ``now`` earlier than the bucket's last refill (a wall clock stepped back an hour, or a
    bucket last refilled by a process on another clock) adds no tokens, and the time that
    passes after it counts from there: a connection's or stream's bucket in debt by 5 s is out
    of it 5 s later, not an hour and 5 s later (its transfer paused for the size of the step)."""
    bucket = TokenBucket(100, 1000, 3600.0)
    assert bucket.spend(1500, 3600.0) == pytest.approx(5.0)
    assert bucket.delay(0.0) == pytest.approx(5.0)  # the step back adds nothing
    assert bucket.delay(5.0) == 0.0
    bucket = TokenBucket(100, 1000, 3600.0)
    assert bucket.spend(1000, 3600.0) == 0.0
    assert bucket.time_until(100, 0.0) == pytest.approx(1.0)
    assert bucket.try_take(100, 1.0)


def test_requests_per_ip_come_back_after_the_clock_steps_back():
    """An IP that used its ``requests_per_ip`` budget just before the clock stepped back an hour
    is refused for as long as the budget says (1 s here, its Retry-After), not for the hour."""
    limiter = KeyedLimiter(1, 1)
    assert limiter.allow(b"192.0.2.1", 3600.0) == (True, 0.0)
    assert limiter.allow(b"192.0.2.1", 3600.0) == (False, 1.0)
    assert limiter.allow(b"192.0.2.1", 0.0) == (False, 1.0)  # stepped back an hour
    assert limiter.allow(b"192.0.2.1", 1.0) == (True, 0.0)

def test_bucket_negative_tokens_and_wait():
    """Spending past zero leaves negative tokens and a wait of -tokens/rate, which shrinks with time."""
    bucket = TokenBucket(1000, 4000, 10.0)
    assert bucket.spend(5000, 10.0) == pytest.approx(1.0)
    assert bucket.tokens == pytest.approx(-1000)
    assert bucket.delay(10.25) == pytest.approx(0.75)
    assert bucket.tokens == pytest.approx(-750)
    assert bucket.try_take(1, 10.5) is False
    assert bucket.time_until(1, 10.5) == pytest.approx(0.501)
    assert bucket.spend(0, 11.0) == 0.0
    assert bucket.tokens == pytest.approx(0.0)


@pytest.mark.parametrize(
    "rate, burst, spent, now, n, expected",
    [
        (10, 20, 20, 0.0, 5, 0.5),
        (10, 20, 0, 0.0, 5, 0.0),
        (10, 20, 20, 1.0, 5, 0.0),
        (10, 20, 0, 0.0, 21, math.inf),
        (0, 0, 0, 0.0, 10**9, 0.0),
    ],
)
def test_time_until(rate, burst, spent, now, n, expected):
    """time_until(n) is how long until n tokens are there; infinite beyond the burst."""
    bucket = TokenBucket(rate, burst, 0.0)
    bucket.spend(spent, 0.0)
    assert bucket.time_until(n, now) == pytest.approx(expected)


@pytest.mark.parametrize(
    "rate, burst, spent, now, full",
    [(10, 20, 0, 0.0, True), (10, 20, 10, 0.5, False), (10, 20, 10, 1.0, True), (0, 0, 99, 0.0, True)],
)
def test_is_full(rate, burst, spent, now, full):
    """is_full tells whether an idle bucket has refilled completely."""
    bucket = TokenBucket(rate, burst, 0.0)
    bucket.spend(spent, 0.0)
    assert bucket.is_full(now) is full


@pytest.mark.parametrize("rate, burst", [(-1, 10), (10, -1)])
def test_bucket_rejects_negative(rate, burst):
    """Negative rates and bursts are configuration bugs."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_unlimited_bucket_state_untouched():
    """An unlimited bucket short-circuits without changing its state."""
    bucket = TokenBucket(0, 0, 0.0)
    assert bucket.unlimited
    bucket.spend(100, 1.0)
    assert bucket.try_take(100, 2.0)
    assert (bucket.tokens, bucket.last) == (0.0, 0.0)


# --- KeyedLimiter --------------------------------------------------------------------------------

def test_keyed_allow_and_retry_after():
    """Each key has its own bucket; refusals carry a whole-second retry_after >= 1."""
    lim = KeyedLimiter(rate=2, burst=3)
    assert [lim.allow(b"a", 0.0)[0] for _ in range(4)] == [True, True, True, False]
    assert lim.allow(b"b", 0.0) == (True, 0.0)
    assert lim.allow(b"a", 0.0) == (False, 1.0)
    assert lim.allow(b"a", 0.5) == (True, 0.0)  # one token back after 0.5 s at 2/s


@pytest.mark.parametrize(
    "rate, burst, expected",
    [(0.1, 1, 10.0), (0.25, 1, 4.0), (0.3, 1, 4.0), (5, 1, 1.0), (1000, 1, 1.0)],
)
def test_keyed_retry_after_rounded_up(rate, burst, expected):
    """retry_after is the wait for one token, rounded up to whole seconds, at least 1."""
    lim = KeyedLimiter(rate, burst)
    assert lim.allow(b"k", 0.0) == (True, 0.0)
    assert lim.allow(b"k", 0.0) == (False, expected)


def test_keyed_unlimited_stores_nothing():
    """rate 0 allows everything and keeps no per-key state."""
    lim = KeyedLimiter(0, 0)
    assert all(lim.allow(i, 0.0) == (True, 0.0) for i in range(1000))
    assert len(lim) == 0


def test_keyed_lru_bound_100000_keys():
    """100000 distinct busy keys never grow the table beyond max_keys; the LRU key goes first."""
    lim = KeyedLimiter(rate=1, burst=1, max_keys=1000)
    for i in range(100_000):
        assert lim.allow(i, 0.0) == (True, 0.0)
        assert len(lim) <= 1000
    assert len(lim) == 1000
    assert 99_999 in lim and 98_999 not in lim


def test_keyed_lru_recent_use_protects_key():
    """A key used recently survives eviction; its exhausted bucket is remembered."""
    lim = KeyedLimiter(rate=1, burst=1, max_keys=3)
    lim.allow(b"a", 0.0)
    lim.allow(b"b", 0.0)
    lim.allow(b"c", 0.0)
    assert lim.allow(b"a", 0.0)[0] is False  # touches a
    lim.allow(b"d", 0.0)  # evicts b, the least recently used
    assert b"b" not in lim and b"a" in lim
    assert lim.allow(b"a", 0.0)[0] is False


def test_keyed_idle_keys_dropped():
    """Keys whose bucket refilled completely are forgotten when new keys arrive."""
    lim = KeyedLimiter(rate=10, burst=10, max_keys=1000)
    for i in range(100):
        lim.allow(i, 0.0)
    assert len(lim) == 100
    for i in range(100, 200):
        lim.allow(i, 100.0)  # every older key is full again by now
    assert len(lim) <= 100
    assert all(i not in lim for i in range(100))


@pytest.mark.parametrize("args", [(-1, 1), (1, -1), (1, 1, 0)])
def test_keyed_rejects_bad_arguments(args):
    """Negative rates/bursts and a zero key bound are refused."""
    with pytest.raises(ValueError):
        KeyedLimiter(*args)


# --- ConnectionCounter ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "max_total, max_per_key, ops, expected",
    [
        (3, 2, ["+a", "+a", "+a", "+b", "+b"], [True, True, False, True, False]),
        (0, 1, ["+a", "+a", "+b", "-a", "+a"], [True, False, True, None, True]),
        (2, 0, ["+a", "+a", "+a", "-a", "+b"], [True, True, False, None, True]),
        (None, None, ["+a"] * 50, [True] * 50),
        (1, 1, ["-a", "+a", "-a", "-a", "+b"], [None, True, None, None, True]),  # unknown close ignored
    ],
)
def test_connection_counter(max_total, max_per_key, ops, expected):
    """try_open obeys both limits (0/None = unlimited); close frees a slot."""
    counter = ConnectionCounter(max_total, max_per_key)
    got = []
    for op in ops:
        got.append(counter.try_open(op[1:]) if op[0] == "+" else counter.close(op[1:]))
    assert got == expected


def test_connection_counter_bounded():
    """Entries exist only while connections are live."""
    counter = ConnectionCounter(0, 0)
    for i in range(10_000):
        assert counter.try_open(i)
    assert len(counter) == 10_000 and counter.total == 10_000
    for i in range(10_000):
        counter.close(i)
    assert len(counter) == 0 and counter.total == 0
    assert counter.try_open(b"x") and counter.try_open(b"x") and counter.count(b"x") == 2
    counter.close(b"x")
    assert counter.count(b"x") == 1 and len(counter) == 1
