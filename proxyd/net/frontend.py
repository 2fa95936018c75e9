"""Client side of the network layer: one protocol object per client connection, any codec.

Strategy: the codec is picked once — by ALPN on TLS listeners, by sniffing the first bytes on
cleartext ones (HTTP/2 preface, SPDY control frame, else HTTP/1.1; :mod:`proxyd.codec.select`) —
and from then on every client connection is the same loop: bytes -> codec events -> the gate
(:mod:`proxyd.gate`, for request heads; their admission, route and limits are
:mod:`proxyd.net.admission`) -> :class:`proxyd.net.relay.Relay` calls ->
``codec.data_to_send()`` -> transport. A head the gate refuses never gets a relay of its own unless
it needs an answer: HTTP/2 and SPDY streams are reset (PROTOCOL_ERROR), HTTP/1.1 gets the table's
status and the connection closes. The protocol is a push producer for its transport, so a client
that stops reading pauses the backends of its streams instead of growing our buffers. Every timer
it starts is tracked and cancelled when the connection goes.

Upgrades: a stream that became a WebSocket tunnel tells the connection (:meth:`tunnel_opened`):
an HTTP/1.1 codec then carries raw bytes both ways; an HTTP/1.1 request asking for h2c on a
listener that allows it switches the connection to HTTP/2 (:mod:`proxyd.net.upgrades`).
"""

import contextlib

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from proxyd import events as ev
from proxyd import gate
from proxyd.codec.select import choose, family_of, make_codec
from proxyd.errors import OUTCOMES
from proxyd.net.admission import RequestAdmission
from proxyd.net.deadline import LazyDeadline
from proxyd.net.readwatch import ReadWatch
from proxyd.net.twistedshim import at_turn_end, fast_paths, release, reset_connection, \
    unsent_bytes
from proxyd.ratelimit import TokenBucket

log = Logger(namespace="proxyd.frontend")
# Output queued for a client whose socket buffer is already full, beyond which it is dropped.
MAX_UNREAD_OUTPUT = 1024 * 1024
# Stand in read_paused_by while the read rate limit, or a pipelined request, holds the client.
_RATE_LIMITED = "read rate limit"
_PIPELINED = "pipelined request"
# How often a connection that waits to be reset looks whether its earlier bytes went out.
_RESET_POLL = 0.01


# The inputs of a stream after its head, which an unstarted stream must not get.
_REQUEST_INPUTS = frozenset((ev.DataReceived, ev.StreamEnded, ev.TrailersReceived))


def _reset_in(events):
    """The ids of the streams the client reset in ``events`` (empty: none)."""
    reset = ev.StreamReset
    return {event.stream_id for event in events if type(event) is reset}


@implementer(IPushProducer)
class FrontendProtocol(RequestAdmission, Protocol):
    """One client connection."""

    def __init__(self, listener):
        self.listener = listener
        self.clock = listener.clock
        self.balancer = listener.balancer
        self.policy = listener.policy
        self.route_key = (listener.tls, True)  # (TLS listener, X-Forwarded-For trusted)
        self.codec = None
        self.family = None
        self.extended_connect = False  # the HTTP/2 codec advertised RFC 8441's extended CONNECT
        self.scheme = b"https" if listener.tls else b"http"
        self.streams = {}
        self.client_ip = b""
        self.write_paused = False
        self.read_paused_by = set()
        self._sniffed = b""
        # The header or idle timeout (none while streams are open).
        self._timer = LazyDeadline(self.clock, self._timer_expired)
        self._draining = False
        self._lost = False
        self._resetting = False  # a cut response: the reset waits for earlier bytes to go
        self._admitted = False
        self._registered = False
        self._unread = 0
        self.requests = 0
        now = self.clock.seconds()
        limits = listener.rate_limits
        own_read = [TokenBucket(limits.read.rate, limits.read.burst, now)] if limits.read.rate else []
        own_write = [TokenBucket(limits.write.rate, limits.write.burst, now)] if limits.write.rate else []
        self._read_buckets = own_read + listener.worker_read
        self._write_buckets = own_write + listener.worker_write
        self._transport_paused = False
        self._rate_paused = False
        self._acks_held_until = float("-inf")
        self._held_acks = {}
        self._ack_call = None
        self._calls = set()
        self.read_watch = ReadWatch(self.clock, self.streams)
        self._flush_queued = False  # a flush waits for the end of the reactor's turn
        self.batching = 0  # > 0 while a read's events are dispatched: flush once at the end
        self._doomed = ()  # streams the client reset in the batch being dispatched

    # -- Twisted callbacks -----------------------------------------------------------------
    def connectionMade(self):
        peer = self.transport.getPeer()
        self.client_ip = getattr(peer, "host", "").encode()
        if not self.listener.admit(self.client_ip):
            self.transport.abortConnection()
            return
        self._admitted = True
        self.transport.registerProducer(self, True)
        self._registered = True
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)  # small frames must not wait for delayed ACKs
        fast_paths(self.transport)
        self.listener.connections.add(self)
        self._timer.set(self.listener.timeouts.frontend_header)

    def dataReceived(self, data):
        self.listener.bytes_received += len(data)  # metrics
        if self._read_buckets:
            now = self.clock.seconds()
            delay = max(bucket.spend(len(data), now) for bucket in self._read_buckets)
            if delay > 0:
                if self.codec is not None and self.codec.flow_controlled:
                    # HTTP/2, SPDY/3: the client sees flow control (window updates held back
                    # until the bucket refills), not a stalled socket.
                    self._acks_held_until = max(self._acks_held_until, now + delay)
                elif _RATE_LIMITED not in self.read_paused_by:
                    self.pause_reading(_RATE_LIMITED)
                    self.later(delay, self.resume_reading, _RATE_LIMITED)
        codec = self.codec
        if codec is None:
            codec = self._choose_codec(data)
            if codec is None:
                return
            data, self._sniffed = self._sniffed, b""
        self._receive(data)

    def _receive(self, data):
        """Feed the codec and dispatch its events as one batch, then write once.

        A stream the client opens and resets in the same read (HTTP/2, SPDY) passes the gate and
        is logged, but never starts: no backend sees a request that was cancelled before proxyd
        acted on it (rapid reset sends exactly that, CVE-2023-44487)."""
        codec = self.codec
        self.batching += 1
        try:
            if self.family is gate.HTTP1:
                for event in codec.receive_data(data):
                    self._dispatch(event)
                if codec.backlogged:
                    self.pause_reading(_PIPELINED)
            else:
                resets = codec.resets  # counts every StreamReset the codec emits
                events = codec.receive_data(data)
                if codec.resets != resets:
                    self._dispatch_doomed(events, _reset_in(events))
                else:
                    for event in events:
                        self._dispatch(event)
        finally:
            self.batching -= 1
        self.flush()

    def _dispatch_doomed(self, events, doomed):
        """Dispatch a batch in which the client reset the streams ``doomed``: those opened in
        this batch stay unstarted (their body is acknowledged, not forwarded) until their
        reset ends them."""
        self._doomed = doomed
        try:
            for event in events:
                if type(event) in _REQUEST_INPUTS and event.stream_id in doomed:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None and stream.idle:
                        if type(event) is ev.DataReceived:
                            self.acknowledge(event.stream_id, event.flow_length)
                        continue
                self._dispatch(event)
        finally:
            self._doomed = ()

    def connectionLost(self, reason=None):
        self._lost = True
        if self._admitted:
            self._admitted = False
            self.listener.release(self.client_ip)
        self.listener.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.abort()
        self.streams.clear()
        self.read_watch.stop()
        self._timer.stop()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        calls, self._calls = self._calls, set()
        for call in calls:
            if call.active():
                call.cancel()
        if self.codec is not None:
            self.codec.release()
        release(self.transport)

    @property
    def rate_paused(self):
        """True while the connection's write limit (``rate_limits.write``, ``worker_write``)
        holds its output back."""
        return self._rate_paused

    def later(self, delay, fn, *args):
        """``clock.callLater`` whose call dies with this connection (every timer has an owner)."""
        def run():
            nonlocal call
            # Forget the fired call: it holds this closure, a reference cycle that would keep
            # the connection for the garbage collector once it is lost.
            self._calls.discard(call)
            call = None
            self._run_timed(fn, *args)
        call = self.clock.callLater(delay, run)
        self._calls.add(call)
        return call

    def _run_timed(self, fn, *args):
        """Run one of the connection's timed calls. An exception (a bug) aborts the connection,
        as it would in a read: the reactor only logs it, and the connection could then wait for
        ever (no answer, no timeout left)."""
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the connection ends rather than hangs
            self.listener.internal_errors += 1
            log.failure("{ip}: a timed call failed; closing", ip=self.client_ip.decode())
            self.transport.abortConnection()

    # -- codec selection -------------------------------------------------------------------
    def _choose_codec(self, data):
        listener = self.listener
        self._sniffed += data
        name = choose(listener.protocols, listener.tls,
                      getattr(self.transport, "negotiatedProtocol", None), self._sniffed)
        if name is None:
            return None
        scheme = b"https" if listener.tls else b"http"
        codec = make_codec(name, listener.limits, scheme, sniffed=not listener.tls,
                           connect_protocol=listener.connect_protocol) if name else None
        if codec is None:
            if listener.client_line_due():
                log.info("{ip}: no acceptable protocol; closing", ip=self.client_ip.decode())
            self.transport.abortConnection()
            return None
        self.codec = codec
        self.family = family_of(codec.protocol)
        self.extended_connect = getattr(codec, "enable_connect_protocol", False)
        codec.initiate()
        if self._draining:
            codec.goaway()
        return codec

    # -- events ----------------------------------------------------------------------------
    def _dispatch(self, event):
        kind = type(event)
        if kind is ev.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_request_data(event.data, event.flow_length)
            else:
                self.acknowledge(event.stream_id, event.flow_length)
        elif kind is ev.RequestReceived:
            self._on_request(event)
        elif kind is ev.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_request_end()
        elif kind is ev.WindowUpdated:
            self._on_window(event.stream_id)
        elif kind is ev.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = event.headers
        elif kind is ev.StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.abort()
        elif kind is ev.StreamRefused:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.refuse(event.reason, event.detail)
        elif kind is ev.ConnectionTerminated:
            if not event.remote:
                if self.listener.client_line_due():
                    log.info("{ip}: {proto} connection error: {reason}",
                             ip=self.client_ip.decode(), proto=self.codec.protocol,
                             reason=event.reason)
                reason = event.reason.split(":", 1)[0]
                if reason in OUTCOMES:  # a codec's framing refusal (HTTP/1.1): count it too
                    self.listener.count_refusal(reason)
            if (not event.remote or event.error_code) and self.family is not gate.HTTP1:
                # The HTTP/2 or SPDY connection failed (ours or the client's error GOAWAY):
                # nothing can be sent on it any more, so its streams end now, and their
                # backend connections are dropped.
                for stream in list(self.streams.values()):
                    stream.abort()

    def _on_window(self, stream_id):
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.on_client_window()
            return
        for stream in list(self.streams.values()):
            stream.on_client_window()

    # -- used by streams -------------------------------------------------------------------
    def tunnel_opened(self, stream):
        """``stream`` became a tunnel (its switching head is queued). HTTP/1.1: the codec passes
        raw bytes from now on; reading resumes (the held bytes come out first)."""
        if self.family is gate.HTTP1:
            self.codec.open_tunnel(stream.stream_id)
            self.later(0, self._poll_next)

    def acknowledge(self, stream_id, n):
        """Reopen the client's windows for ``n`` consumed bytes, unless the read limit holds them."""
        if not n:
            return
        now = self.clock.seconds()
        if now < self._acks_held_until:
            held = self._held_acks
            held[stream_id] = held.get(stream_id, 0) + n
            if self._ack_call is None:
                self._ack_call = self.clock.callLater(self._acks_held_until - now,
                                                      self._release_acks)
            return
        self.codec.acknowledge(stream_id, n)

    def _release_acks(self):
        self._ack_call = None
        now = self.clock.seconds()
        if now < self._acks_held_until:
            self._ack_call = self.clock.callLater(self._acks_held_until - now, self._release_acks)
            return
        held, self._held_acks = self._held_acks, {}
        if self._lost:
            return
        for stream_id, n in held.items():
            self.codec.acknowledge(stream_id, n)
        self.flush()

    def flush(self):
        """Write what the codec queued; close when it asks to."""
        codec = self.codec
        data = codec.data_to_send()
        if data:
            self.listener.bytes_sent += len(data)  # metrics
            if self._transport_paused:
                # The client does not read: only control frames and heads get here (bodies wait in
                # the streams), and those are bounded too, against PING/SETTINGS floods.
                self._unread += len(data)
                if self._unread > MAX_UNREAD_OUTPUT:
                    self.listener.metrics_flood_closed += 1
                    if self.listener.client_line_due():
                        log.warn("{ip}: client does not read its {n} queued bytes; closing",
                                 ip=self.client_ip.decode(), n=self._unread)
                    self.transport.abortConnection()
                    return
            self.transport.write(data)
            if self._write_buckets:
                now = self.clock.seconds()
                delay = max(bucket.spend(len(data), now) for bucket in self._write_buckets)
                if delay > 0 and not self._rate_paused:
                    # Over the write rate: streams hold their bytes (and pause their backends)
                    # exactly as if the client had stopped reading, until tokens refill.
                    self._rate_paused = self.write_paused = True
                    self.later(delay, self._rate_refilled)
        if codec.wants_close and not self.streams_pending():
            self._close()

    def flush_later(self):
        """Flush once the reactor's turn is over (:func:`proxyd.net.twistedshim.at_turn_end`:
        the responses of every backend read in the same poll go out in one write), or now on a
        reactor without that queue; not while a batch is being dispatched (it flushes when it
        ends)."""
        if self.batching or self._lost or self._flush_queued:
            return
        if at_turn_end(self.clock, self._turn_flush):
            self._flush_queued = True
        else:
            self.flush()

    def _turn_flush(self):
        self._flush_queued = False
        if self._lost:
            return
        try:
            self.flush()
        except Exception:
            # Raised inside a read, this would have dropped the connection (Twisted's handler);
            # here too, so that no stream waits for output that will never be written.
            log.failure("flushing to {ip}", ip=self.client_ip.decode())
            self.transport.abortConnection()

    def _rate_refilled(self):
        self._rate_paused = False
        if not self._transport_paused and self.transport.connected:
            self.write_paused = False
            self._drain_all()

    def _close(self):
        """Flush and close; TLS only sends close_notify once no producer is registered. An
        HTTP/1.1 response cut short is not closed but reset (no FIN, no close_notify)."""
        if self.family is gate.HTTP1 and self.codec.wants_abort:
            if not self._resetting:
                self._resetting = True
                self.transport.pauseProducing()  # read nothing more
                self._reset_when_sent(0.0)
            return
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _reset_when_sent(self, waited):
        """Reset once the bytes written before the cut reached the client (earlier pipelined
        responses are complete: an abort with SO_LINGER 0 would drop what is still queued),
        or after the idle timeout."""
        if self._lost or not self.transport.connected:
            return
        if unsent_bytes(self.transport) and waited < self.listener.timeouts.frontend_idle:
            self.later(_RESET_POLL, self._reset_when_sent, waited + _RESET_POLL)
            return
        reset_connection(self.transport)

    def streams_pending(self):
        """True while some stream still has response bytes to deliver."""
        return any(s.holding for s in self.streams.values())

    def stream_done(self, stream):
        """A stream finished (or failed or was reset): log it and forget it."""
        self.streams.pop(stream.stream_id, None)
        self.read_paused_by.discard(stream)
        self.listener.log_access(self, stream)
        if self._lost:
            return
        if self.family is gate.HTTP1:
            # HTTP/1.1: the next pipelined request may be waiting in the codec.
            self.later(0, self._poll_next)
        if not self.streams:
            if self._draining and self.codec is not None:
                self.codec.goaway()
                self.codec.wants_close = True
                self.flush()
            self._timer.set(self.listener.timeouts.frontend_idle)

    def _poll_next(self):
        if self.codec is not None and self.transport.connected:
            self._receive(b"")
            if not getattr(self.codec, "backlogged", False):
                self.resume_reading(_PIPELINED)

    def pause_reading(self, stream):
        """Stop reading from the client (protocols without flow control) until ``stream`` resumes."""
        if not self.read_paused_by:
            self.transport.pauseProducing()
        self.read_paused_by.add(stream)

    def resume_reading(self, stream):
        """``stream`` no longer needs the client paused."""
        if stream in self.read_paused_by:
            self.read_paused_by.discard(stream)
            if not self.read_paused_by:
                self._resume_transport()

    def _resume_transport(self):
        if not self.read_paused_by:
            self.transport.resumeProducing()

    # -- IPushProducer: the client's socket buffer -----------------------------------------
    def pauseProducing(self):
        self._transport_paused = self.write_paused = True

    def resumeProducing(self):
        self._transport_paused = False
        self._unread = 0
        if not self._rate_paused:
            self.write_paused = False
            self._drain_all()

    def _drain_all(self):
        for stream in list(self.streams.values()):
            if stream.holding:
                stream.on_client_window()
                if self.write_paused:
                    break
        self.flush_later()

    def stopProducing(self):
        """Nothing to stop here: connectionLost does the cleanup."""

    # -- timers and shutdown ---------------------------------------------------------------
    def _timer_expired(self):
        self._run_timed(self._timed_out)

    def _timed_out(self):
        if self.streams:
            return
        self.listener.note_timeout("frontend_idle" if self.requests else "frontend_header",
                                   self.client_ip)
        if self.codec is not None:
            self.codec.goaway()
            data = self.codec.data_to_send()
            if data:
                self.transport.write(data)
        self._close()

    def shutdown(self):
        """Graceful shutdown: GOAWAY now, close once the streams in flight finished."""
        self._draining = True
        if self.codec is None:
            self._close()
            return
        self.codec.goaway()
        if not self.streams:
            self.codec.wants_close = True
        self.flush()
