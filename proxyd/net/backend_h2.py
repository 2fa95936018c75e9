"""HTTP/2 backends (client and bridge modes): streams of all clients multiplexed on few connections.

Strategy: an :class:`H2Backend` keeps a list of :class:`H2BackendConnection` objects and hands each
:class:`proxyd.net.relay.Relay` an :class:`proxyd.net.h2channel.H2Channel` — one HTTP/2 stream
with the same interface as an HTTP/1.1 :class:`proxyd.net.backend.BackendConnection`, so the relay
does not know which protocol the backend speaks. A connection takes streams up to the backend's
SETTINGS_MAX_CONCURRENT_STREAMS (capped at ``MAX_STREAMS_PER_CONNECTION``); when every connection
is full another is opened, up to ``max_connections``; beyond that requests wait in a bounded
queue.

Backpressure: response bytes are acknowledged (WINDOW_UPDATE to the backend) only once the relay
passed them on — a paused channel stops acknowledging, so the backend's own flow control holds it
back (its stream window; the connection window is sized never to bind first, see
:mod:`proxyd.codec.h2client`, so one client that stops reading holds back none of the other
clients' streams on the connection); request bytes are sent only as far as the backend's windows
allow, the rest waits in the channel (bounded by the client's window, which the relay reopens
only when the channel is not blocked).

Failures: REFUSED_STREAM and streams above the last stream id of a GOAWAY the backend sent (not
the one proxyd sends when the backend breaks HTTP/2 framing) are marked ``unprocessed``
and retried by the relay; a lost connection fails its streams (502 before the response, a reset
after); idle connections are PINGed and closed when a PING goes unanswered.

Resets: every stream proxyd cancels (its client reset it or went away, the stall relief took it)
is a RST_STREAM on the shared connection, and servers bound the resets a connection receives
(CVE-2023-44487; nghttpd answers GOAWAY after a burst of 1000 and closes the connection, with
the other clients' streams in flight on it). Clients that each stay within proxyd's own bounds
could together spend that budget, so a connection that sent ``MAX_RESETS_SENT`` resets
(:mod:`proxyd.codec.h2client`) retires as after a graceful GOAWAY: its streams finish, a fresh
connection takes the new ones, and it closes once empty. It retires only when it carries no
stream or another connection can take the new ones
(:meth:`proxyd.pool.StreamPoolState.may_retire`), so that ``max_connections`` retired
connections held open by long streams never stop new requests; otherwise it serves on and asks
again at its next reset.
"""

import contextlib

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from proxyd import events as ev
from proxyd.net.stallrelief import StallRelief
from proxyd.codec import CANCEL, REFUSED_STREAM
from proxyd.codec.h2client import MAX_STREAMS, H2ClientCodec
from proxyd.errors import Refused
from proxyd.net.backend import CLOSE_TIMEOUT, ConnectionFactory
from proxyd.net.h2channel import H2Channel
from proxyd.net.twistedshim import at_turn_end, fast_paths, release
from proxyd.pool import CONNECT, FULL, USE, StreamPoolState

log = Logger(namespace="proxyd.backend.h2")
MAX_STREAMS_PER_CONNECTION = MAX_STREAMS  # bounds what one connection may hold (h2client)
PING_INTERVAL = 15.0
IDLE_TIMEOUT = 60.0


@implementer(IPushProducer, IHandshakeListener)
class H2BackendConnection(Protocol):
    """One HTTP/2 connection to a backend, carrying many channels."""

    def __init__(self, backend):
        self.backend = backend
        self.codec = H2ClientCodec(max_header_list_size=backend.max_header_list_size)
        self.channels = {}
        self.reserved = 0
        self.streams_started = 0
        self.write_blocked = False
        self.connected = False
        self.checked_alpn = not backend.tls
        self._ping_call = None
        self._handshake_call = None
        self._close_call = None  # the abort of a close that did not complete in CLOSE_TIMEOUT
        self._idle_since = None
        self._touched = set()
        self._flush_queued = False  # a flush waits for the end of the reactor's turn
        self.handshake_finished = not backend.tls
        self.lost_counted = False
        self.waiting_settings = []  # (channel, request): tunnels waiting for the first SETTINGS

    # -- capacity --------------------------------------------------------------------------
    def capacity(self):
        """How many more streams this connection may take now."""
        if not self.connected or not self.checked_alpn or not self.codec.accepting:
            return 0
        limit = min(self.codec.max_concurrent_streams, MAX_STREAMS_PER_CONNECTION)
        return limit - len(self.channels) - self.reserved

    def reserve(self):
        """A channel for one more stream (counted until it starts or is released)."""
        self.reserved += 1
        self._idle_since = None
        return H2Channel(self)

    # -- Twisted callbacks -----------------------------------------------------------------
    def connectionMade(self):
        self.connected = True
        self.transport.registerProducer(self, True)
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)
        fast_paths(self.transport)  # whole TLS reads: nginx's 8 KiB DATA frames, one event
        self.codec.initiate()
        self.flush()
        clock = self.backend.reactor
        self._ping_call = clock.callLater(PING_INTERVAL, self._ping)
        if not self.checked_alpn:
            self._handshake_call = clock.callLater(self.backend.connect_timeout, self._no_handshake)

    def _no_handshake(self):
        self._handshake_call = None
        if self.connected and not self.checked_alpn:
            self.backend.note_failure(
                f"backend {self.backend.config.address}: no TLS handshake within "
                f"{self.backend.connect_timeout}s (is it speaking TLS?)")
            self.transport.abortConnection()

    def handshakeCompleted(self):
        """TLS is up (IHandshakeListener): h2 must have been selected by ALPN."""
        self.checked_alpn = True
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        if getattr(self.transport, "negotiatedProtocol", None) != b"h2":
            self.backend.note_failure(f"backend {self.backend.config.address} did not select "
                                      "h2 by ALPN")
            self.transport.abortConnection()
            return
        self.handshake_finished = True
        self.backend.handshake_done(self)

    def dataReceived(self, data):
        touched = self._touched
        events = self.codec.receive_data(data)
        count = len(events)
        i = 0
        while i < count:
            event = events[i]
            if type(event) is ev.ResponseReceived and i + 1 < count:
                taken = self._whole(events, i)
                if taken:
                    i += taken
                    continue
            self._dispatch(event)
            i += 1
        self.flush()
        # The relays queued into their clients' codecs; one write per client per backend read.
        while touched:
            frontend = touched.pop()
            frontend.flush_later()

    def _whole(self, events, i):
        """Events ``i``... that are one stream's whole response (its head, at most one piece of
        body, its end: a small response in one read) go to the relay as one input, as from an
        HTTP/1.1 backend (one step of the stream's machine instead of three). The stream leaves
        the connection's table first, as on its end; its body is acknowledged (the stream is
        over, as :meth:`H2Channel.return_window` does then). Returns how many events it took,
        0 when they are not such a run."""
        head = events[i]
        sid = head.stream_id
        following = events[i + 1]
        if following.stream_id != sid:
            return 0
        if type(following) is ev.StreamEnded:
            data, flow, taken = b"", 0, 2
        elif (type(following) is ev.DataReceived and i + 2 < len(events)
              and type(events[i + 2]) is ev.StreamEnded and events[i + 2].stream_id == sid):
            data, flow, taken = following.data, following.flow_length, 3
        else:
            return 0
        channel = self.channels.get(sid)
        if channel is None or channel.stream is None:
            return 0
        stream = channel.stream
        self._touched.add(stream.frontend)
        channel.got_response_bytes = True
        del self.channels[sid]
        channel.return_window()
        stream.on_whole_response(head.status, head.headers, data)
        if flow:
            self.codec.acknowledge(sid, flow)
        self.backend.slot_freed(self)
        return taken

    def _dispatch(self, event):
        kind = type(event)
        channel = self.channels.get(event.stream_id)
        if channel is not None and channel.stream is not None:
            self._touched.add(channel.stream.frontend)
        if kind is ev.DataReceived:
            if channel is not None:
                channel.deliver(event.data, event.flow_length)
            else:
                self.codec.acknowledge(event.stream_id, event.flow_length)
        elif kind is ev.ResponseReceived:
            if channel is not None and channel.stream is not None:
                channel.got_response_bytes = True
                channel.stream.on_response(event.status, event.headers)
        elif kind is ev.StreamEnded:
            if channel is not None:
                del self.channels[event.stream_id]
                channel.return_window()
                if channel.stream is not None:
                    channel.stream.on_response_end()
                self.backend.slot_freed(self)
        elif kind is ev.TrailersReceived:
            if channel is not None and channel.stream is not None:
                channel.stream.on_response_trailers(event.headers)
        elif kind is ev.InformationalResponse:
            if channel is not None and channel.stream is not None:
                channel.stream.on_informational(event.status, event.headers)
        elif kind is ev.TunnelOpened:
            if channel is not None and channel.stream is not None:
                channel.got_response_bytes = True
                channel.stream.on_switched(event.status, event.headers)
        elif kind is ev.WindowUpdated:
            if event.stream_id:
                if channel is not None:
                    self._resume_body(channel)
            else:
                for each in list(self.channels.values()):
                    self._resume_body(each)
        elif kind is ev.StreamReset:
            if channel is not None:
                del self.channels[event.stream_id]
                # Bytes held for a paused client will never be acknowledged now: give the
                # connection window back, or every reset would shrink it for good.
                channel.return_window()
                if event.reason:  # our codec refused what the backend sent on this stream
                    if channel.stream is not None:
                        channel.stream.on_invalid(event.reason, event.detail)
                else:
                    channel.unprocessed = event.error_code == REFUSED_STREAM
                    if channel.stream is not None:
                        channel.stream.backend_lost(
                            channel, f"backend reset stream (code {event.error_code})")
                if not event.remote and self.codec.spent:  # our RST_STREAM counts too
                    self.backend.spent(self)
                self.backend.slot_freed(self)
        elif kind is ev.SettingsChanged:
            self._start_waiting()
            self.backend.slot_freed(self)
        elif kind is ev.ConnectionTerminated:
            self._on_goaway(event)

    def _start_waiting(self):
        """The backend's SETTINGS came: start the WebSocket handshakes that waited for them."""
        waiting, self.waiting_settings = self.waiting_settings, []
        for channel, request in waiting:
            stream = channel.stream
            if stream is None:
                continue  # the client went away meanwhile (abort freed the slot)
            self._touched.add(stream.frontend)
            try:
                channel.start(stream, request)
            except Refused as refused:
                stream.on_invalid(refused.reason, refused.detail)

    def _resume_body(self, channel, was_blocked=False):
        was_blocked = was_blocked or bool(channel.queued)
        channel.flush_body()
        if was_blocked and not channel.write_blocked and channel.stream is not None:
            channel.stream.backend_write_resumed()

    def _on_goaway(self, event):
        # RFC 9113 §6.8: only a GOAWAY the backend sent says which streams it did not process.
        # When our codec ends the connection (the backend broke HTTP/2's framing), any stream in
        # flight may have been processed: none is marked unprocessed (no replay of a POST).
        remote = event.remote
        last = event.last_stream_id if remote else 0
        if remote:
            log.info("backend {addr} sent GOAWAY (last stream {last}, code {code})",
                     addr=self.backend.config.address, last=last, code=event.error_code)
            why = "stream not processed before GOAWAY"
        else:
            log.info("backend {addr} broke HTTP/2 framing (code {code}); closing",
                     addr=self.backend.config.address, code=event.error_code)
            why = "backend connection error"
        for sid in [s for s in self.channels if s > last]:
            channel = self.channels.pop(sid)
            channel.return_window()
            channel.unprocessed = remote
            if channel.stream is not None:
                channel.stream.backend_lost(channel, why)
        self.backend.retire(self)
        if not self.channels:
            self.lose()

    def cancel(self, stream_id):
        """Reset one of our streams (CANCEL: its client went away, or its exchange ended before
        our half of it); past the connection's budget of resets, it retires
        (:meth:`H2Backend.spent`)."""
        self.codec.reset_stream(stream_id, CANCEL)
        if self.codec.spent:
            self.backend.spent(self)

    def connectionLost(self, reason=None):
        self.connected = False
        for call in (self._ping_call, self._handshake_call, self._close_call):
            if call is not None and call.active():
                call.cancel()
        release(self.transport)
        channels, self.channels = self.channels, {}
        cause = _describe(reason)
        if not self.checked_alpn and self.backend._last_failure is None:
            self.backend.note_failure(f"backend {self.backend.config.address}: TLS handshake "
                                      f"failed: {cause}")
        self.backend.lost(self)
        for channel in channels.values():
            if channel.stream is not None:
                channel.stream.backend_lost(channel, f"backend connection lost: {cause}")
        waiting, self.waiting_settings = self.waiting_settings, []
        for channel, _request in waiting:  # never sent: the relay may try again
            if channel.stream is not None:
                channel.unprocessed = True
                channel.stream.backend_lost(channel, f"backend connection lost: {cause}")

    # -- IPushProducer: our writes toward the backend --------------------------------------
    def pauseProducing(self):
        self.write_blocked = True

    def resumeProducing(self):
        self.write_blocked = False
        for channel in list(self.channels.values()):
            self._resume_body(channel, was_blocked=True)

    def stopProducing(self):
        """Nothing to stop here: connectionLost does the cleanup."""

    # -- output, liveness ------------------------------------------------------------------
    def flush(self):
        """Write what the codec queued once the reactor's turn is over (the requests of every
        client read of the same poll go out in one write), or now on a reactor without that
        queue (:func:`proxyd.net.twistedshim.at_turn_end`)."""
        if self._flush_queued:
            return
        if at_turn_end(self.backend.reactor, self._turn_flush):
            self._flush_queued = True
        else:
            self._write_out()

    def flush_now(self):
        """Write what the codec queued at once: for a caller that reads ``write_blocked`` right
        after (a queued flush then finds nothing left)."""
        self._write_out()

    def _turn_flush(self):
        self._flush_queued = False
        try:
            self._write_out()
        except Exception:
            # As if raised in a read: the connection goes (and its streams answer 502).
            log.failure("flushing to backend {addr}", addr=self.backend.config.address)
            self.transport.abortConnection()

    def _write_out(self):
        data = self.codec.data_to_send()
        if data and self.connected:
            self.transport.write(data)
        if self.codec.wants_close and not self.channels and self.connected:
            self.lose()

    def lose(self):
        """Close once what was written went out, after leaving the transport's producer slot:
        Twisted's TLS layer does not close while a producer is registered, and its TCP
        transport, draining the buffer of a backend that pushed back, resumes the producer
        instead of closing (:meth:`proxyd.net.backend.BackendConnection.lose`); aborted when that has not happened
        after ``CLOSE_TIMEOUT`` (a backend that reads nothing more)."""
        with contextlib.suppress(RuntimeError):  # a test transport: none registered any more
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._close_call is None:  # a backend that reads nothing more never lets it finish
            self._close_call = self.backend.reactor.callLater(CLOSE_TIMEOUT, self._close_overdue)

    def _close_overdue(self):
        self._close_call = None
        if self.connected:
            log.info("backend {addr}: closing connection still not drained after {t}s; "
                     "aborting it", addr=self.backend.config.address, t=CLOSE_TIMEOUT)
            self.transport.abortConnection()

    def _ping(self):
        clock = self.backend.reactor
        self._ping_call = None
        if not self.connected:
            return
        if self.codec.pings_outstanding:
            log.warn("backend {addr}: PING unanswered for {t}s; closing the connection",
                     addr=self.backend.config.address, t=PING_INTERVAL)
            self.transport.abortConnection()
            return
        if not self.channels and not self.reserved:
            now = clock.seconds()
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= IDLE_TIMEOUT:
                self.codec.close()
                self.backend.retire(self)
                self.flush()
                return
        self.codec.ping()
        self.flush()
        self._ping_call = clock.callLater(PING_INTERVAL, self._ping)


def _describe(reason):
    """A log-friendly cause for a lost backend connection, naming the TLS check that failed."""
    if reason is None:
        return "connection lost"
    text = reason.getErrorMessage()
    if "DNSMismatch" in text or "IPAddressMismatch" in text or "VerificationError" in text:
        return f"certificate hostname mismatch (service-identity: {text})"
    if "certificate verify failed" in text:
        return f"certificate verify failed (untrusted or expired chain: {text})"
    if "no application protocol" in text:
        return "the backend offers no h2 by ALPN (no application protocol)"
    return text


class H2Backend:
    """One configured HTTP/2 backend: its connections, waiting requests and connector.

    :class:`proxyd.pool.StreamPoolState` decides (which connection takes a stream, when to open
    another, when a retired one closes); this class carries the decisions out.
    """

    def __init__(self, reactor, config, endpoint, *, max_pending, max_header_list_size=65536,
                 connect_timeout=5.0):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.config = config
        self.address = config.address.encode()
        self.tls = config.tls is not None
        self.max_header_list_size = max_header_list_size
        self.max_connections = config.max_connections
        self.max_pending = max_pending
        self._endpoint = endpoint
        self._factory = ConnectionFactory(self, H2BackendConnection)
        self.state = StreamPoolState(config.max_connections, max_pending,
                                     lambda conn: conn.capacity(),
                                     lambda conn: len(conn.channels) + conn.reserved)
        self._last_failure = None
        # Waiters count for the relief only while no connection is on its way (it serves them).
        self.relief = StallRelief(
            reactor, lambda: 0 if self.state.connecting else len(self.state.waiting), self.address)

    # -- what the metrics and the balancer read ---------------------------------------------
    @property
    def connections(self):
        """Connections accepting new streams."""
        return self.state.connections

    @property
    def retired(self):
        """Connections draining after GOAWAY, or after spending their resets."""
        return self.state.retired

    @property
    def waiting(self):
        """Requests waiting for a stream."""
        return self.state.waiting

    @property
    def total(self):
        """Connections open or being opened (for metrics)."""
        return self.state.total

    @property
    def idle(self):
        """Connections without streams (for metrics)."""
        return self.state.idle

    # -- pool --------------------------------------------------------------------------------
    def acquire(self, stream):
        """Give ``stream`` a channel now, or queue it (connecting when allowed), or refuse it."""
        decision, conn = self.state.acquire(stream)
        if decision is USE:
            stream.attach(conn.reserve())
        elif decision is FULL:
            stream.backend_full(self)
        else:
            stream.waiting_on = self
            if decision is CONNECT:
                self._open()
            elif not self.state.connecting:  # no connection on its way: the pool is full
                self.relief.contended()

    def connect_fresh(self, stream):
        """Retry ``stream`` (its previous stream was not processed)."""
        self.acquire(stream)

    def cancel(self, stream):
        """A waiting stream went away."""
        self.state.cancel(stream)

    def _open(self):
        d = self._endpoint.connect(self._factory)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn):
        if conn.checked_alpn:
            self.handshake_done(conn)
        # TLS: still connecting until handshake_done()

    def handshake_done(self, conn):
        """A connection (after TLS: one that selected h2) takes streams from now on."""
        self.state.connected(conn)
        self._serve(conn)

    def _connect_failed(self, failure):
        cause = failure.getErrorMessage()
        for stream in self.state.connect_failed():
            stream.waiting_on = None
            stream.backend_unreachable(self, cause)

    def _serve(self, conn):
        """Hand queued streams to ``conn`` while it has room; open another connection if needed."""
        while True:
            stream = self.state.serve(conn)
            if stream is None:
                break
            stream.waiting_on = None
            stream.attach(conn.reserve())
        if self.state.connect_more():
            self._open()

    def slot_freed(self, conn):
        """A stream of ``conn`` ended (or its SETTINGS changed): serve waiters."""
        if conn in self.state.connections:
            self._serve(conn)
        elif self.state.drained(conn, bool(conn.channels or conn.reserved)) and conn.connected:
            conn.lose()

    def retire(self, conn):
        """``conn`` takes no new streams (GOAWAY sent or received)."""
        if self.state.retire(conn):
            self._open()

    def spent(self, conn):
        """``conn`` sent its budget of resets: it retires (closed at once when it carries no
        stream) unless that would leave new requests waiting behind its streams (see
        :meth:`proxyd.pool.StreamPoolState.may_retire`); then nothing changes and its next
        reset asks again."""
        has_streams = bool(conn.channels or conn.reserved)
        if not self.state.may_retire(conn, has_streams):
            return
        log.info("backend {addr}: {n} streams reset on one connection; new streams go to "
                 "another (the backend bounds the resets it takes)",
                 addr=self.config.address, n=conn.codec.resets_sent)
        self.retire(conn)
        if not has_streams and conn.connected:
            conn.lose()

    def lost(self, conn):
        """``conn`` closed; its streams learn why from the connection itself."""
        was_connecting = not conn.handshake_finished and not conn.lost_counted
        conn.lost_counted = True
        connect = self.state.lost(conn, was_connecting)
        if self._last_failure is not None:
            cause, self._last_failure = self._last_failure, None
            if connect:
                self.state.connecting -= 1  # no new attempt: the backend refused us for a reason
            for stream in self.state.fail_waiting():
                stream.waiting_on = None
                stream.backend_unreachable(self, cause)
        elif connect:
            self._open()

    def note_failure(self, cause):
        """Remember why a connection is being dropped (e.g. ALPN), for its waiting streams."""
        log.error("{cause}", cause=cause)
        self._last_failure = cause

    def release(self, channel):
        """A channel handed out was never used."""
        channel.abort()

    def close_idle(self):
        """Close connections without streams (shutdown)."""
        self.relief.stop()
        for conn in list(self.state.connections) + list(self.state.retired):
            if not conn.channels and conn.connected:
                conn.lose()
