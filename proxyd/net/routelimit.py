"""Per-route read and write limits (``routes[].rate_limits``): bandwidth of each stream.

Strategy: the top-level ``rate_limits.read/write`` pace whole client connections in the
frontend; a route's limits pace each stream of that route, so one app's downloads or uploads can
be slower than another's on the same connection. A :class:`StreamRate` belongs to one relay
(only on routes that have limits: the others pay one ``is None`` test) and uses the same token
buckets: the stream's window is what the client's window and the write bucket's tokens both
allow, so the stream machine holds the rest and pauses the backend exactly as for a client that
does not read, until the timer says the bucket refilled. Uploads: the stream's acknowledgements
(HTTP/2 and SPDY WINDOW_UPDATEs) are spent from the read bucket and held while it is in debt; a
client without flow control (HTTP/1.1, SPDY/2) is paused instead. Its one timer belongs to the
relay and dies with it (:meth:`close`), which also returns held acknowledgements.
"""

from proxyd.ratelimit import TokenBucket


class StreamRate:
    """The read and write buckets of one stream, and the timer that ends their pauses."""

    __slots__ = ("relay", "read", "write", "held", "paused", "call")

    def __init__(self, relay, limits, now):
        self.relay = relay
        read, write = limits
        self.read = TokenBucket(read.rate, read.burst, now) if read.rate else None
        self.write = TokenBucket(write.rate, write.burst, now) if write.rate else None
        self.held = 0
        self.paused = False
        self.call = None

    def window(self, window):
        """The client's window for this stream, shut while the write bucket is in debt."""
        write = self.write
        if write is None or window <= 0:
            return window
        # (refills the bucket) the wait until a useful chunk, should the bucket be empty
        wait = write.time_until(min(write.burst, 16384.0), self.relay.frontend.clock.seconds())
        tokens = int(write.tokens)
        if tokens <= 0:
            self._wake(max(wait, 0.001))
            return 0
        return window if window < tokens else tokens

    @property
    def pacing(self):
        """True while the write bucket is empty and its refill is awaited: the limit, not the
        client, holds the response back."""
        return self.write is not None and self.call is not None and self.write.tokens < 1

    def sent(self, n):
        """``n`` response bytes went to the client (the timer wakes the stream once the bucket
        refilled, if this emptied it)."""
        write = self.write
        if write is not None:
            now = self.relay.frontend.clock.seconds()
            write.spend(n, now)
            if write.tokens < 1:
                self._wake(max(write.time_until(min(write.burst, 16384.0), now), 0.001))

    def ack(self, n):
        """Acknowledge ``n`` request bytes now, or once the read bucket is out of debt."""
        frontend = self.relay.frontend
        if self.read is None:
            frontend.acknowledge(self.relay.stream_id, n)
            return
        wait = self.read.spend(n, frontend.clock.seconds())
        if wait <= 0 and not self.held:
            frontend.acknowledge(self.relay.stream_id, n)
            return
        self.held += n
        if not frontend.codec.flow_controlled and not self.paused:
            self.paused = True
            frontend.pause_reading(self)
        self._wake(max(wait, 0.001))

    def _wake(self, wait):
        if self.call is None:
            self.call = self.relay.frontend.clock.callLater(wait, self._refilled)

    def _refilled(self):
        self.call = None
        relay = self.relay
        frontend = relay.frontend
        now = frontend.clock.seconds()
        if self.held:
            wait = self.read.delay(now)
            if wait > 0:
                self._wake(wait)
            else:
                held, self.held = self.held, 0
                frontend.acknowledge(relay.stream_id, held)
                if self.paused:
                    self.paused = False
                    frontend.resume_reading(self)
        if relay.machine.pending is not None:
            relay.on_client_window()
        frontend.flush_later()

    def close(self):
        """The stream is over: stop the timer, let the client read again, and forget the relay
        (it holds this object: a reference cycle that would keep the finished stream for the
        garbage collector)."""
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()
        relay, self.relay = self.relay, None
        if relay is None:  # closed already
            return
        frontend = relay.frontend
        if self.held:  # the connection's window must come back even for a finished stream
            held, self.held = self.held, 0
            frontend.acknowledge(relay.stream_id, held)
        if self.paused:
            self.paused = False
            frontend.resume_reading(self)
