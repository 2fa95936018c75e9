"""One client stream relayed to one backend HTTP/1.1 exchange, with backpressure both ways.

Strategy: a :class:`Stream` sits between the frontend codec (any protocol) and a
:class:`proxyd.net.backend.BackendConnection`.

Downloads: response bytes go to the client only as far as the stream's send window allows; the
rest (at most one backend read) waits in ``pending`` while the backend transport is paused, and
:meth:`Stream.drain` continues when the client opens its window or its socket drains.

Uploads: request bytes are acknowledged to the client (WINDOW_UPDATE) only once the backend
transport took them without pushing back; before a backend connection exists they wait in a
buffer bounded by the client's window (HTTP/2, SPDY/3) or by pausing the client's transport
(HTTP/1.1, SPDY/2).

Failures map through :mod:`proxyd.bridge`: 502/503/504 before the response started, a stream
reset (or a closed HTTP/1.1 connection) after.
"""

from twisted.logger import Logger

from proxyd import bridge
from proxyd.codec import CANCEL, ENHANCE_YOUR_CALM, INTERNAL_ERROR

log = Logger(namespace="proxyd.relay")
# Request bytes buffered before a backend connection is attached, beyond which an HTTP/1.1 client
# is paused.
MAX_EARLY_BODY = 64 * 1024
# Retries of a request whose reused connection died before any response byte.
MAX_RETRIES = 1


class Stream:
    """State of one request/response exchange across the proxy."""

    __slots__ = (
        "frontend", "stream_id", "request", "breq", "conn", "closed", "waiting_on",
        "request_done", "trailers", "early", "early_len", "unacked", "response_started",
        "response_done", "pending", "pending_trailers", "status", "sent_bytes", "started",
        "backend_started", "backend", "tried", "retries", "timer", "last_read", "body_seen",
        "stall_timer",
    )

    def __init__(self, frontend, request, breq, now):
        self.frontend = frontend
        self.stream_id = request.stream_id
        self.request = request
        self.breq = breq
        self.conn = None
        self.closed = False
        self.waiting_on = None
        self.request_done = request.end_stream
        self.trailers = None
        self.early = []
        self.early_len = 0
        self.unacked = 0
        self.response_started = False
        self.response_done = False
        self.pending = None
        self.pending_trailers = None
        self.status = 0
        self.sent_bytes = 0
        self.started = now
        self.backend_started = now
        self.backend = None
        self.tried = []
        self.retries = 0
        self.timer = None
        self.last_read = now
        self.body_seen = 0
        self.stall_timer = None

    # -- connecting ------------------------------------------------------------------------
    def start(self):
        """Ask the balancer for a backend connection."""
        backend = self.frontend.balancer.pick(self.tried)
        self.backend = backend
        self.tried.append(backend)
        backend.acquire(self)

    def attach(self, conn):
        """A backend connection is ours: send the request head and what body we hold."""
        if self.closed:
            conn.backend.release(conn)
            return
        self.conn = conn
        self.backend_started = self.frontend.clock.seconds()
        self.last_read = self.backend_started
        conn.start(self, self.breq)
        if self.early:
            for chunk in self.early:
                conn.send_body(chunk)
            self.early = []
            self.early_len = 0
        if self.request_done and not self.breq.end_stream:
            conn.end_body(self.trailers or ())
        if not conn.write_blocked:
            self._ack()
            self.frontend.resume_reading(self)
        self._arm_timer()

    def backend_unreachable(self, backend, cause):
        """Connecting to ``backend`` failed: try another backend, else 502."""
        log.warn("backend {addr} unreachable: {cause}", addr=backend.config.address, cause=cause)
        self.frontend.listener.backend_failed(backend)  # metrics: passive backend health
        if self.closed:
            return
        if len(self.tried) < self.frontend.balancer.size:
            self.start()
            return
        self.fail(502, b"backend unreachable")

    def backend_full(self, backend):
        """The backend's pool and queue are full."""
        log.warn("backend {addr}: pool and queue full", addr=backend.config.address)
        self.fail(503, b"backend busy")

    def backend_lost(self, conn, cause):
        """The backend connection failed during our exchange."""
        self.conn = None
        self._cancel_timer()
        if self.closed:
            return
        sent_body = self.body_seen > 0 or not self.breq.end_stream
        # Retry what the backend never processed: a reused keep-alive connection that died before
        # answering, or an HTTP/2 stream refused (REFUSED_STREAM) or above a GOAWAY's last id.
        if ((conn.reused or conn.unprocessed) and not conn.got_response_bytes and not sent_body
                and self.retries < MAX_RETRIES):
            self.retries += 1
            self.backend.connect_fresh(self)
            return
        log.warn("stream {sid}: {cause} ({addr})", sid=self.stream_id, cause=cause,
                 addr=self.backend.config.address)
        self.fail(502, b"backend connection failed")

    # -- request direction -----------------------------------------------------------------
    def on_request_data(self, data, flow_length):
        """Body bytes from the client."""
        self.body_seen += len(data)
        self.unacked += flow_length
        limit = self.frontend.policy.max_request_body
        if limit and self.body_seen > limit:
            log.info("stream {sid}: request body over {limit} bytes", sid=self.stream_id, limit=limit)
            if self.response_started:
                self.fail(413, b"request body too large", reset_code=ENHANCE_YOUR_CALM)
            else:
                self._reset_over_limit()
            return
        conn = self.conn
        if conn is not None:
            conn.send_body(data)
            if not conn.write_blocked:
                self._ack()
            elif not self.frontend.codec.flow_controlled:
                self.frontend.pause_reading(self)
            return
        self.early.append(data)
        self.early_len += len(data)
        if self.early_len > MAX_EARLY_BODY and not self.frontend.codec.flow_controlled:
            self.frontend.pause_reading(self)

    def _reset_over_limit(self):
        """A body grew past ``max_request_body``: 413 (HTTP/1.1) or a stream reset, backend dropped."""
        if self.frontend.codec.flow_controlled:
            self.response_started = True
            self.status = 413
            self.frontend.codec.reset_stream(self.stream_id, ENHANCE_YOUR_CALM)
            self.frontend.flush()
            self._finish()
        else:
            self.fail(413, b"request body too large")

    def on_request_end(self, trailers=None):
        """The client finished its request body (repeated calls are ignored)."""
        if self.request_done:
            return
        self.request_done = True
        if trailers is not None:
            self.trailers = trailers
        if self.conn is not None:
            self.conn.end_body(self.trailers or ())

    def backend_write_resumed(self):
        """The backend transport drained: acknowledge what it took, let the client send more."""
        self._ack()
        self.frontend.resume_reading(self)

    def _ack(self):
        if self.unacked:
            self.frontend.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0
            self.frontend.flush()

    # -- response direction ----------------------------------------------------------------
    def on_informational(self, status, headers):
        """A 1xx from the backend."""
        if not self.closed:
            headers = bridge.client_response(status, headers, **self._rewrite_args())
            self.frontend.codec.send_informational(self.stream_id, status, headers)

    def on_response(self, status, headers):
        """The backend's final response head."""
        self.last_read = self.frontend.clock.seconds()
        self.frontend.listener.backend_responded(self)  # metrics: time to first byte
        if self.closed:
            return
        self.response_started = True
        self.status = status
        headers = bridge.client_response(status, headers, **self._rewrite_args())
        self.frontend.codec.send_response(self.stream_id, status, headers)

    def _rewrite_args(self):
        frontend = self.frontend
        authority = self.request.authority
        return {
            "via_version": self.conn.via_version if self.conn is not None else b"1.1",
            "policy": frontend.policy,
            "backend_host": self.breq.host,
            "scheme": b"https" if frontend.policy.tls else b"http",
            "authority": authority,
        }

    def on_response_data(self, data):
        """Response body bytes: send what the window allows, hold the rest and pause the backend.

        Like :meth:`on_response`, it only queues into the client's codec: the backend connection
        flushes the client once per read.
        """
        self.last_read = self.frontend.clock.seconds()
        if self.closed:
            return
        if self.pending is not None or self.frontend.write_paused:
            self._hold(data)
            return
        codec = self.frontend.codec
        window = codec.available_window(self.stream_id)
        if window >= len(data):
            codec.send_data(self.stream_id, data)
            self.sent_bytes += len(data)
        else:
            if window > 0:
                codec.send_data(self.stream_id, data[:window])
                self.sent_bytes += window
                data = data[window:]
            self._hold(data)

    def _hold(self, data):
        if self.pending is None:
            self.pending = bytearray(data)
            if self.stall_timer is None:
                # The client's window (or socket) is shut: bounded by timeouts.frontend_idle.
                self.stall_timer = self.frontend.clock.callLater(
                    self.frontend.listener.timeouts.frontend_idle, self._stalled)
        else:
            self.pending += data
        if self.conn is not None:
            self.conn.pause_reading()
        self._cancel_timer()

    def on_response_trailers(self, headers):
        """Trailers from the backend (they end the response)."""
        self.pending_trailers = headers

    def on_response_end(self):
        """The backend finished its response."""
        self.response_done = True
        self.conn = None
        self._cancel_timer()
        if self.closed:
            return
        if self.pending is None:
            self._end_response()

    def _end_response(self):
        codec = self.frontend.codec
        if self.pending_trailers:
            codec.send_trailers(self.stream_id, self.pending_trailers)
        else:
            codec.end_stream(self.stream_id)
        self.frontend.flush()
        self._finish()

    def drain(self):
        """The client's window opened or its socket drained: send held bytes, resume the backend."""
        if self.closed or self.pending is None or self.frontend.write_paused:
            return
        codec = self.frontend.codec
        window = codec.available_window(self.stream_id)
        if window <= 0:
            return
        pending = self.pending
        if window >= len(pending):
            codec.send_data(self.stream_id, bytes(pending))
            self.sent_bytes += len(pending)
            self.pending = None
            self._cancel_stall()
        else:
            codec.send_data(self.stream_id, bytes(pending[:window]))
            self.sent_bytes += window
            del pending[:window]
            if self.stall_timer is not None:
                self.stall_timer.reset(self.frontend.listener.timeouts.frontend_idle)
        self.frontend.flush()
        if self.pending is None:
            if self.response_done:
                self._end_response()
            elif self.conn is not None:
                self.conn.resume_reading()
                self._arm_timer()

    # -- ending ----------------------------------------------------------------------------
    def fail(self, status, cause, extra_headers=(), reset_code=INTERNAL_ERROR):
        """Answer with an error before the response started, else reset the stream."""
        if self.closed:
            return
        codec = self.frontend.codec
        if self.response_started:
            codec.reset_stream(self.stream_id, reset_code)
            self.frontend.flush()
            self._finish()
            return
        self.status, headers, body = bridge.error_response(status, cause, extra_headers)
        self.response_started = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._cancel_timer()
        head_only = self.request.method == b"HEAD"
        codec.send_response(self.stream_id, status, headers, end_stream=head_only)
        self.response_done = True
        if head_only:
            self.frontend.flush()
            self._finish()
            return
        # The body goes through the windowed path like any response body.
        self.on_response_data(body)
        if self.pending is None:
            self._end_response()
        else:
            self.frontend.flush()

    def abort(self):
        """The client reset the stream (or went away): drop the backend side."""
        if self.closed:
            return
        if not self.status:
            self.status = 499
        self._finish()

    def _finish(self):
        self._cancel_stall()
        if self.unacked:
            # Give the client its connection window back for bytes nobody will forward.
            self.frontend.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0
        self.closed = True
        self._cancel_timer()
        if self.waiting_on is not None:
            self.waiting_on.state.cancel(self)
            self.waiting_on = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.pending = None
        self.early = []
        self.frontend.stream_done(self)

    def _stalled(self):
        self.stall_timer = None
        if self.closed or self.pending is None:
            return
        log.info("stream {sid}: the client took no response bytes for {t}s; resetting",
                 sid=self.stream_id, t=self.frontend.listener.timeouts.frontend_idle)
        self.fail(504, b"client stalled", reset_code=CANCEL)

    def _cancel_stall(self):
        timer, self.stall_timer = self.stall_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- backend read timeout --------------------------------------------------------------
    def _arm_timer(self):
        if self.timer is None and not self.response_done:
            self.timer = self.frontend.clock.callLater(self.frontend.read_timeout, self._timed_out)

    def _cancel_timer(self):
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self):
        self.timer = None
        if self.closed or self.response_done or self.pending is not None:
            return
        idle = self.frontend.clock.seconds() - self.last_read
        remaining = self.frontend.read_timeout - idle
        if remaining > 0.001:
            self.timer = self.frontend.clock.callLater(remaining, self._timed_out)
            return
        log.warn("stream {sid}: backend {addr} sent nothing for {t}s", sid=self.stream_id,
                 addr=self.backend.config.address if self.backend else "?",
                 t=self.frontend.read_timeout)
        self.fail(504, b"backend timeout")
