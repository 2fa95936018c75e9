"""Balance of the accepts of workers sharing listening sockets: the I/O side.

Strategy: :class:`proxyd.workerpolicy.AcceptShare` decides; this module gives it its inputs and
carries its answers out. Inputs: this worker's open connections and those of its peers (the
other workers of the current generation that accept; the supervisor names their seats with a
``peers`` command) read from the per-seat totals of the shared connection table, after every
connection this worker opens or closes, and while paused at polls, with whether a connection
waits in a listening socket's backlog (``select`` with no timeout): every ``POLL`` seconds while
one does, backing off to ``MAX_POLL`` while none does (a worker may stay paused for hours when
long-lived connections are unevenly spread; nothing is waiting for it meanwhile). Answers: stop
reading on every listening port (``stopReading``: the socket stays open and its backlog keeps
filling, so nothing is refused; the peers take what arrives) or read again. Each port accepts
one connection per event (:func:`proxyd.net.twistedshim.one_accept_per_event`), so a burst is
shared as it arrives rather than taken whole by the first worker to wake up.

Without peers (one worker left, or none named yet) nothing pauses; :meth:`AcceptBalance.stop`
(retire, stop) ends the polling and never reads again, leaving the ports to the service.
"""

import select

from twisted.logger import Logger

from proxyd.net.twistedshim import one_accept_per_event
from proxyd.workerpolicy import PAUSE, RESUME, AcceptShare

log = Logger(namespace="proxyd.worker")

#: Seconds between two looks at the counts while paused.
POLL = 0.005
#: The longest wait between two looks while no connection waits in the backlog.
MAX_POLL = 0.1


class AcceptBalance:
    """The accept balance of one worker (seat ``seat`` of the shared connection ``table``)."""

    def __init__(self, reactor, table, seat, share=None):
        self.reactor = reactor
        self.table = table
        self.seat = seat
        self.share = AcceptShare() if share is None else share
        self.ports = []
        self.peers = ()
        self.stopped = False
        self._poll = None
        self._interval = POLL

    @property
    def paused(self):
        """True while this worker does not accept."""
        return self.share.paused_since is not None

    def add_port(self, port):
        """Balance the accepts of listening ``port`` too."""
        one_accept_per_event(port)
        self.ports.append(port)
        if self.paused:
            port.stopReading()

    def set_peers(self, seats):
        """The seats of the accepting workers (the supervisor's ``peers`` command; this one's
        own seat among them is ignored)."""
        if self.stopped:
            return
        peers = tuple(seat for seat in seats if seat != self.seat)
        if peers != self.peers:
            log.info("accepts balanced with {n} other worker(s)", n=len(peers))
        self.peers = peers
        self.changed()

    def changed(self):
        """This worker's connection count changed (or its peers did): decide again."""
        if not self.stopped:
            self._apply(self.share.decide(self._own(), self._peer_counts(),
                                          self.reactor.seconds()))

    def stop(self):
        """Balance no more (the worker retires or stops); the ports are the service's now."""
        self.stopped = True
        self._cancel_poll()
        self.ports = []

    def _own(self):
        return self.table.seat_total(self.seat)

    def _peer_counts(self):
        return [self.table.seat_total(seat) for seat in self.peers]

    def _pending(self):
        try:
            readable, _, _ = select.select(self.ports, (), (), 0)
        except (OSError, ValueError):
            return True  # a port closed under us: do not stay paused on its account
        return bool(readable)

    def _apply(self, action):
        if action is PAUSE:
            for port in self.ports:
                port.stopReading()
            self._interval = POLL
            self._poll = self.reactor.callLater(POLL, self._look)
        elif action is RESUME:
            self._cancel_poll()
            for port in self.ports:
                port.startReading()

    def _look(self):
        self._poll = None
        if self.stopped or not self.paused:
            return
        pending = self._pending()
        self._apply(self.share.decide(self._own(), self._peer_counts(), self.reactor.seconds(),
                                      pending=pending))
        if self.paused and self._poll is None:
            self._interval = POLL if pending else min(MAX_POLL, self._interval * 2)
            self._poll = self.reactor.callLater(self._interval, self._look)

    def _cancel_poll(self):
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
