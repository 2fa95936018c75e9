"""Bookkeeping of the keep-alive connection pool of one backend: pure decisions, no I/O.

Strategy: the network layer asks :class:`PoolState` what to do and carries it out. Idle
connections are reused last-in-first-out (the warmest socket first, the coldest expire);
``total`` counts open and connecting connections against ``max_connections``; requests beyond
that wait in a bounded FIFO, and a full queue is refused (503) rather than grown.
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
