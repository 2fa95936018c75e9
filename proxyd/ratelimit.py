"""Rate limits and connection counts, driven by an explicit clock.

Strategy: nothing here reads a clock or schedules anything; every call takes ``now`` (seconds, any
monotonic origin) and returns a decision or a wait time, so the network layer owns timing (pause a
transport for ``spend()`` seconds, answer 429 with ``Retry-After``) and tests are exact.  Token
buckets refill lazily on use (``tokens = min(burst, tokens + rate * elapsed)``), a rate of 0 means
unlimited and short-circuits on the first line.  Per-key state is bounded: :class:`KeyedLimiter` is
an LRU capped at ``max_keys`` that also forgets keys whose bucket is full again (a full bucket is
indistinguishable from a new one, so forgetting it loses nothing), and :class:`ConnectionCounter`
only holds keys with live connections. :class:`SharedBudget` is the local view of per-key
buckets that a fleet shares in a store (Redis): decided locally at once, corrected by the
store's replies.
"""

__all__ = ["ALLOWED", "TokenBucket", "KeyedLimiter", "SharedBudget", "ConnectionCounter",
           "FleetCounts", "retry_after"]

import math
from collections import OrderedDict

ALLOWED = _ALLOWED = (True, 0.0)


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``burst`` tokens.

    It starts full at time ``now``.  ``rate`` 0 means unlimited: every call returns 0.0 / True
    without touching state.  A ``burst`` of 0 with a positive rate means one second's worth
    (``max(rate, 1)``).  Time going backwards never adds tokens, and the time after it counts
    from there: a ``now`` before ``last`` (a clock stepped back; a bucket shared by processes
    on different clocks) becomes ``last``, rather than no refill until the clock is back at the
    old ``last``, which could be hours (or, for a wall-clock time read on the monotonic
    clock, never).

    Attributes ``rate``, ``burst``, ``tokens`` (may be negative after :meth:`spend`) and ``last``
    (time of the last refill) are readable.
    """

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate, burst, now):
        if rate < 0 or burst < 0:
            raise ValueError(f"rate and burst must be >= 0, got rate={rate!r} burst={burst!r}")
        self.rate = float(rate)
        if burst <= 0 and rate > 0:
            burst = rate if rate > 1.0 else 1.0
        self.burst = float(burst)
        self.tokens = self.burst
        self.last = now

    @property
    def unlimited(self):
        """True when the rate is 0 (no limit)."""
        return not self.rate

    def spend(self, n, now):
        """Take ``n`` tokens (even if not available) and return the seconds to wait before more.

        Returns 0.0 while the bucket is not in debt.  The debt is bounded: tokens never go below
        ``-max(n, burst)``, so one wait is at most ``max(n, burst) / rate`` even for a caller that
        keeps spending without waiting.
        """
        rate = self.rate
        if not rate:
            return 0.0
        burst = self.burst
        elapsed = now - self.last
        tokens = self.tokens
        if elapsed > 0:
            tokens += rate * elapsed
            if tokens > burst:
                tokens = burst
        self.last = now  # (also when time went back: see the class docstring)
        tokens -= n
        floor = -n if n > burst else -burst
        if tokens < floor:
            tokens = floor
        self.tokens = tokens
        return -tokens / rate if tokens < 0 else 0.0

    def delay(self, now):
        """Seconds to wait until the bucket is out of debt (0.0 if it is not), spending nothing."""
        rate = self.rate
        if not rate:
            return 0.0
        self._refill(now)
        tokens = self.tokens
        return -tokens / rate if tokens < 0 else 0.0

    def try_take(self, n, now):
        """Take ``n`` tokens if at least ``n`` are available now; return whether it did."""
        rate = self.rate
        if not rate:
            return True
        elapsed = now - self.last
        tokens = self.tokens
        if elapsed > 0:
            tokens += rate * elapsed
            if tokens > self.burst:
                tokens = self.burst
        self.last = now
        if tokens >= n:
            self.tokens = tokens - n
            return True
        self.tokens = tokens
        return False

    def time_until(self, n, now):
        """Seconds until ``n`` tokens are available (0.0 if they are now; inf if n > burst)."""
        rate = self.rate
        if not rate:
            return 0.0
        self._refill(now)
        missing = n - self.tokens
        if missing <= 0:
            return 0.0
        if n > self.burst:
            return math.inf
        return missing / rate

    def is_full(self, now):
        """True when the bucket would hold ``burst`` tokens at ``now`` (it has been idle long enough)."""
        if not self.rate:
            return True
        elapsed = now - self.last
        if elapsed < 0:
            elapsed = 0.0
        return self.tokens + self.rate * elapsed >= self.burst

    def _refill(self, now):
        """Add the tokens earned since ``last``, capped at ``burst``; ``last`` becomes ``now``."""
        elapsed = now - self.last
        if elapsed > 0:
            tokens = self.tokens + self.rate * elapsed
            self.tokens = tokens if tokens < self.burst else self.burst
        self.last = now


class KeyedLimiter:
    """One :class:`TokenBucket` per key (e.g. client IP), for request-rate limits.

    :meth:`allow` takes one token from the key's bucket.  The table is an LRU bounded by
    ``max_keys`` (the least recently used key is evicted beyond it) and, whenever a new key is
    added, up to two of the oldest keys are dropped if their buckets are full again.  ``rate`` 0
    means unlimited (nothing is stored).  A positive rate uses ``burst`` of at least 1 so that a
    request can ever be allowed.
    """

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate, burst, max_keys=65536):
        if rate < 0 or burst < 0:
            raise ValueError(f"rate and burst must be >= 0, got rate={rate!r} burst={burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.rate = float(rate)
        if rate > 0 and burst < 1:
            burst = rate if (burst <= 0 and rate > 1.0) else 1.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets = OrderedDict()

    def allow(self, key, now):
        """Count one request for ``key`` at ``now``.

        Returns ``(True, 0.0)`` when allowed, else ``(False, retry_after)`` where ``retry_after``
        is the whole number of seconds (at least 1.0) until a token is available.
        """
        rate = self.rate
        if not rate:
            return _ALLOWED
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if buckets:
                self._drop_idle(now)
            bucket = buckets[key] = TokenBucket(rate, self.burst, now)
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        if bucket.try_take(1, now):
            return _ALLOWED
        return False, retry_after(bucket)

    def _drop_idle(self, now):
        """Forget up to two least recently used keys whose bucket is full at ``now``."""
        buckets = self._buckets
        for _ in range(2):
            key, bucket = next(iter(buckets.items()))
            if not bucket.is_full(now):
                return
            del buckets[key]
            if not buckets:
                return

    def __len__(self):
        """Number of keys currently tracked."""
        return len(self._buckets)

    def __contains__(self, key):
        """True when ``key`` currently has a bucket."""
        return key in self._buckets


def retry_after(bucket):
    """Whole seconds (at least 1.0) until ``bucket`` (empty) has a token again."""
    wait = math.ceil((1.0 - bucket.tokens) / bucket.rate)
    return float(wait if wait > 1 else 1)


class SharedBudget(KeyedLimiter):
    """Per-key buckets shared by a fleet: decided here at once, corrected by the store.

    :meth:`allow` decides from the local view of the key's bucket exactly as
    :class:`KeyedLimiter` does and records that a spend (1 when allowed, 0 when refused: a
    refresh) is on its way to the store. :meth:`settled` applies the store's answer: the
    fleet's tokens after that spend, minus the spends of this process still on their way (the
    store will take those off too). :meth:`unsettled` forgets a spend whose answer never came
    (the local view stands). So a process never waits for the store, follows the fleet's budget
    to within the requests in flight, and enforces the budget alone while the store is away.
    """

    __slots__ = ("_pending",)

    def __init__(self, rate, burst, max_keys=65536):
        super().__init__(rate, burst, max_keys)
        self._pending = {}

    def allow(self, key, now):
        """Decide for one request of ``key``; the caller sends its spend to the store."""
        decision = super().allow(key, now)
        if self.rate:
            self._pending[key] = self._pending.get(key, 0) + 1
        return decision

    def settled(self, key, tokens, now):
        """The store's tokens for ``key`` after one of our spends."""
        self._done(key)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        bucket.tokens = min(float(tokens), self.burst) - self._pending.get(key, 0)
        bucket.last = now

    def unsettled(self, key):
        """A spend whose answer never came (store slow or down)."""
        self._done(key)

    def _done(self, key):
        pending = self._pending.get(key, 0)
        if pending <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] = pending - 1


class ConnectionCounter:
    """Counts live connections in total and per key (e.g. client IP), refusing beyond limits.

    ``max_total`` / ``max_per_key`` of 0 (or None) mean unlimited.  Only keys with at least one
    live connection are stored, so the table is bounded by the number of open connections.
    ``fleet`` (None: this process alone) adds the other instances' connections of a key to the
    per-key limit: ``fleet.others(key)`` is their count as last known, and ``fleet.changed(key,
    count)`` hears every change of this process's count (see :class:`FleetCounts`).
    """

    __slots__ = ("max_total", "max_per_key", "total", "_counts", "fleet")

    def __init__(self, max_total, max_per_key, fleet=None):
        self.max_total = max_total or 0
        self.max_per_key = max_per_key or 0
        self.total = 0
        self._counts = {}
        self.fleet = fleet

    def try_open(self, key):
        """Record a new connection for ``key`` and return True, or return False if over a limit."""
        if self.max_total and self.total >= self.max_total:
            return False
        counts = self._counts
        count = counts.get(key, 0)
        fleet = self.fleet
        if self.max_per_key and count + (fleet.others(key) if fleet else 0) >= self.max_per_key:
            return False
        counts[key] = count + 1
        self.total += 1
        if fleet is not None:
            fleet.changed(key, count + 1)
        return True

    def close(self, key):
        """Forget one connection of ``key`` (opened with :meth:`try_open`); unknown keys are ignored."""
        counts = self._counts
        count = counts.get(key)
        if count is None:
            return
        if count <= 1:
            del counts[key]
        else:
            counts[key] = count - 1
        self.total -= 1
        if self.fleet is not None:
            self.fleet.changed(key, count - 1)

    def count(self, key):
        """Number of live connections of ``key``."""
        return self._counts.get(key, 0)

    def __len__(self):
        """Number of keys with at least one live connection."""
        return len(self._counts)

    def keys(self):
        """The keys with live connections, and their counts."""
        return self._counts.items()


class FleetCounts:
    """What the other instances of a fleet hold, per key, as their shared store last said.

    :meth:`reported` takes the store's total for a key after this process wrote its own count
    there; the others' share is the difference. Absent keys count 0, and so does everything
    after :meth:`forget` (the store is away: each instance counts alone, failing open).
    """

    __slots__ = ("_others",)

    def __init__(self):
        self._others = {}

    def others(self, key):
        """Connections of ``key`` at the other instances."""
        return self._others.get(key, 0)

    def reported(self, key, total, own):
        """The store counts ``total`` for ``key`` with this process's ``own`` in it."""
        if total > own:
            self._others[key] = total - own
        else:
            self._others.pop(key, None)

    def forget(self):
        """Drop what the store said (it does not answer)."""
        self._others.clear()
