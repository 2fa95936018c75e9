"""Backend side of the network layer: keep-alive HTTP/1.1 connections and the pool that owns them.

Strategy: :class:`proxyd.pool.PoolState` decides, this module carries the decisions out with
Twisted endpoints. A :class:`BackendConnection` serves one stream (a
:class:`proxyd.net.relay.Relay`) at a time and hands every response event to it; the stream
machine decides what follows (it releases the connection for reuse, or drops it). The connection
is a push producer for its transport, so a backend that stops reading our request body pauses
the client side (no unbounded write buffer); it stops being one before it closes (or
half-closes) the connection, which Twisted would otherwise never carry out
(:meth:`BackendConnection.lose`). Idle connections expire after ``IDLE_TIMEOUT`` seconds, well
below common backend keep-alive timeouts, so the proxy rarely reuses a socket the backend is
about to close; whether a request that dies on a reused connection is repeated is the
stream machine's rule (:mod:`proxyd.stream`).

A WebSocket handshake that the backend accepts (101) turns the connection into its stream's
tunnel: the codec reports :class:`proxyd.events.TunnelOpened` and passes bytes both ways; the
client's END_STREAM half-closes it (``end_body``), the tunnel's end closes it (``close``); it
never goes back to the pool (the codec is not reusable after an upgrade).
"""

import contextlib

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from proxyd import events as ev
from proxyd.codec.h1client import H1FastClientCodec
from proxyd.errors import Refused
from proxyd.net.backend_tls import client_endpoint
from proxyd.net.deadline import LazyDeadline
from proxyd.net.stallrelief import StallRelief
from proxyd.net.twistedshim import fast_paths, release
from proxyd.pool import CONNECT, FULL, USE, WAIT, PoolState

IDLE_TIMEOUT = 2.0
# How long a connection being closed may take to send what was written to it: a backend that
# reads nothing more (a tunnel's, whose client left) would otherwise keep it open for ever.
CLOSE_TIMEOUT = 10.0
log = Logger(namespace="proxyd.backend")


@implementer(IPushProducer)
class BackendConnection(Protocol):
    """One keep-alive HTTP/1.1 connection to a backend."""

    def __init__(self, backend):
        self.backend = backend
        self.codec = H1FastClientCodec(max_header_list_size=backend.max_header_list_size)
        self.stream = None
        self.reused = False
        self.write_blocked = False
        self.reading_paused = False
        self.got_response_bytes = False
        # Keep-alive expiry while in the pool (its clock is the backend's reactor).
        self.idle = LazyDeadline(backend.reactor, self._idle_expired)
        self.connected = False
        self.exchanging = False  # a request was started since the last release
        self.aborting = False  # aborted, not lost yet: its pool slot goes to a waiter then
        self.producing = False  # registered as the transport's producer
        self.closing = False  # loseConnection was called: aborted after CLOSE_TIMEOUT

    via_version = b"1.1"

    @property
    def unprocessed(self):
        """True while nothing of the request was written: its head is held until content shows
        (:mod:`proxyd.codec.h1client`). Otherwise a request on a live HTTP/1.1 connection may
        always have been processed."""
        return self.codec.holding_head

    # -- Twisted callbacks ------------------------------------------------------------------
    def connectionMade(self):
        self.connected = True
        self.transport.registerProducer(self, True)
        self.producing = True
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)
        fast_paths(self.transport)

    def dataReceived(self, data):
        stream = self.stream
        if stream is None:
            log.info("backend {addr} sent bytes while idle; closing", addr=self.backend.address)
            self.backend.state.withdraw(self)  # lost only in the next iteration: not reused now
            self.abort()
            return
        self.got_response_bytes = True
        frontend = stream.frontend
        frontend.batching += 1
        try:
            self._deliver(stream, data)
        finally:
            frontend.batching -= 1
        # The relay queues into the client's codec; one write per backend read.
        frontend.flush_later()

    def _deliver(self, stream, data):
        try:
            events = self.codec.receive_data(data)
        except Refused as refused:
            stream.on_invalid(refused.reason, refused.detail)
            return
        if len(events) <= 3 and _whole(events):  # a small response in one read: one input
            head = events[0]
            stream.on_whole_response(head.status, head.headers,
                                     events[1].data if len(events) == 3 else b"")
            return
        for event in events:
            kind = type(event)
            if kind is ev.DataReceived:
                stream.on_response_data(event.data)
            elif kind is ev.ResponseReceived:
                stream.on_response(event.status, event.headers)
            elif kind is ev.StreamEnded:
                stream.on_response_end()
            elif kind is ev.TrailersReceived:
                stream.on_response_trailers(event.headers)
            elif kind is ev.InformationalResponse:
                stream.on_informational(event.status, event.headers)
            elif kind is ev.ConnectionTerminated:
                break
            elif kind is ev.TunnelOpened:
                stream.on_switched(event.status, event.headers)
            if self.stream is not stream:
                break

    def connectionLost(self, reason=None):
        self.connected = False
        if self.aborting:
            self.aborting = False
            self.backend.aborting -= 1
        self.idle.stop()
        release(self.transport)
        stream, self.stream = self.stream, None
        self.backend.lost(self)
        if stream is None:
            return
        if not self.codec.response_complete and (reason is None or reason.check(ConnectionDone)):
            # A close-delimited body ends with the connection's clean close; a reset (or any
            # other error) cuts it short: a truncated response, not a complete one.
            try:
                events = self.codec.receive_data(b"")
            except Refused:
                events = []
            if any(type(e) is ev.StreamEnded for e in events):
                self.stream = stream
                stream.on_response_end()
                self.stream = None
                stream.frontend.flush_later()  # no read of the client's follows to flush it
                return
        stream.backend_lost(self, "backend closed the connection")

    # -- IPushProducer: the transport's write buffer toward the backend ----------------------
    def pauseProducing(self):
        self.write_blocked = True

    def resumeProducing(self):
        self.write_blocked = False
        if self.stream is not None:
            self.stream.backend_write_resumed()

    def stopProducing(self):
        """Nothing to stop here: connectionLost does the cleanup."""

    # -- used by the relay -----------------------------------------------------------------
    def start(self, stream, request):
        """Send the head of ``request`` (a :class:`proxyd.bridge.BackendRequest`) for ``stream``.

        Raises ``Refused("unsafe_request")`` (and writes nothing) when the writer refuses it.
        """
        self.cancel_idle()
        self.stream = stream
        self.exchanging = True
        self.got_response_bytes = False
        self.codec.send_request(stream.stream_id, request, self.backend.address)
        self.transport.write(self.codec.data_to_send())

    def send_body(self, data):
        """Forward request body bytes."""
        self.codec.send_data(data)
        self.transport.write(self.codec.data_to_send())

    def end_body(self, trailers=()):
        """End the request body (a tunnel: half-close, the backend may still answer)."""
        self.codec.end_request(trailers)
        self.transport.write(self.codec.data_to_send())
        if self.codec.tunnel:
            # Nothing more will be written: the shutdown must not wait on us as the producer.
            self._stop_producing()
            with contextlib.suppress(AttributeError, NotImplementedError):
                self.transport.loseWriteConnection()

    def close(self):
        """End a tunnel: close once what was written went out (never back to the pool)."""
        self.stream = None
        if self.connected:
            self.lose()

    def pause_reading(self):
        """Stop reading the response (the client cannot take more yet)."""
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pauseProducing()

    def resume_reading(self):
        """Read the response again."""
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resumeProducing()

    def release(self):
        """The exchange is over: back to the pool when both sides finished cleanly (or when it
        never started: a stream that went away while the connection was being made or handed
        over), else close."""
        self.stream = None
        if not self.connected:
            return
        started, self.exchanging = self.exchanging, False
        if not started or self.codec.reusable():
            self.resume_reading()
            self.backend.release(self)
        else:
            self.lose()

    def _stop_producing(self):
        """Stop being the transport's producer (nothing more will be written). A blocked writer
        learns that what it wrote was taken: it is the transport's now, and no more will come."""
        if self.producing:
            self.producing = False
            self.transport.unregisterProducer()
            if self.write_blocked:
                self.write_blocked = False
                if self.stream is not None:
                    self.stream.backend_write_resumed()

    def lose(self):
        """Close once what was written went out. The transport must forget us as its producer
        first: Twisted's TLS layer does not close while a producer is registered, and its TCP
        transport, when the buffer of a backend that pushed back drains, resumes the producer
        instead of closing; either way the connection would stay open for ever, holding its
        pool slot ("make sure you unregister your producer ... or the connection will never
        close": ``FileDescriptor.loseConnection``). A backend that reads nothing more never
        lets the close complete: the connection is aborted after ``CLOSE_TIMEOUT``."""
        self._stop_producing()
        self.closing = True
        self.transport.loseConnection()
        self.idle.set(CLOSE_TIMEOUT)

    def abort(self):
        """Drop the exchange in progress: the connection cannot be reused."""
        self.stream = None
        if self.connected and not self.aborting:
            self.aborting = True
            self.backend.aborting += 1
        self.transport.abortConnection()

    def start_idle_timer(self):
        """Expire this idle connection ``IDLE_TIMEOUT`` after now (lazily: a connection reused
        and released again only moves the deadline; see :mod:`proxyd.net.deadline`)."""
        self.reused = True
        self.idle.set(IDLE_TIMEOUT)

    def _idle_expired(self):
        if not self.connected:
            return
        if self.closing:
            log.info("backend {addr}: closing connection still not drained after {t}s; "
                     "aborting it", addr=self.backend.address, t=CLOSE_TIMEOUT)
            self.abort()
            return
        self.backend.state.withdraw(self)  # closing: no request may be written to it now
        self.lose()

    def cancel_idle(self):
        """The connection is in use again (its pending idle check will find it busy)."""
        self.idle.deadline = None


def _whole(events):
    """True for ``[ResponseReceived, (DataReceived,) StreamEnded]``: a whole response."""
    return (len(events) > 1 and type(events[0]) is ev.ResponseReceived
            and type(events[-1]) is ev.StreamEnded
            and (len(events) == 2 or type(events[1]) is ev.DataReceived))


class ConnectionFactory(Factory):
    """Builds connection protocols (``protocol_class(backend)``) for one backend."""

    noisy = False

    def __init__(self, backend, protocol_class):
        self.backend = backend
        self.protocol_class = protocol_class

    def buildProtocol(self, addr):
        return self.protocol_class(self.backend)


class Backend:
    """One configured backend: its address, pool state and connector."""

    def __init__(self, reactor, config, *, connect_timeout, max_pending, max_header_list_size=65536):
        self.reactor = reactor
        self.config = config
        self.address = config.address.encode()
        self.max_header_list_size = max_header_list_size
        self.state = PoolState(config.max_connections, max_pending)
        self._endpoint = client_endpoint(reactor, config, connect_timeout, protocols=(b"http/1.1",))
        self._factory = ConnectionFactory(self, BackendConnection)
        self.connections = set()
        self.aborting = 0  # connections aborted and not lost yet: each will serve a waiter
        self.relief = StallRelief(
            reactor, lambda: max(0, len(self.state.waiting) - self.aborting), self.address)

    def acquire(self, stream):
        """Give ``stream`` a connection now, later (queued) or refuse it (503)."""
        decision, conn = self.state.acquire(stream)
        if decision is USE:
            conn.cancel_idle()
            stream.attach(conn)
        elif decision is CONNECT:
            self._connect(stream)
        elif decision is WAIT:
            stream.waiting_on = self
            self.relief.contended()
        elif decision is FULL:
            stream.backend_full(self)

    def connect_fresh(self, stream):
        """Open a new connection for ``stream`` beyond the idle ones (a retry), if allowed."""
        if self.state.total < self.state.max_connections:
            self.state.total += 1
            self._connect(stream)
        else:
            self.acquire(stream)

    def _connect(self, stream):
        d = self._endpoint.connect(self._factory)
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(stream,),
                       errbackArgs=(stream,))

    def _connected(self, conn, stream):
        self.connections.add(conn)
        stream.attach(conn)  # a stream that ended meanwhile releases it at once

    def _connect_failed(self, failure, stream):
        waiter = self.state.discard(None)
        if waiter is not None:
            self._connect(waiter)
        stream.backend_unreachable(self, failure.getErrorMessage())

    def cancel(self, stream):
        """A queued stream went away."""
        self.state.cancel(stream)

    def release(self, conn):
        """``conn`` finished an exchange cleanly: reuse it for a waiter or keep it idle."""
        waiter = self.state.release(conn)
        if waiter is not None:
            waiter.waiting_on = None
            conn.reused = True
            waiter.attach(conn)
        else:
            conn.start_idle_timer()

    def lost(self, conn):
        """``conn`` closed; a waiter may need a new connection."""
        self.connections.discard(conn)
        waiter = self.state.discard(conn)
        if waiter is not None:
            waiter.waiting_on = None
            self._connect(waiter)

    def close_idle(self):
        """Close every idle connection (shutdown)."""
        self.relief.stop()
        for conn in list(self.state.idle):
            self.state.withdraw(conn)
            conn.lose()
