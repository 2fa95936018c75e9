"""A deadline that moves on every request and fires rarely: a client connection's header and
idle timeouts, a backend connection's keep-alive expiry.

Strategy: moving the deadline later only stores a float. One pending call looks at the deadline
when it fires: none (cleared meanwhile) ends it, a later one makes it sleep on until then, a due
one runs ``expired``. Only a deadline earlier than the pending call moves the call. So a busy
keep-alive connection costs a float per request, not a scheduled call (nor a heap operation).
"""

#: A call firing this close before the deadline counts as on time (clocks round).
_SLACK = 0.001


class LazyDeadline:
    """Run ``expired()`` once ``set``'s deadline passes, unless cleared or moved meanwhile.

    Clearing is ``deadline = None`` (no deadline for now; the pending call, if any, will find
    none and end): a store rather than a call, as it happens on every request.
    """

    __slots__ = ("clock", "expired", "deadline", "_call", "_due")

    def __init__(self, clock, expired):
        self.clock = clock
        self.expired = expired
        self.deadline = None  # clock time, or None: no deadline now
        self._call = None
        self._due = 0.0  # when the pending call fires

    def set(self, seconds):
        """The deadline is ``seconds`` from now (nothing once stopped)."""
        if self.expired is None:
            return
        deadline = self.clock.seconds() + seconds
        self.deadline = deadline
        if self._call is None:
            self._call = self.clock.callLater(seconds, self._fired)
            self._due = deadline
        elif self._due > deadline:
            self._call.reset(seconds)
            self._due = deadline

    def stop(self):
        """No deadline, no pending call, no reference to the owner (``expired`` is usually its
        bound method: a cycle that would keep a closed connection for the garbage collector):
        the owner is gone."""
        self.deadline = None
        self.expired = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fired(self):
        self._call = None
        deadline = self.deadline
        if deadline is None:
            return
        remaining = deadline - self.clock.seconds()
        if remaining > _SLACK:
            self._call = self.clock.callLater(remaining, self._fired)
            self._due = deadline
            return
        self.deadline = None
        self.expired()
