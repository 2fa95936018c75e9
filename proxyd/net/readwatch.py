"""One timer per client connection for the backend read deadlines of all its streams.

Strategy: a relay whose read timer is armed (``timeouts.backend_read``, or its route's) only
records when its backend last did something (``Relay.last_read``); instead of a scheduled call
made and cancelled per request (about 4% of a small request's instructions), the connection's
:class:`ReadWatch` keeps one call, due at the earliest deadline it was told of. When it fires it
looks at the connection's streams: each one past its deadline times out, the others give the
next due time. A stream's deadline only moves later (backend activity), so the call is never
late; when it is early it only re-arms. The call belongs to the connection and dies with it.
"""

# Slack below which a deadline counts as reached (the reactor's clock is a float).
_SLACK = 0.001


class ReadWatch:
    """The read deadlines of one connection's streams (``streams``: its id -> relay dict).

    A relay in ``streams`` tells when it is due with ``read_due()`` (None: not armed) and is
    told that it timed out with ``read_timed_out()``.
    """

    __slots__ = ("_clock", "_streams", "_call", "_due")

    def __init__(self, clock, streams):
        self._clock = clock
        self._streams = streams
        self._call = None
        self._due = 0.0

    def watch(self, due):
        """Some stream's read deadline is ``due`` (clock seconds): check no later than that."""
        call = self._call
        if call is None:
            self._due = due
            self._call = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._check)
        elif due < self._due:
            self._due = due
            call.reset(max(0.0, due - self._clock.seconds()))

    def stop(self):
        """The connection is gone: cancel the call."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self):
        self._call = None
        now = self._clock.seconds()
        nearest = None
        for relay in list(self._streams.values()):
            due = relay.read_due()
            if due is None:
                continue
            if due - now <= _SLACK:
                relay.read_timed_out()
            elif nearest is None or due < nearest:
                nearest = due
        if nearest is not None:
            self.watch(nearest)
