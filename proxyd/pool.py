"""Bookkeeping of the connection pools of one backend: pure decisions, no I/O.

Strategy: the network layer asks what to do and carries it out; both pools answer with the same
decisions (USE, CONNECT, WAIT, FULL). :class:`PoolState` is the HTTP/1.1 pool (one exchange per
connection): idle connections are reused last-in-first-out (the warmest socket first, the coldest
expire); ``total`` counts open and connecting connections against ``max_connections``; requests
beyond that wait in a bounded FIFO, and a full queue is refused (503) rather than grown.
:class:`StreamPoolState` is the HTTP/2 pool (many streams per connection, retirement after GOAWAY
or too many resets).
"""

import contextlib
from collections import deque

USE = "use"          # an idle connection is handed out
CONNECT = "connect"  # the caller must open a new connection
WAIT = "wait"        # queued until a connection is released
FULL = "full"        # the queue is full: refuse the request


class PoolState:
    """Idle connections, connection count and waiting requests of one backend."""

    __slots__ = ("max_connections", "max_pending", "idle", "total", "waiting")

    def __init__(self, max_connections, max_pending):
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.idle = []
        self.total = 0
        self.waiting = deque()

    def acquire(self, waiter):
        """Decide how ``waiter`` gets a connection: ``(USE, conn)``, ``(CONNECT, None)`` ..."""
        if self.idle:
            return USE, self.idle.pop()
        if self.total < self.max_connections:
            self.total += 1
            return CONNECT, None
        if len(self.waiting) < self.max_pending:
            self.waiting.append(waiter)
            return WAIT, None
        return FULL, None

    def release(self, conn):
        """A connection finished an exchange and may be reused; return a waiter to hand it to."""
        if self.waiting:
            return self.waiting.popleft()
        self.idle.append(conn)
        return None

    def withdraw(self, conn):
        """An idle connection is being closed: it is handed out no more (it counts in ``total``
        until :meth:`discard`, when it is lost)."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def discard(self, conn=None):
        """A connection closed or failed to connect; return a waiter that needs a new connection.

        The returned waiter already counts against ``total``: the caller connects for it.
        """
        self.total -= 1
        if conn is not None:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
        if self.waiting and self.total < self.max_connections:
            self.total += 1
            return self.waiting.popleft()
        return None

    def cancel(self, waiter):
        """A waiting request went away (client reset or timeout)."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(waiter)

    def has_capacity(self):
        """True when a request would not have to wait."""
        return bool(self.idle) or self.total < self.max_connections


class StreamPoolState:
    """Bookkeeping of a multiplexed (HTTP/2) backend: connections carrying many streams each.

    The decisions have the same shape as :class:`PoolState`'s: :meth:`acquire` answers ``(USE,
    conn)``, ``(CONNECT, None)`` (queued; the caller opens a connection), ``(WAIT, None)`` (queued;
    a connection is already being opened, or none may be) or ``(FULL, None)``. A connection takes
    streams while ``capacity(conn) > 0`` (a callable: the peer's SETTINGS and the streams in
    flight are the network layer's facts). Connections that got or sent GOAWAY, or sent their
    budget of resets while another could take over (:meth:`may_retire`), are *retired*: they
    finish their streams and take no new ones. At most one connection is opened at a time,
    and only while requests wait and fewer than ``max_connections`` exist.
    """

    __slots__ = ("max_connections", "max_pending", "capacity", "streams", "connections",
                 "retired", "connecting", "waiting")

    def __init__(self, max_connections, max_pending, capacity, streams=lambda conn: 0):
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.capacity = capacity
        self.streams = streams
        self.connections = []  # accepting new streams, oldest first
        self.retired = set()  # draining: after GOAWAY, or spent (resets)
        self.connecting = 0
        self.waiting = deque()

    @property
    def total(self):
        """Connections open or being opened."""
        return len(self.connections) + len(self.retired) + self.connecting

    @property
    def idle(self):
        """Accepting connections that carry no stream."""
        return [c for c in self.connections if not self.streams(c)]

    def _should_connect(self):
        if self.waiting and self.connecting == 0 and self.total < self.max_connections:
            self.connecting += 1
            return True
        return False

    def acquire(self, waiter):
        """A connection with room now, or queue ``waiter`` (see the class docstring).

        While requests wait no connection has room (every stream that ends, and every SETTINGS
        that raises a limit, hands its room to the queue through :meth:`serve`), so a new request
        queues behind them without asking each connection: with thousands waiting on a dozen
        full connections, asking cost more than the rest of the pool's work per request.
        """
        if not self.waiting:
            for conn in self.connections:
                if self.capacity(conn) > 0:
                    return USE, conn
        if len(self.waiting) >= self.max_pending:
            return FULL, None
        self.waiting.append(waiter)
        return (CONNECT if self._should_connect() else WAIT), None

    def connected(self, conn):
        """A connection is ready for streams (it was being opened)."""
        self.connecting -= 1
        self.connections.append(conn)

    def serve(self, conn):
        """The waiters ``conn`` takes now (oldest first), and whether to open another connection.

        ``capacity(conn)`` must go down by one per waiter handed out: the caller reserves a
        stream for each before the next call of ``capacity``; this returns them one at a time.
        """
        if conn in self.connections and self.waiting and self.capacity(conn) > 0:
            return self.waiting.popleft()
        return None

    def connect_more(self):
        """True (and counted) when requests still wait and another connection may be opened."""
        return self._should_connect()

    def connect_failed(self):
        """Opening a connection failed: every waiter is answered (returned), none stays queued."""
        self.connecting -= 1
        waiting, self.waiting = self.waiting, deque()
        return list(waiting)

    def retire(self, conn):
        """``conn`` takes no new streams (GOAWAY sent or received, or its resets spent); True:
        open another."""
        if conn in self.connections:
            self.connections.remove(conn)
            self.retired.add(conn)
        return self._should_connect()

    def may_retire(self, conn, has_streams):
        """True when ``conn``, accepting streams, could retire without leaving new requests
        nowhere to go: it carries no stream (it closes, a fresh connection takes its place),
        another connection accepts streams, or one more may be opened. (A connection that must
        retire, after GOAWAY, retires anyway: :meth:`retire`.)"""
        return conn in self.connections and (
            not has_streams or len(self.connections) > 1 or self.total < self.max_connections)

    def drained(self, conn, has_streams):
        """A stream of ``conn`` ended: True when ``conn`` is retired and now empty (close it)."""
        return conn in self.retired and not has_streams

    def lost(self, conn, was_connecting):
        """``conn`` closed (``was_connecting``: before it was ever ready); True: open another."""
        if conn in self.connections:
            self.connections.remove(conn)
        elif was_connecting:
            self.connecting -= 1
        self.retired.discard(conn)
        return self._should_connect()

    def fail_waiting(self):
        """Every waiter, taken out of the queue (the backend is unusable now)."""
        waiting, self.waiting = self.waiting, deque()
        return list(waiting)

    def cancel(self, waiter):
        """A waiting request went away."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(waiter)

    def has_capacity(self):
        """True when a request would not have to wait."""
        return (any(self.capacity(c) > 0 for c in self.connections)
                or self.total < self.max_connections)


#: Seconds a stream may keep a backend connection (or HTTP/2 stream) while its client takes no
#: byte of the response, once other requests wait for that backend: then the longest-stalled
#: exchanges give theirs up. Without waiters the stall timeout (``timeouts.frontend_idle``)
#: applies alone.
CONTENDED_STALL = 5.0


def stalls_to_end(stalled, now, waiting, grace=CONTENDED_STALL):
    """Which stalled exchanges end so that ``waiting`` requests get their connections.

    ``stalled`` maps an exchange to the time its client last took a response byte. Returns
    ``(ended, next_due)``: up to ``waiting`` exchanges stalled for ``grace`` seconds or more,
    longest first, and when the next of the others would be (None: no other is stalled).
    """
    ended, next_due = [], None
    if waiting <= 0:
        return ended, None
    for key, since in sorted(stalled.items(), key=lambda item: item[1]):
        if since + grace <= now and len(ended) < waiting:
            ended.append(key)
        elif since + grace > now:
            next_due = since + grace
            break
    return ended, next_due
