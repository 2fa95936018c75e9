"""Fleet-wide per-IP request limits kept in Redis (``limits.shared.redis``).

Strategy: bounded latency first. A request's 429-or-not is decided at once from the local view
of its client's bucket (:class:`proxyd.ratelimit.SharedBudget`), never waiting for Redis; the
spend then goes to Redis, where one Lua script updates the fleet's bucket of that IP atomically
(refill from Redis' own clock, so the instances' clocks do not matter; take the spend, allowing
a bounded debt: a request already let through did use the budget) and returns the fleet's
tokens, which correct the local view. N instances behind one balancer thus enforce one budget,
to within the requests in flight between them (about one per instance at the edge of the
budget).

Redis slow or down: a reply that takes longer than :data:`TIMEOUT` is given up (its timer is
ours and dies with the limiter), and so is an error; Redis is then left alone for a backoff
(1 s, doubled up to 10 s) before one request's spend probes it again. Meanwhile, and also
when more than :data:`MAX_IN_FLIGHT` spends wait, each instance enforces the whole budget on
its own: **fail open to local limits** (a fleet of N admits at most N times the budget, never
unlimited; failing closed would turn a Redis outage into a site outage). Every decision made
without Redis is counted in ``proxyd_shared_limit_fallbacks_total{reason}`` (timeout, error,
down, busy) and ``proxyd_shared_limit_up`` says whether Redis answers; the transitions are
logged. The client is txredisapi (Twisted-native, reconnects with backoff by itself).
"""

from twisted.logger import Logger

from proxyd.ratelimit import SharedBudget

log = Logger(namespace="proxyd.sharedlimit")
TIMEOUT = 0.25
MAX_IN_FLIGHT = 1000
BACKOFF, MAX_BACKOFF = 1.0, 10.0
KEY_PREFIX = "proxyd:rpi:"

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
  ts = now
end
tokens = math.max(tokens - cost, -burst)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst * 2 / rate) * 1000) + 1000)
return tostring(tokens)
"""


def connect(settings):
    """A txredisapi connection (lazy: commands wait for it; it reconnects by itself)."""
    import txredisapi

    return txredisapi.lazyConnection(settings.host, settings.port, dbid=settings.db,
                                     reconnect=True, connectTimeout=TIMEOUT * 4)


class SharedLimiter:
    """``allow(ip, now)`` like :class:`proxyd.ratelimit.KeyedLimiter`, shared through Redis."""

    def __init__(self, reactor, settings, rate, burst, client=None):
        self.reactor = reactor
        self.settings = settings
        self.budget = SharedBudget(rate, burst)
        self.rate, self.burst = self.budget.rate, self.budget.burst
        self.client = client if client is not None else connect(settings)
        self.up = True
        self.retry_at = 0.0
        self.backoff = BACKOFF
        self.in_flight = 0
        self.timers = set()
        self.fallbacks = {"timeout": 0, "error": 0, "down": 0, "busy": 0}
        self.closed = False

    def same(self, settings, rate, burst):
        """True when this limiter serves that configuration (a reload may keep it)."""
        return (self.settings, self.rate, self.burst) == (settings, float(rate), float(burst))

    def allow(self, key, now):
        """Decide now from the local view; send the spend to Redis (see the module docstring)."""
        allowed, retry_after = self.budget.allow(key, now)
        self._send(key, 1 if allowed else 0)
        return allowed, retry_after

    def _send(self, key, cost):
        if self.closed:
            self.budget.unsettled(key)
            return
        if not self.up:
            if self.reactor.seconds() < self.retry_at:
                self._fallback(key, "down")
                return
            self.retry_at = self.reactor.seconds() + self.backoff  # one probe per backoff
        if self.in_flight >= MAX_IN_FLIGHT:
            self._fallback(key, "busy")
            return
        self.in_flight += 1
        try:
            d = self.client.eval(SCRIPT, [KEY_PREFIX + key.decode("latin-1")],
                                 [repr(self.rate), repr(self.burst), cost])
        except Exception as exc:  # noqa: BLE001 - a client that cannot even send
            self.in_flight -= 1
            self._failed(key, "error", str(exc))
            return
        timer = self.reactor.callLater(TIMEOUT, self._timed_out, d)
        self.timers.add(timer)
        d.addCallbacks(self._answered, self._error, callbackArgs=(key, timer),
                       errbackArgs=(key, timer))

    def _timed_out(self, d):
        d.cancel()

    def _settle(self, timer):
        self.in_flight -= 1
        self.timers.discard(timer)
        if timer.active():
            timer.cancel()

    def _answered(self, tokens, key, timer):
        self._settle(timer)
        try:
            tokens = float(tokens)
        except (TypeError, ValueError):
            self._failed(key, "error", f"unexpected reply {tokens!r}")
            return
        self.budget.settled(key, tokens, self.reactor.seconds())
        if not self.up:
            self.up = True
            self.backoff = BACKOFF
            log.info("Redis {url} answers again: per-IP limits are fleet-wide again",
                     url=self.settings.redis)

    def _error(self, failure, key, timer):
        timed_out = not timer.active()
        self._settle(timer)
        if timed_out:
            self._failed(key, "timeout", f"no reply within {TIMEOUT}s")
        else:
            self._failed(key, "error", failure.getErrorMessage())

    def _failed(self, key, reason, detail):
        self._fallback(key, reason)
        if self.closed:
            return
        now = self.reactor.seconds()
        if self.up:
            self.up = False
            log.warn("Redis {url} unusable ({detail}): per-IP limits are enforced by this "
                     "instance alone until it answers (fail open to local limits)",
                     url=self.settings.redis, detail=detail)
        else:
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self.retry_at = now + self.backoff

    def _fallback(self, key, reason):
        self.budget.unsettled(key)
        self.fallbacks[reason] += 1

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
