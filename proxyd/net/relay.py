"""One client stream relayed to one backend exchange: the network half of :mod:`proxyd.stream`.

Strategy: a :class:`Relay` owns a :class:`proxyd.stream.StreamMachine` and carries out the
commands it returns, nothing more: it feeds the machine what happened (a connection came, bytes
arrived, a window opened, a timer fired) and does what the machine says (write a head, send body
bytes, acknowledge, pause, reset, release or drop the backend connection, arm a timer). Inputs
that arrive while commands run (a transport pausing us from inside ``write``, a pool handing over
a connection at once) wait in a queue and run after, in order, so the machine never sees
re-entrant calls.

Every stream ends: an exception anywhere on the stream's path (a codec refusing to write, a bug)
is caught here and becomes the machine's ``FAIL`` with the table's reason (``unsafe_request``
and ``unsafe_response`` for writer refusals, ``internal_error`` otherwise), which answers or
resets the stream and drops its backend connection; if even that fails, the stream is reset and
forgotten by force. Timers belong to the relay and die with it (``FINISH``).

The backend read timer is an idle timer: backend activity (response bytes, or taking request
body bytes: a long upload to a backend that reads it is not a silent backend) only records a
timestamp, and the client connection's one :class:`proxyd.net.readwatch.ReadWatch` call checks
the deadlines of all its streams (no timer work per read, nor per request). A
tunnel's ``IDLE`` timer (``timeouts.tunnel_idle``) works the same way on bytes either way; it
takes the stall timer's place (a tunnel never arms that one while it runs).
"""

from collections import deque

from twisted.logger import Logger

from proxyd.bridge import Translator
from proxyd.errors import Refused, outcome
from proxyd.net.routelimit import StreamRate
from proxyd import stream as sm

log = Logger(namespace="proxyd.relay")
# Request bytes buffered before a backend connection is attached, beyond which a client without
# flow control is paused.
MAX_EARLY_BODY = 64 * 1024
# Reasons logged as warnings (the backend side failed); the rest are the client's doing.
#: An iterator with nothing left: what a step that raised before its commands has not run.
_DONE = iter(())
_BACKEND_REASONS = frozenset(("backend_unreachable", "backend_busy", "backend_timeout",
                              "backend_failed", "bad_response", "unsafe_response",
                              "internal_error", "unsafe_request"))


class Relay:
    """One request/response exchange across the proxy (see the module docstring)."""

    __slots__ = (
        "frontend", "stream_id", "request", "breq", "route", "rate", "machine", "conn", "backend",
        "tried",
        "started", "backend_started", "last_read", "trailers", "waiting_on", "cause",
        "_read_armed", "_stall_call", "_queue", "_running", "_wrote", "_relief",
    )

    def __init__(self, frontend, request, breq, now, route):
        self.frontend = frontend
        self.stream_id = request.stream_id
        self.request = request
        self.breq = breq
        self.route = route  # proxyd.net.routing.RouteState: the group, policies, read timeout
        self.rate = None if route.limits is None else StreamRate(self, route.limits, now)
        self.conn = None
        self.backend = None
        self.tried = []
        self.started = now
        self.backend_started = now
        self.last_read = now
        self.trailers = ()
        self.waiting_on = None
        self.cause = ""
        self._read_armed = False
        self._stall_call = None
        self._queue = None
        self._running = False
        self._wrote = False
        self._relief = None  # the backend's StallRelief while registered as a stalled holder
        policy = route.policies[frontend.route_key]
        self.machine = sm.StreamMachine(
            request, family=frontend.family, flow_controlled=frontend.codec.flow_controlled,
            policy=Translator(policy, request.authority),
            window=_window_of(frontend, self.stream_id, self.rate),
            max_body=policy.max_request_body, early_limit=MAX_EARLY_BODY)

    # -- what the access log and the frontend read ------------------------------------------
    @property
    def status(self):
        """The status the client got (0 while none; 499 when it went away first)."""
        return self.machine.status

    @property
    def sent_bytes(self):
        """Response body bytes handed to the client's codec."""
        return self.machine.sent

    @property
    def holding(self):
        """True while response bytes wait for the client's window."""
        return self.machine.pending is not None

    @property
    def done(self):
        """True once the stream finished."""
        return self.machine.state is sm.DONE

    @property
    def paced(self):
        """True while proxyd's own write limits (the connection's or the route's), not the
        client, hold the response back (the stall relief does not count that time)."""
        return self.frontend.rate_paused or (self.rate is not None and self.rate.pacing)

    @property
    def idle(self):
        """True while the stream has passed the gate but was not started (nor answered)."""
        return self.machine.state is sm.IDLE

    # -- feeding the machine ---------------------------------------------------------------
    def feed(self, event, *args):
        """Apply one input and carry out its commands (queued if commands are running)."""
        if self._running:
            if self._queue is None:
                self._queue = deque()
            self._queue.append((event, args))
            return
        self._running = True
        try:
            self._step(event, args)
            queue = self._queue
            while queue:
                event, args = queue.popleft()
                self._step(event, args)
        finally:
            self._running = False

    def _step(self, event, args):
        # An iterator: after a command raised, what it has left are the commands not run yet.
        commands = _DONE
        try:
            commands = iter(self.machine.handle(event, *args))
            for command in commands:
                size = len(command)
                if size == 1:
                    _DO[command[0]](self)
                elif size == 2:
                    _DO[command[0]](self, command[1])
                else:
                    _DO[command[0]](self, *command[1:])
            if self._wrote:
                # Tell the machine whether the backend took the request bytes just written.
                self._wrote = False
                if self.conn is not None:
                    self.feed(sm.WRITTEN, self.conn.write_blocked)
        except Exception as exc:  # noqa: BLE001 - every stream ends, whatever went wrong
            self._crash(exc, tuple(commands))

    def _crash(self, exc, unexecuted=()):
        """The commands of an input raised (``unexecuted``: those after the one that raised):
        the machine's ``FAIL`` answers or resets the stream; when it cannot (the stream is DONE
        already, or the failure raises too) the stream is ended by force."""
        if isinstance(exc, Refused):
            reason, detail = exc.reason, exc.detail
            log.info("stream {sid}: {reason}: {detail}", sid=self.stream_id, reason=reason,
                     detail=detail)
        else:
            reason, detail = "internal_error", f"{type(exc).__name__}: {exc}"
            self.frontend.listener.internal_errors += 1
            log.failure("stream {sid}: internal error, the stream is answered and ended",
                        sid=self.stream_id)
        if self.machine.state is sm.DONE:
            if self.frontend.streams.get(self.stream_id) is self:
                # The step that broke led to DONE but its FINISH never ran (WHOLE: the head, body
                # and end of a response in one step): the machine cannot answer any more.
                self.machine.reason = self.machine.reason or reason
                self._force_end(outcome(reason).reset_code, unexecuted)
            return
        commands = _DONE
        try:
            commands = iter(self.machine.handle(sm.FAIL, reason, detail))
            for command in commands:
                _DO[command[0]](self, *command[1:])
        except Exception:  # noqa: BLE001 - the last resort: reset and forget the stream
            self.frontend.listener.internal_errors += 1
            log.failure("stream {sid}: could not answer; resetting it", sid=self.stream_id)
            self._force_end(outcome("internal_error").reset_code, tuple(commands))

    def _force_end(self, code, unexecuted=()):
        """Reset and forget the stream by force (its backend connection is dropped); what its
        end still owed the client (``StreamMachine.abandon``: the acknowledgement of its request
        bytes, the client's resume) is carried out all the same."""
        owed = self.machine.abandon(unexecuted)
        try:
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.abort()
            self.frontend.codec.reset_stream(self.stream_id, code)
            for command in owed:
                _DO[command[0]](self, *command[1:])
        finally:
            self._finish()

    def _late(self, event, *args):
        """Feed an input that came from a callback (pool, timer): flush the client after."""
        self.feed(event, *args)
        self.frontend.flush_later()

    # -- inputs from the frontend ------------------------------------------------------------
    def start(self):
        """The request passed the gate: look for a backend."""
        self.feed(sm.START)

    def refuse(self, reason, detail="", extra_headers=()):
        """Answer with the table's ``reason`` (before the response started), else reset."""
        self.feed(sm.FAIL, reason, detail, extra_headers)

    def on_request_data(self, data, flow_length):
        """Body bytes from the client."""
        self._client_input(sm.REQ_DATA, data, flow_length)

    def on_request_end(self):
        """The client finished its request (trailers, if any, arrived before)."""
        self._client_input(sm.REQ_END, self.trailers)

    def _client_input(self, event, *args):
        """Feed an input of the client's request. A failure it causes (the body broke its
        Content-Length or the body limit, the trailers were refused) is a stream error the
        client provoked: counted with its resets (:mod:`proxyd.codec.floods`, MadeYouReset);
        an HTTP/1.1 codec has no such count (its connection closes on such a request)."""
        machine = self.machine
        failed = machine.reason is not None
        self.feed(event, *args)
        if not failed and machine.reason is not None:
            provoked = getattr(self.frontend.codec, "provoked_reset", None)
            if provoked is not None:
                provoked()

    def on_client_window(self):
        """The client's window opened or its socket drained."""
        if self.machine.pending is not None:
            self.feed(sm.WINDOW)

    def abort(self):
        """The client reset the stream (or went away)."""
        self.feed(sm.CLIENT_RESET)

    # -- inputs from the pool and the backend connection -------------------------------------
    def attach(self, conn):
        """A backend connection (or HTTP/2 stream) is ours."""
        self.conn = conn
        self.waiting_on = None
        self.backend_started = self.last_read = self.frontend.clock.seconds()
        self._late(sm.READY, conn.via_version, conn.backend.address)

    def backend_unreachable(self, backend, cause):
        """Connecting to ``backend`` failed: another backend, else 502."""
        log.warn("backend {addr} unreachable: {cause}", addr=backend.config.address, cause=cause)
        self.frontend.listener.backend_failed(backend)  # metrics: passive backend health
        self.waiting_on = None
        self.cause = cause
        self._late(sm.UNREACHABLE, self.route.group.another(self.tried))

    def backend_full(self, backend):
        """The backend's pool and queue are full."""
        log.warn("backend {addr}: pool and queue full", addr=backend.config.address)
        self._late(sm.BUSY)

    def backend_lost(self, conn, cause):
        """The backend connection (or HTTP/2 stream) failed during our exchange."""
        if conn is not self.conn:
            return
        self.conn = None
        self.cause = cause
        self._late(sm.LOST, conn.unprocessed, conn.reused, conn.got_response_bytes)

    def backend_write_resumed(self):
        """The backend took what was written: acknowledge it, let the client send more."""
        self.last_read = self.frontend.clock.seconds()
        self._late(sm.WRITTEN, False)

    def on_informational(self, status, headers):
        """A 1xx from the backend."""
        self.last_read = self.frontend.clock.seconds()
        self.feed(sm.INFO, status, headers)

    def on_response(self, status, headers):
        """The backend's final response head."""
        self.last_read = self.frontend.clock.seconds()
        self.frontend.listener.backend_responded(self)  # metrics: time to first byte
        self.feed(sm.HEAD, status, headers)

    def on_whole_response(self, status, headers, data):
        """A whole response (head, body bytes, end) from one backend read."""
        self.last_read = self.frontend.clock.seconds()
        self.frontend.listener.backend_responded(self)  # metrics: time to first byte
        self.feed(sm.WHOLE, status, headers, data)

    def on_response_data(self, data):
        """Response body bytes."""
        self.last_read = self.frontend.clock.seconds()
        self.feed(sm.DATA, data)

    def on_response_trailers(self, headers):
        """Trailers from the backend (they end the response)."""
        self.feed(sm.TRAILERS, headers)

    def on_response_end(self):
        """The backend finished its response."""
        self.feed(sm.END)

    def on_invalid(self, reason, detail=""):
        """The backend's response broke its framing (or the response gate refused it)."""
        self.feed(sm.INVALID, reason, detail)

    def on_switched(self, status, headers):
        """The backend switched protocols (a WebSocket handshake it accepted)."""
        self.last_read = self.frontend.clock.seconds()
        self.frontend.listener.backend_responded(self)  # metrics: time to first byte
        self.feed(sm.UPGRADED, status, headers, self.breq)

    # -- commands ----------------------------------------------------------------------------
    def _acquire(self, fresh):
        if fresh and self.backend is not None:
            self.backend.connect_fresh(self)
            return
        backend = self.route.group.pick(self.tried)
        if backend is None:  # every backend of the group is down
            frontend = self.frontend
            frontend.listener.count_refusal("no_healthy_backend")
            wait = self.route.group.retry_after(frontend.clock.seconds())
            self.feed(sm.FAIL, "no_healthy_backend", "", [(b"retry-after", b"%d" % wait)])
            return
        self.backend = backend
        self.tried.append(backend)
        backend.acquire(self)

    def _cancel_wait(self):
        waiting, self.waiting_on = self.waiting_on, None
        if waiting is not None:
            waiting.cancel(self)

    def _send_head(self):
        self.conn.start(self, self.breq)

    def _send_body(self, data):
        conn = self.conn
        if not conn.write_blocked:  # the backend is taking the request: it is not silent
            self.last_read = self.frontend.clock.seconds()
        conn.send_body(data)
        self._wrote = True

    def _end_body(self, trailers):
        self.conn.end_body(trailers)

    def _ack(self, n):
        if self.rate is not None:  # a route's read limit
            self.rate.ack(n)
            return
        self.frontend.acknowledge(self.stream_id, n)

    def _pause_client(self):
        self.frontend.pause_reading(self)

    def _resume_client(self):
        self.frontend.resume_reading(self)

    def _pause_backend(self):
        if self.conn is not None:
            self.conn.pause_reading()

    def _resume_backend(self):
        if self.conn is not None:
            self.conn.resume_reading()

    def _inform(self, status, headers):
        self.frontend.codec.send_informational(self.stream_id, status, headers)

    def _respond(self, status, headers, end):
        self.frontend.codec.send_response(self.stream_id, status, headers, end)

    def _send(self, data):
        self.frontend.codec.send_data(self.stream_id, data)
        if self.rate is not None:
            self.rate.sent(len(data))

    def _end_response(self, trailers):
        codec = self.frontend.codec
        if trailers:
            codec.send_trailers(self.stream_id, trailers)
        else:
            codec.end_stream(self.stream_id)

    def _reset(self, code):
        self.frontend.codec.reset_stream(self.stream_id, code)

    def _release_backend(self):
        if self._relief is not None:
            self._unstall()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                # Neither pooled nor closed, it would hold its pool slot for ever: drop it (the
                # stream fails as on any other exception).
                conn.abort()
                raise

    def _discard_backend(self):
        if self._relief is not None:
            self._unstall()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _close_backend(self):
        if self._relief is not None:
            self._unstall()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                # As for a release that raises: neither closed nor aborted, it would stay open
                # and hold its pool slot for ever (the stream fails as on any other exception).
                conn.abort()
                raise

    def _open_tunnel(self):
        self.frontend.tunnel_opened(self)

    def _arm(self, timer):
        clock = self.frontend.clock
        if timer is sm.READ:
            self.last_read = now = clock.seconds()
            if not self._read_armed:
                self._read_armed = True
                self.frontend.read_watch.watch(now + self.route.read_timeout)
        elif timer is sm.IDLE_TIMER:  # a tunnel's: lazy like READ, in the stall timer's slot
            self.last_read = clock.seconds()
            if self._stall_call is None:
                self._stall_call = clock.callLater(self.frontend.listener.timeouts.tunnel_idle,
                                                   self._idle_fired)
        else:
            idle = self.frontend.listener.timeouts.frontend_idle
            call = self._stall_call
            if call is not None and call.active():
                call.reset(idle)
            else:
                self._stall_call = clock.callLater(idle, self._stall_fired)
            if self.conn is not None and self.backend is not None:
                # Holding a backend connection: it goes to waiting requests first.
                self._relief = self.backend.relief
                self._relief.stall(self, clock.seconds())

    def _cancel(self, timer):
        if timer is sm.READ:
            self._read_armed = False
            return
        if self._relief is not None:
            self._unstall()
        call, self._stall_call = self._stall_call, None
        if call is not None and call.active():
            call.cancel()

    def _unstall(self):
        relief, self._relief = self._relief, None
        relief.flowing(self)

    def preempt(self):
        """Requests wait for this stream's backend connection and its client has taken nothing
        for a while: it ends as the stall timer would end it (:mod:`proxyd.net.stallrelief`)."""
        if self.machine.state is sm.BLOCKED:
            self._late(sm.STALL_TIMEOUT)

    def _log(self, reason, detail):
        backend = self.backend.config.address if self.backend is not None else "-"
        text = detail or outcome(reason).phrase
        if self.cause and reason in ("backend_failed", "backend_unreachable"):
            text = f"{text}: {self.cause}"
        if reason in _BACKEND_REASONS:
            log.warn("stream {sid}: {reason} ({text}; backend {backend})", sid=self.stream_id,
                     reason=reason, text=text, backend=backend)
        elif self.frontend.listener.client_line_due():  # mostly a client's doing: a sample
            log.info("stream {sid}: {reason} ({text})", sid=self.stream_id, reason=reason,
                     text=text)

    def _finish(self):
        if self.rate is not None:
            self.rate.close()
        # Both timers die with the stream (what _cancel(READ) and _cancel(STALL) do, inline:
        # this runs once per request).
        self._read_armed = False
        if self._relief is not None:
            self._unstall()
        call = self._stall_call
        if call is not None:
            self._stall_call = None
            if call.active():
                call.cancel()
        if self.waiting_on is not None:
            self._cancel_wait()
        self.frontend.stream_done(self)

    # -- timers ------------------------------------------------------------------------------
    def read_due(self):
        """When the backend read timer expires (clock seconds), or None when it is not armed
        (asked by the connection's :class:`proxyd.net.readwatch.ReadWatch`)."""
        if self._read_armed:
            return self.last_read + self.route.read_timeout
        return None

    def read_timed_out(self):
        """The backend was silent for the whole read timeout."""
        self._read_armed = False
        self._late(sm.READ_TIMEOUT)

    def _stall_fired(self):
        self._stall_call = None
        self._late(sm.STALL_TIMEOUT)

    def _idle_fired(self):
        self._stall_call = None
        clock = self.frontend.clock
        remaining = self.frontend.listener.timeouts.tunnel_idle - (clock.seconds() - self.last_read)
        if remaining > 0.001:
            self._stall_call = clock.callLater(remaining, self._idle_fired)
            return
        self._late(sm.IDLE_TIMEOUT)


def _window_of(frontend, stream_id, rate):
    """The machine's window query for one stream (a closure over the frontend, not the relay:
    no reference cycle, so a finished stream is freed at once, without the garbage collector);
    ``rate``: the route's write limit, if it has one."""
    if rate is not None:
        def limited():
            if frontend.write_paused:
                return 0
            return rate.window(frontend.codec.available_window(stream_id))
        return limited

    def window():
        if frontend.write_paused:
            return 0
        return frontend.codec.available_window(stream_id)
    return window


_DO = {
    sm.ACQUIRE: Relay._acquire,
    sm.CANCEL_WAIT: Relay._cancel_wait,
    sm.SEND_HEAD: Relay._send_head,
    sm.SEND_BODY: Relay._send_body,
    sm.END_BODY: Relay._end_body,
    sm.ACK: Relay._ack,
    sm.PAUSE_CLIENT: Relay._pause_client,
    sm.RESUME_CLIENT: Relay._resume_client,
    sm.PAUSE_BACKEND: Relay._pause_backend,
    sm.RESUME_BACKEND: Relay._resume_backend,
    sm.INFORM: Relay._inform,
    sm.RESPOND: Relay._respond,
    sm.SEND: Relay._send,
    sm.END_RESPONSE: Relay._end_response,
    sm.RESET: Relay._reset,
    sm.RELEASE_BACKEND: Relay._release_backend,
    sm.DISCARD_BACKEND: Relay._discard_backend,
    sm.ARM: Relay._arm,
    sm.CANCEL: Relay._cancel,
    sm.LOG: Relay._log,
    sm.FINISH: Relay._finish,
    sm.OPEN_TUNNEL: Relay._open_tunnel,
    sm.CLOSE_BACKEND: Relay._close_backend,
}
