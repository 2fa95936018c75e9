"""Stalled clients give up their backend connections when other requests wait for them.

Strategy: a client that stops reading (its window shut, its socket full) keeps its stream's
backend connection (or HTTP/2 stream) paused until the stall timeout, ``timeouts.frontend_idle``.
One client connection opening many streams that way could hold a backend's whole pool for that
long while every other client waits (and reconnect to do it again). Each backend keeps one
:class:`StallRelief`: a relay registers when its response stalls with a connection attached
and unregisters when bytes flow again or it ends; when a request has to wait for that backend,
the exchanges stalled for :data:`proxyd.pool.CONTENDED_STALL` seconds end (the stall timer's
own ``client_stalled`` reset), longest first, one per waiting request
(:func:`proxyd.pool.stalls_to_end` decides), and one timer looks again when the next stalled one
would qualify while requests still wait. Nothing is registered while every client reads, so
the cost on the request path is one dictionary test per queued request.
"""

from twisted.logger import Logger

from proxyd.pool import CONTENDED_STALL, stalls_to_end

log = Logger(namespace="proxyd.backend")


class StallRelief:
    """The stalled exchanges of one backend, and the check that ends them under contention.

    ``waiting()`` returns how many requests wait for the backend now.
    """

    __slots__ = ("clock", "waiting", "address", "stalled", "_call")

    def __init__(self, clock, waiting, address):
        self.clock = clock
        self.waiting = waiting
        self.address = address
        self.stalled = {}  # relay -> when its client last took a response byte
        self._call = None

    def stall(self, relay, since):
        """``relay``'s client takes nothing (since ``since``) while it holds a connection.

        Requests may already wait (queued while every holder still had its client reading):
        then the check is due when this stall qualifies, as if they had queued now."""
        self.stalled[relay] = since
        if self._call is None and self.waiting():
            delay = max(0.0, since + CONTENDED_STALL - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._due)

    def flowing(self, relay):
        """``relay`` is no longer a stalled holder (bytes flow, its connection went, it ended)."""
        self.stalled.pop(relay, None)

    def contended(self):
        """A request had to wait: end what has stalled long enough, or look again later."""
        if self.stalled and self._call is None:
            self._check()

    def _due(self):
        self._call = None
        self._check()

    def _check(self):
        waiting = self.waiting()
        if not waiting:
            return
        now = self.clock.seconds()
        stalled = self.stalled
        for relay in stalled:
            if relay.paced:  # proxyd's write limits hold it, not its client: not stalled yet
                stalled[relay] = now
        ended, next_due = stalls_to_end(self.stalled, now, waiting)
        if ended:
            log.info("backend {addr}: {n} stalled stream(s) give their connection to {w} waiting "
                     "request(s)", addr=self.address.decode(), n=len(ended), w=waiting)
        for relay in ended:
            self.stalled.pop(relay, None)
            relay.preempt()
        if next_due is not None and self.waiting():
            self._call = self.clock.callLater(max(0.0, next_due - now), self._due)

    def stop(self):
        """The backend is being shut down: no check runs any more."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
