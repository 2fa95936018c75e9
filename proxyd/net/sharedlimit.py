"""Fleet-wide per-IP limits kept in Redis (``limits.shared.redis``): requests and connections.

Strategy: bounded latency first. A request's 429-or-not is decided at once from the local view
of its client's bucket (:class:`proxyd.ratelimit.SharedBudget`), never waiting for Redis; the
spend then goes to Redis, where one Lua script updates the fleet's bucket of that IP atomically
(refill from Redis' own clock, so the instances' clocks do not matter; take the spend, allowing
a bounded debt: a request already let through did use the budget) and returns the fleet's
tokens, which correct the local view. N instances behind one balancer thus enforce one budget,
to within the requests in flight between them (about one per instance at the edge of the
budget). Redis' clock is a wall clock: after it steps back, a bucket refills from then on, and
an instance's connection count holds for :data:`HOLD` from then on (the scripts pull times
ahead of Redis' clock back to it), rather than for the size of the step.

Redis slow or down: a reply that takes longer than :data:`TIMEOUT` is given up (its timer is
ours and dies with the limiter), and so is an error; Redis is then left alone for a backoff
(1 s, doubled up to 10 s) before one request's spend probes it again. Meanwhile, and also
when more than :data:`MAX_IN_FLIGHT` spends wait, each instance enforces the whole budget on
its own: **fail open to local limits** (a fleet of N admits at most N times the budget, never
unlimited; failing closed would turn a Redis outage into a site outage). Every decision made
without Redis is counted in ``proxyd_shared_limit_fallbacks_total{reason}`` (timeout, error,
down, busy) and ``proxyd_shared_limit_up`` says whether Redis answers; the transitions are
logged. The client is txredisapi (Twisted-native, reconnects with backoff by itself).

Connections per IP (``limits.max_connections_per_ip``) are shared the same way: each instance
writes its own count of an IP into that IP's Redis hash (a field per instance, with a deadline,
so a crashed instance's connections stop counting within :data:`HOLD`; live counts are
rewritten every :data:`REFRESH`), and the script answers the fleet's total, from which the
others' share is kept (:class:`proxyd.ratelimit.FleetCounts`). Admission adds that share to the
local count, at once; without Redis the share is dropped: each instance counts alone.

One :class:`RedisChannel` per process carries both, with the timeouts, the backoff and the
fallback counts.
"""

from twisted.logger import Logger

from proxyd.ratelimit import FleetCounts, SharedBudget

log = Logger(namespace="proxyd.sharedlimit")
TIMEOUT = 0.25
MAX_IN_FLIGHT = 1000
BACKOFF, MAX_BACKOFF = 1.0, 10.0
KEY_PREFIX = "proxyd:rpi:"
CONN_PREFIX = "proxyd:conn:"
REFRESH, HOLD = 10.0, 30.0

# KEYS[1]: the IP's bucket; ARGV: rate (tokens/s), burst, cost. Returns the tokens left.
SCRIPT = """
redis.replicate_commands()
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
-- also when Redis' clock stepped back: refill from now on, not once it is back at ts
ts = now
tokens = math.max(tokens - cost, -burst)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst * 2 / rate) * 1000) + 1000)
return tostring(tokens)
"""


# KEYS[1]: the IP's connection hash; ARGV: instance id, its count, hold (ms). Returns the total.
CONN_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], count .. ':' .. (now + hold))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local c, deadline = string.match(fields[i + 1], '^(%d+):(%d+)$')
  if c and tonumber(deadline) > now then
    if tonumber(deadline) > now + hold then
      -- written before Redis' clock stepped back: it holds for hold from now, not the step
      redis.call('HSET', KEYS[1], fields[i], c .. ':' .. (now + hold))
    end
    total = total + tonumber(c)
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total > 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return total
"""


def connect(settings):
    """A txredisapi connection (lazy: commands wait for it; it reconnects by itself)."""
    import txredisapi

    return txredisapi.lazyConnection(settings.host, settings.port, dbid=settings.db,
                                     reconnect=True, connectTimeout=TIMEOUT * 4)


class RedisChannel:
    """Script calls to Redis with a deadline each, a backoff while Redis fails, and the counts
    of what was decided without it."""

    def __init__(self, reactor, settings, client=None):
        self.reactor = reactor
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.up = True
        self.retry_at = 0.0
        self.backoff = BACKOFF
        self.in_flight = 0
        self.timers = set()
        self.fallbacks = {"timeout": 0, "error": 0, "down": 0, "busy": 0}
        self.closed = False
        self.listeners = []  # called with no argument when Redis stops answering

    def call(self, script, keys, args, answered, lost):
        """Run ``script``; ``answered(reply)`` or ``lost()`` follows (``lost`` at once when
        Redis is known down or too busy: counted as a fallback)."""
        if self.closed:
            lost()
            return
        if not self.up:
            if self.reactor.seconds() < self.retry_at:
                self._fallback(lost, "down")
                return
            self.retry_at = self.reactor.seconds() + self.backoff  # one probe per backoff
        if self.in_flight >= MAX_IN_FLIGHT:
            self._fallback(lost, "busy")
            return
        self.in_flight += 1
        try:
            d = self.client.eval(script, keys, args)
        except Exception as exc:  # noqa: BLE001 - a client that cannot even send
            self.in_flight -= 1
            self._failed(lost, "error", str(exc))
            return
        timer = self.reactor.callLater(TIMEOUT, d.cancel)
        self.timers.add(timer)
        d.addCallbacks(self._answered, self._error, callbackArgs=(timer, answered, lost),
                       errbackArgs=(timer, lost))

    def _settle(self, timer):
        self.in_flight -= 1
        self.timers.discard(timer)
        if timer.active():
            timer.cancel()

    def _answered(self, reply, timer, answered, lost):
        self._settle(timer)
        try:
            answered(reply)
        except (TypeError, ValueError):
            self._failed(lost, "error", f"unexpected reply {reply!r}")
            return
        if not self.up:
            self.up = True
            self.backoff = BACKOFF
            log.info("Redis {url} answers again: per-IP limits are fleet-wide again",
                     url=self.settings.redis)

    def _error(self, failure, timer, lost):
        timed_out = not timer.active()
        self._settle(timer)
        if timed_out:
            self._failed(lost, "timeout", f"no reply within {TIMEOUT}s")
        else:
            self._failed(lost, "error", failure.getErrorMessage())

    def _failed(self, lost, reason, detail):
        self._fallback(lost, reason)
        if self.closed:
            return
        if self.up:
            self.up = False
            log.warn("Redis {url} unusable ({detail}): per-IP limits are enforced by this "
                     "instance alone until it answers (fail open to local limits)",
                     url=self.settings.redis, detail=detail)
            for listener in self.listeners:
                listener()
        else:
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self.retry_at = self.reactor.seconds() + self.backoff

    def _fallback(self, lost, reason):
        self.fallbacks[reason] += 1
        lost()

    def close(self):
        """Stop: cancel our timers and close the Redis connection."""
        self.closed = True
        timers, self.timers = self.timers, set()
        for timer in timers:
            if timer.active():
                timer.cancel()
        disconnect = getattr(self.client, "disconnect", None)
        if disconnect is not None:
            d = disconnect()
            if d is not None:
                d.addErrback(lambda failure: None)


class SharedLimiter:
    """``allow(ip, now)`` like :class:`proxyd.ratelimit.KeyedLimiter`, shared through Redis."""

    def __init__(self, channel, rate, burst):
        self.channel = channel
        self.budget = SharedBudget(rate, burst)
        self.rate, self.burst = self.budget.rate, self.budget.burst

    def same(self, channel, rate, burst):
        """True when this limiter serves that configuration (a reload may keep it)."""
        return (self.channel, self.rate, self.burst) == (channel, float(rate), float(burst))

    def allow(self, key, now):
        """Decide now from the local view; send the spend to Redis (see the module docstring)."""
        allowed, retry_after = self.budget.allow(key, now)
        budget = self.budget
        self.channel.call(SCRIPT, [KEY_PREFIX + key.decode("latin-1")],
                          [repr(self.rate), repr(self.burst), 1 if allowed else 0],
                          lambda reply: budget.settled(key, float(reply),
                                                       self.channel.reactor.seconds()),
                          lambda: budget.unsettled(key))
        return allowed, retry_after


class SharedConnections:
    """The ``fleet`` of a :class:`proxyd.ratelimit.ConnectionCounter`: this instance's counts
    written to Redis, the others' read back (see the module docstring)."""

    def __init__(self, channel, counter, instance=None):
        import os
        import uuid

        self.channel = channel
        self.counter = counter
        self.instance = instance or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.fleet = FleetCounts()
        self.others = self.fleet.others
        self.refresh_call = None
        channel.listeners.append(self.fleet.forget)
        self._schedule()

    def changed(self, key, count):
        """This instance's count of ``key`` is now ``count``."""
        fleet = self.fleet
        self.channel.call(CONN_SCRIPT, [CONN_PREFIX + key.decode("latin-1")],
                          [self.instance, count, int(HOLD * 1000)],
                          lambda total: fleet.reported(key, int(total), count),
                          _nothing)

    def _schedule(self):
        if not self.channel.closed:
            self.refresh_call = self.channel.reactor.callLater(REFRESH, self._refresh)

    def _refresh(self):
        """Rewrite the live counts before their deadline passes (one call per IP)."""
        self.refresh_call = None
        for key, count in list(self.counter.keys()):
            self.changed(key, count)
        self._schedule()

    def close(self):
        """Stop refreshing (the channel closes separately)."""
        call, self.refresh_call = self.refresh_call, None
        if call is not None and call.active():
            call.cancel()
        if self.fleet.forget in self.channel.listeners:
            self.channel.listeners.remove(self.fleet.forget)


def _nothing():
    """A connection count that did not reach Redis: the next change or refresh rewrites it."""
