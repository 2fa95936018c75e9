"""Backend side of the network layer: keep-alive HTTP/1.1 connections and the pool that owns them.

Strategy: :class:`proxyd.pool.PoolState` decides, this module carries the decisions out with
Twisted endpoints. A :class:`BackendConnection` serves one stream (a
:class:`proxyd.net.relay.Stream`) at a time and hands every response event to it; it is a push
producer for its transport, so a backend that stops reading our request body pauses the client
side (no unbounded write buffer). Idle connections expire after ``IDLE_TIMEOUT`` seconds, well
below common backend keep-alive timeouts, so the proxy rarely reuses a socket the backend is about
to close; a request that dies on a reused connection before any response byte is retried once on a
fresh one.
"""

import contextlib

import h11
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from proxyd import events as ev
from proxyd.codec.h1client import H1FastClientCodec
from proxyd.net.backend_tls import client_endpoint
from proxyd.pool import CONNECT, FULL, USE, WAIT, PoolState

IDLE_TIMEOUT = 2.0
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
        self.idle_timer = None
        self.connected = False

    # An HTTP/1.1 request on a live connection may always have been processed.
    unprocessed = False
    via_version = b"1.1"

    # -- Twisted callbacks ------------------------------------------------------------------
    def connectionMade(self):
        self.connected = True
        self.transport.registerProducer(self, True)
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        stream = self.stream
        if stream is None:
            log.info("backend {addr} sent bytes while idle; closing", addr=self.backend.address)
            self.transport.abortConnection()
            return
        self.got_response_bytes = True
        try:
            events = self.codec.receive_data(data)
        except h11.RemoteProtocolError as exc:
            self._fail_stream(f"invalid response from backend: {exc}")
            return
        for event in events:
            kind = type(event)
            if kind is ev.DataReceived:
                stream.on_response_data(event.data)
            elif kind is ev.ResponseReceived:
                stream.on_response(event.status, event.headers)
            elif kind is ev.StreamEnded:
                self._exchange_done(stream)
            elif kind is ev.TrailersReceived:
                stream.on_response_trailers(event.headers)
            elif kind is ev.InformationalResponse:
                stream.on_informational(event.status, event.headers)
            elif kind is ev.ConnectionTerminated:
                break
            if self.stream is not stream:
                break
        # The relay queues into the client's codec; one write per backend read.
        stream.frontend.flush()

    def connectionLost(self, reason=None):
        self.connected = False
        self._cancel_idle()
        stream, self.stream = self.stream, None
        self.backend.lost(self)
        if stream is not None:
            response_done = self.codec.response_complete
            if not response_done:
                # A close-delimited body ends with the connection.
                try:
                    events = self.codec.receive_data(b"")
                except h11.RemoteProtocolError:
                    events = []
                if any(type(e) is ev.StreamEnded for e in events):
                    stream.on_response_end()
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
        """Send ``request`` (a :class:`proxyd.bridge.BackendRequest`) for ``stream``."""
        self._cancel_idle()
        self.stream = stream
        self.got_response_bytes = False
        self.codec.send_request(stream.stream_id, request.method, request.target,
                                request.headers, end_stream=request.end_stream)
        self.transport.write(self.codec.data_to_send())

    def send_body(self, data):
        """Forward request body bytes."""
        self.codec.send_data(data)
        self.transport.write(self.codec.data_to_send())

    def end_body(self, trailers=()):
        """End the request body."""
        self.codec.end_request(trailers)
        self.transport.write(self.codec.data_to_send())

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

    def abort(self):
        """Drop the exchange in progress: the connection cannot be reused."""
        self.stream = None
        self.transport.abortConnection()

    # -- internals -------------------------------------------------------------------------
    def _exchange_done(self, stream):
        self.stream = None
        stream.on_response_end()
        if self.connected and self.codec.reusable():
            self.resume_reading()
            self.backend.release(self)
        elif self.connected:
            self.transport.loseConnection()

    def _fail_stream(self, cause):
        stream, self.stream = self.stream, None
        self.transport.abortConnection()
        if stream is not None:
            stream.backend_lost(self, cause)

    def start_idle_timer(self, clock):
        """Expire this idle connection after ``IDLE_TIMEOUT``."""
        self.reused = True
        self.idle_timer = clock.callLater(IDLE_TIMEOUT, self._idle_expired)

    def _idle_expired(self):
        self.idle_timer = None
        self.transport.loseConnection()

    def _cancel_idle(self):
        if self.idle_timer is not None:
            if self.idle_timer.active():
                self.idle_timer.cancel()
            self.idle_timer = None


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

    def acquire(self, stream):
        """Give ``stream`` a connection now, later (queued) or refuse it (503)."""
        decision, conn = self.state.acquire(stream)
        if decision is USE:
            conn._cancel_idle()
            stream.attach(conn)
        elif decision is CONNECT:
            self._connect(stream)
        elif decision is WAIT:
            stream.waiting_on = self
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
        if stream.closed:
            self.release(conn)
        else:
            stream.attach(conn)

    def _connect_failed(self, failure, stream):
        waiter = self.state.discard(None)
        if waiter is not None:
            self._connect(waiter)
        stream.backend_unreachable(self, failure.getErrorMessage())

    def release(self, conn):
        """``conn`` finished an exchange cleanly: reuse it for a waiter or keep it idle."""
        waiter = self.state.release(conn)
        if waiter is not None:
            waiter.waiting_on = None
            conn.reused = True
            waiter.attach(conn)
        else:
            conn.start_idle_timer(self.reactor)

    def lost(self, conn):
        """``conn`` closed; a waiter may need a new connection."""
        self.connections.discard(conn)
        waiter = self.state.discard(conn)
        if waiter is not None:
            waiter.waiting_on = None
            self._connect(waiter)

    def close_idle(self):
        """Close every idle connection (shutdown)."""
        for conn in list(self.state.idle):
            conn.transport.loseConnection()
