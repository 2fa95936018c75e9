"""One proxied stream as a state machine: (state, input) -> handler -> next state + commands.

Strategy: everything that decides what happens to a stream lives here, in pure code that tests
drive with inputs and read commands from (the mitmproxy model: events in, commands out);
:mod:`proxyd.net.relay` only carries the commands out. The table :data:`TRANSITIONS` lists every
legal (state, input) pair with its handler and the states it may lead to; a pair that is not in
the table is illegal and raises :class:`IllegalTransition`, which the relay turns into the
stream's ``internal_error`` answer (so a bug ends one stream, never the process). A reader can
check the table against the picture below and against RFC 9110 §9.2.2 (retries), RFC 9113 §5.2
and §8.1 (flow control, complete response before the request ends) and DESIGN §4-5.

::

         START          READY              HEAD              END
    IDLE ------> ROUTING ------> AWAITING ------> RESPONDING -----> DONE
      |           ^  |  (retry:    |   ^             |    ^
      |           |  |   LOST)     |   |       DATA  |    | WINDOW (all held
      |           +--+-------------+   |   (window   v    |  bytes sent)
      |      UNREACHABLE (another      |    shut)  BLOCKED -----> FLUSHING ----> DONE
      |      backend left)             |                   END          WINDOW
      +--- FAIL before the response head: the error answer (FLUSHING, or DONE at once) ---+
    any state --- CLIENT_RESET ---> DONE;  after the head, any failure resets the stream.
    WHOLE (a response whose head, body and end came in one backend read) takes AWAITING through
    HEAD, DATA and END in one step: to DONE, or to FLUSHING when the window held some of it.

    A WebSocket request (``request.upgrade``) whose backend switched protocols:

                  UPGRADED            DATA (window shut)
    AWAITING ------------> TUNNEL <--------------------> TUNNEL_BLOCKED
                             |       WINDOW (all sent)        |
                             | END, CLIENT_RESET,             | END: held bytes
                             | IDLE_TIMEOUT, LOST             v
                             +-------------------> DONE    FLUSHING

    (RFC 6455 §4.1 and RFC 8441 §5: the tunnel opens on the backend's 101 only; RFC 9113 §8.5:
    END_STREAM is a half-close, forwarded as one; a backend failure resets with CONNECT_ERROR.)

States:

=============  ==================================================================================
IDLE           created; the request passed the gate
ROUTING        waiting for a backend connection (connecting, or queued in the pool); request
               body bytes wait in a bounded buffer
AWAITING       a backend connection is attached and has the request head; no response head yet
RESPONDING     the response head went to the client; every body byte so far was delivered
BLOCKED        the client's window (or socket) is shut: held bytes wait, the backend is paused
               and the stall timer runs
FLUSHING       the backend side is over (response complete, or an answer of proxyd's own);
               held bytes still wait for the client; a connection asked for before the answer
               that arrives now is released unused
TUNNEL         the backend switched protocols (RFC 6455 101, RFC 8441 2xx): bytes flow both ways
               within the client's window and the backend's pushback, the idle timer runs
TUNNEL_BLOCKED a tunnel whose client window (or socket) is shut: held bytes wait, the backend is
               paused
DONE           finished; late inputs are ignored (request bytes are acknowledged, a connection
               that arrives too late is released)
=============  ==================================================================================

A tunnel is never a normal response: it opens only on the backend's switch (``UPGRADED``, which
the backend codecs report only for a request that asked for it), so bytes the client sent before
it never reach the backend ahead of the switch: the HTTP/1.1 codec holds them, the machine holds
an RFC 8441 client's DATA and END_STREAM and sends them into the tunnel once it opens (dropped
with the stream when the backend answers anything else; the writer refuses a body on the
handshake whatever happens). Its backend connection is closed, never pooled (``CLOSE_BACKEND``);
a backend's end (END) ends the client's side (its stream, or its connection), the client's
END_STREAM half-closes the backend (``END_BODY``), a reset or close on either side ends both, and
``IDLE`` (the tunnel's idle timeout: no byte either way) resets it.

Commands are tuples the relay carries out in order; their names and arguments are listed in
:mod:`proxyd.streamnames`.

Facts from the network: ``window()``, a callable given at creation, says how many response bytes
the client can take now on this stream (0 while its socket is paused); ``WRITTEN(blocked)`` says,
after the relay wrote request bytes and whenever the backend's transport drains, whether the
backend pushes back. Client bytes are acknowledged only once the backend took them (DESIGN §5).
"""

from proxyd import gate
from proxyd.errors import NO_ERROR, PROTOCOL_ERROR, Refused, error_response, outcome
from proxyd.streamnames import (  # noqa: F401 - the names are part of this module's interface
    ACK, ACQUIRE, ARM, AWAITING, BLOCKED, BUSY, CANCEL, CANCEL_WAIT, CLIENT_RESET, CLOSE_BACKEND,
    DATA, DISCARD_BACKEND, DONE, END, END_BODY, END_RESPONSE, FAIL, FINISH, FLUSHING, HEAD, IDLE,
    IDLE_TIMEOUT, IDLE_TIMER, INFO, INFORM, INPUTS, INVALID, LOG, LOST, OPEN_TUNNEL,
    PAUSE_BACKEND, PAUSE_CLIENT, READ, READ_TIMEOUT, READY, REQ_DATA, REQ_END, RESET, RESPOND,
    RESPONDING, RESUME_BACKEND, RESUME_CLIENT, RELEASE_BACKEND, ROUTING, SEND, SEND_BODY,
    SEND_HEAD, STALL, STALL_TIMEOUT, START, STATES, TRAILERS, TUNNEL, TUNNEL_BLOCKED,
    UNREACHABLE, UPGRADED, WHOLE, WINDOW, WRITTEN)
from proxyd.tunnel import TunnelRules

__all__ = ["StreamMachine", "IllegalTransition", "TRANSITIONS", "IDEMPOTENT", "MAX_RETRIES",
           "MAX_INFORMATIONAL"]


#: RFC 9110 §9.2.2: requests a proxy may repeat when it cannot know whether they were processed.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
#: Repeats of a request on a fresh connection after its connection died unanswered.
MAX_RETRIES = 1
#: 1xx heads of one stream forwarded to its client; later ones are dropped (they take no
#: flow-control window, so nothing else bounds what a backend repeating them would queue;
#: Go's HTTP client stops at 5). They still count as backend activity for the read timeout
#: (102 Processing exists to keep a long request alive).
MAX_INFORMATIONAL = 8
_TUNNELS = (TUNNEL, TUNNEL_BLOCKED)


class IllegalTransition(Exception):
    """An input that the table does not allow in the current state (a bug somewhere)."""

    def __init__(self, state, event):
        self.state = state
        self.event = event
        super().__init__(f"input {event} is not allowed in state {state}")


class StreamMachine(TunnelRules):
    """The state of one proxied stream and the rules that move it (see the module docstring).

    ``request`` is the :class:`proxyd.gate.Request`; ``family`` the frontend's rule set for
    trailers; ``flow_controlled`` whether the client has windows (HTTP/2, SPDY/3) or must be
    paused instead (HTTP/1.1, SPDY/2); ``max_body`` the body limit (0: none); ``early_limit`` how
    many body bytes wait for a connection before such a client is paused; ``policy`` translates
    response heads (:meth:`proxyd.bridge.Translator.response_headers`) and request trailers;
    ``window()`` returns how many response bytes the client can take now.
    """

    __slots__ = (
        "state", "request", "family", "flow_controlled", "max_body", "early_limit", "policy",
        "window", "request_ended", "body_at_head", "trailers", "early", "early_len", "body_seen",
        "unacked", "client_paused", "pending", "pending_trailers", "status", "sent", "retries",
        "response_length", "response_seen", "via_version", "backend_address", "reason", "attached",
        "informed",
    )

    def __init__(self, request, *, family, flow_controlled, policy, window, max_body=0,
                 early_limit=64 * 1024):
        self.state = IDLE
        self.request = request
        self.family = family
        self.flow_controlled = flow_controlled
        self.max_body = max_body
        self.early_limit = early_limit
        self.policy = policy
        self.window = window
        self.request_ended = request.end_stream
        self.body_at_head = not request.end_stream
        self.trailers = ()
        self.early = []
        self.early_len = 0
        self.body_seen = 0
        self.unacked = 0
        self.client_paused = False
        self.pending = None
        self.pending_trailers = ()
        self.status = 0
        self.sent = 0
        self.retries = 0
        self.response_length = None
        self.response_seen = 0
        self.via_version = b"1.1"
        self.backend_address = b""
        self.reason = None
        self.attached = False
        self.informed = 0

    def handle(self, event, *args):
        """Apply one input; return the list of commands. Raises :class:`IllegalTransition`."""
        entry = _BY_STATE[self.state].get(event)
        if entry is None:
            raise IllegalTransition(self.state, event)
        handler, allowed = entry
        out = []
        state = handler(self, out, *args)
        if state not in allowed:
            raise IllegalTransition(self.state, event)
        self.state = state
        return out

    # -- beginning -----------------------------------------------------------------------------
    def _start(self, out):
        out.append((ARM, READ))
        if self.request.expect_continue and not self.request_ended:
            out.append((INFORM, 100, []))
        out.append((ACQUIRE, False))
        return ROUTING

    def _attach(self, out, via_version, backend_address):
        self.attached = True
        self.via_version = via_version
        self.backend_address = backend_address
        out.append((SEND_HEAD,))
        if self.request.upgrade is not None:
            return AWAITING  # what the client sent waits for the tunnel (TunnelRules._switch)
        if self.early:
            for chunk in self.early:
                out.append((SEND_BODY, chunk))
            self.early = []
            self.early_len = 0
        if self.request_ended and self.body_at_head:
            out.append((END_BODY, self.trailers))
        return AWAITING

    def _unreachable(self, out, another):
        if another:
            out.append((ACQUIRE, False))
            return ROUTING
        return self._fail(out, "backend_unreachable")

    def _busy(self, out):
        return self._fail(out, "backend_busy")

    def _lost_before_head(self, out, unprocessed, reused, got_response):
        """RFC 9110 §9.2.2: repeat only what provably was not processed, or an idempotent request
        without a body on a reused connection that died before answering (a keep-alive race).
        A tunnel request is a bodiless GET handshake to the backend (RFC 8441's CONNECT too:
        what its client sent is held until the switch, never written)."""
        self.attached = False
        retry = (self.retries < MAX_RETRIES and not got_response and self.body_seen == 0
                 and (unprocessed or (reused and (
                     self.request.upgrade is not None
                     or (not self.body_at_head and self.request.method in IDEMPOTENT)))))
        if retry:
            self.retries += 1
            out.append((ACQUIRE, True))
            return ROUTING
        return self._fail(out, "backend_failed", "connection lost before the response")

    def _release_late(self, out, via_version, backend_address):
        """A connection that arrives after the stream failed (DONE, or FLUSHING: its error
        answer still waits for the client's window) goes back unused: nothing was written."""
        out.append((RELEASE_BACKEND,))
        return self.state

    # -- the request body ----------------------------------------------------------------------
    def _count(self, out, data, flow_length):
        """Account for request body bytes; return a failure state when a limit is broken."""
        self.body_seen += len(data)
        self.unacked += flow_length
        if self.max_body and self.body_seen > self.max_body:
            return self._fail(out, "body_too_large")
        length = self.request.content_length
        if length is not None and self.body_seen > length:
            return self._fail(out, "length_mismatch", "body longer than Content-Length")
        return None

    def _buffer(self, out, data, flow_length):
        if self.request.upgrade is not None:
            return self._hold_for_tunnel(out, data, flow_length)
        failed = self._count(out, data, flow_length)
        if failed is not None:
            return failed
        self.early.append(data)
        self.early_len += len(data)
        if not self.flow_controlled and self.early_len > self.early_limit:
            self._pause_client(out)
        return self.state

    def _forward(self, out, data, flow_length):
        if self.request.upgrade is not None:  # no tunnel yet: the bytes wait for one
            return self._hold_for_tunnel(out, data, flow_length)
        failed = self._count(out, data, flow_length)
        if failed is not None:
            return failed
        out.append((SEND_BODY, data))
        return self.state

    def _request_end(self, out, trailers):
        if self.request_ended:
            return self.state  # SPDY reports the end again after a FIN on the head
        self.request_ended = True
        length = self.request.content_length
        if length is not None and self.body_seen != length:
            return self._fail(out, "length_mismatch", "body shorter than Content-Length")
        if trailers:
            try:
                trailers = gate.check_trailers(trailers, self.family)
            except Refused as refused:
                return self._fail(out, refused.reason, refused.detail)
            trailers = self.policy.request_trailers(trailers)  # no trusted names
        self.trailers = trailers or ()
        if self.attached and (self.request.upgrade is None or self.state in _TUNNELS):
            out.append((END_BODY, self.trailers))  # before a tunnel opened: _switch sends it
        return self.state

    def _written(self, out, blocked):
        """The backend took what was written (``blocked`` False), or pushes back."""
        if blocked:
            if not self.flow_controlled:
                self._pause_client(out)
            return self.state
        if self.request.upgrade is not None and self.state not in _TUNNELS:
            return self.state  # bytes held for a tunnel (_hold_for_tunnel): none was written
        self._ack(out)
        if self.client_paused:
            self.client_paused = False
            out.append((RESUME_CLIENT,))
        return self.state

    def _drop(self, out, data, flow_length):
        if flow_length:
            out.append((ACK, flow_length))
        return self.state

    # -- the response --------------------------------------------------------------------------
    def _inform(self, out, status, headers):
        try:
            fields = gate.check_informational(status, headers)
        except Refused as refused:
            out.append((LOG, refused.reason, refused.detail + " (1xx dropped)"))
            return self.state
        if status == 100 and self.request.expect_continue:
            return self.state  # the client already got our own 100
        self.informed += 1
        if self.informed > MAX_INFORMATIONAL:
            if self.informed == MAX_INFORMATIONAL + 1:
                out.append((LOG, "bad_response", f"more than {MAX_INFORMATIONAL} 1xx heads; "
                            "later ones dropped"))
            return self.state
        out.append((INFORM, status, self.policy.response_headers(
            status, fields, self.via_version, self.backend_address)))
        return self.state

    def _head(self, out, status, headers):
        try:
            fields, length = gate.check_response(status, headers)
        except Refused as refused:
            return self._fail(out, refused.reason, refused.detail)
        if self.request.upgrade is not None and status < 300 and self.family != gate.HTTP1:
            # RFC 8441 §5: a 2xx opens the client's tunnel; the backend did not switch (no 101).
            return self._fail(out, "bad_upgrade", f"status {status} without a switch")
        self.status = status
        if self.request.method == b"HEAD" or status in (204, 304):
            self.response_length = 0  # RFC 9110 §6.4.1: no content follows, whatever the head says
        elif length is not None:
            self.response_length = length
        out.append((RESPOND, status, self.policy.response_headers(
            status, fields, self.via_version, self.backend_address), False))
        return RESPONDING

    def _whole(self, out, status, headers, data):
        """A whole response from one backend read: the rules of HEAD, DATA (when ``data``) and
        END in turn, in one step (most small responses come so)."""
        state = self._head(out, status, headers)
        if state is not RESPONDING:
            return state
        if data:
            state = self._deliver(out, data)
            if state is BLOCKED:
                return self._backend_done(out)
            if state is not RESPONDING:
                return state
        return self._complete(out)

    def _deliver(self, out, data):
        self.response_seen += len(data)
        if self.response_length is not None and self.response_seen > self.response_length:
            return self._broken(out, "bad_response", "body longer than the head allows")
        if self._send_or_hold(out, data):
            return RESPONDING
        out.append((CANCEL, READ))
        out.append((ARM, STALL))
        return BLOCKED

    def _hold(self, out, data):
        self.response_seen += len(data)
        if self.response_length is not None and self.response_seen > self.response_length:
            return self._broken(out, "bad_response", "body longer than the head allows")
        self.pending += data
        return BLOCKED

    def _send_held(self, out):
        """Send what the window allows of the held bytes; True when some went out."""
        pending = self.pending
        n = min(self.window(), len(pending))
        if n <= 0:
            return False
        out.append((SEND, bytes(pending[:n])))
        del pending[:n]
        self.sent += n
        return True

    def _drain(self, out):
        if not self._send_held(out):
            return BLOCKED
        if self.pending:
            out.append((ARM, STALL))  # progress restarts the clock
            return BLOCKED
        self.pending = None
        out.append((CANCEL, STALL))
        out.append((RESUME_BACKEND,))
        out.append((ARM, READ))
        return RESPONDING

    def _drain_final(self, out):
        if not self._send_held(out):
            return FLUSHING
        if self.pending:
            out.append((ARM, STALL))
            return FLUSHING
        self.pending = None
        out.append((CANCEL, STALL))
        return self._end_response(out)

    def _trailers(self, out, headers):
        try:
            self.pending_trailers = gate.check_response_trailers(headers)
        except Refused as refused:
            return self._broken(out, refused.reason, refused.detail)
        return self.state

    def _truncated(self):
        return self.response_length is not None and self.response_seen != self.response_length

    def _complete(self, out):
        if self._truncated():
            return self._broken(out, "bad_response", "body shorter than Content-Length")
        self.attached = False
        out.append((CANCEL, READ))
        out.append((RELEASE_BACKEND,))
        return self._end_response(out)

    def _backend_done(self, out):
        if self._truncated():
            return self._broken(out, "bad_response", "body shorter than Content-Length")
        self.attached = False
        out.append((RELEASE_BACKEND,))
        return FLUSHING

    def _end_response(self, out):
        out.append((END_RESPONSE, self.pending_trailers))
        if not self.request_ended:
            # RFC 9113 §8.1: a complete response before the request ended; ask the client to
            # stop sending (HTTP/1.1: the connection closes, its body is not read).
            out.append((RESET, NO_ERROR))
        return self._finish(out)

    # -- failures ------------------------------------------------------------------------------
    def _fail(self, out, reason, detail="", extra_headers=()):
        """Answer with the table's error when the head is still ours to send, else reset.

        On HTTP/2 and SPDY a malformed request (a reason whose reset code is PROTOCOL_ERROR:
        length mismatch, bad trailers, a writer refusal) is a stream error (RFC 9113 §8.1.1):
        reset, not answered.
        """
        row = outcome(reason)
        if self.state in (RESPONDING, BLOCKED, FLUSHING) or (
                self.family != gate.HTTP1 and row.reset_code == PROTOCOL_ERROR):
            return self._broken(out, reason, detail)
        self.reason = reason
        out.append((LOG, reason, detail))
        out.append((CANCEL, READ))
        if self.state is ROUTING:
            out.append((CANCEL_WAIT,))
        if self.attached:
            self.attached = False
            out.append((DISCARD_BACKEND,))
        status, headers, body = error_response(reason, extra_headers)
        self.status = status
        if self.request.method == b"HEAD":
            out.append((RESPOND, status, headers, True))
            if not self.request_ended:
                out.append((RESET, NO_ERROR))
            return self._finish(out)
        out.append((RESPOND, status, headers, False))
        self.pending = bytearray(body)
        self.pending_trailers = ()
        if self._send_held(out) and not self.pending:
            self.pending = None
            return self._end_response(out)
        out.append((ARM, STALL))  # the answer waits for the client's window like any body
        return FLUSHING

    def _broken(self, out, reason, detail=""):
        """Reset the client's stream (its response started, or it was malformed), drop the
        backend side."""
        self.reason = self.reason or reason
        if not self.status:
            self.status = outcome(reason).status
        out.append((LOG, reason, detail))
        if self.state is ROUTING:
            out.append((CANCEL_WAIT,))
        if self.attached:
            self.attached = False
            out.append((DISCARD_BACKEND,))
        out.append((RESET, outcome(reason).reset_code))
        return self._finish(out)

    def _timeout(self, out):
        return self._fail(out, "backend_timeout")

    def _lost_after_head(self, out, unprocessed, reused, got_response):
        self.attached = False
        return self._broken(out, "backend_failed", "connection lost during the response")

    def _invalid(self, out, reason, detail=""):
        return self._fail(out, reason, detail)

    def _stalled(self, out):
        return self._broken(out, "client_stalled", "no window for the response")

    def _abort(self, out):
        if not self.status:
            self.status = outcome("client_gone").status
        self.reason = self.reason or "client_gone"
        if self.state is ROUTING:
            out.append((CANCEL_WAIT,))
        if self.attached:
            self.attached = False
            out.append((DISCARD_BACKEND,))
        return self._finish(out)

    # -- helpers -------------------------------------------------------------------------------
    def _send_or_hold(self, out, data):
        """Send what the client's window takes of ``data``; hold the rest and pause the backend.
        True when all of it went."""
        window = self.window()
        size = len(data)
        if window >= size:
            out.append((SEND, data))
            self.sent += size
            return True
        if window > 0:
            out.append((SEND, data[:window]))
            self.sent += window
            data = data[window:]
        self.pending = bytearray(data)
        out.append((PAUSE_BACKEND,))
        return False

    def _ack(self, out):
        if self.unacked:
            out.append((ACK, self.unacked))
            self.unacked = 0

    def _pause_client(self, out):
        if not self.client_paused:
            self.client_paused = True
            out.append((PAUSE_CLIENT,))

    def _finish(self, out):
        self._ack(out)
        if self.client_paused:
            self.client_paused = False
            out.append((RESUME_CLIENT,))
        self.pending = None
        self.early = []
        out.append((FINISH,))
        return DONE

    def _ignore(self, out, *args):
        return self.state

    def abandon(self, unexecuted=()):
        """The relay ends the stream by force (carrying out an input's commands raised, and so
        did the failure's): the stream is DONE; return the commands still owed to the client,
        those of its end that ``unexecuted`` (the commands after the one that raised) held
        back or that no end ran yet: the acknowledgement of the request bytes counted
        (unacknowledged, a 3.1 session or HTTP/2 connection window shrinks for good) and
        ``RESUME_CLIENT`` when the stream had paused a client without flow control (else it
        stays paused: its other streams and requests are never read)."""
        out = []
        owed = self.unacked + sum(c[1] for c in unexecuted if c[0] is ACK)
        self.unacked = 0
        if owed:
            out.append((ACK, owed))
        if self.client_paused or any(c[0] is RESUME_CLIENT for c in unexecuted):
            self.client_paused = False
            out.append((RESUME_CLIENT,))
        self.state = DONE
        self.pending = None
        self.early = []
        return out


M = StreamMachine
_FAILED = frozenset((FLUSHING, DONE))

#: (state, input) -> (handler, states it may lead to). Pairs not listed are illegal.
TRANSITIONS = {
    # IDLE: the request passed the gate.
    (IDLE, START): (M._start, {ROUTING}),
    (IDLE, FAIL): (M._fail, _FAILED),
    (IDLE, CLIENT_RESET): (M._abort, {DONE}),
    # ROUTING: waiting for a backend connection.
    (ROUTING, READY): (M._attach, {AWAITING}),
    (ROUTING, UNREACHABLE): (M._unreachable, {ROUTING} | _FAILED),
    (ROUTING, BUSY): (M._busy, _FAILED),
    (ROUTING, REQ_DATA): (M._buffer, {ROUTING} | _FAILED),
    (ROUTING, REQ_END): (M._request_end, {ROUTING} | _FAILED),
    (ROUTING, WINDOW): (M._ignore, {ROUTING}),
    (ROUTING, READ_TIMEOUT): (M._timeout, _FAILED),
    (ROUTING, CLIENT_RESET): (M._abort, {DONE}),
    (ROUTING, FAIL): (M._fail, _FAILED),
    # AWAITING: the backend has the request; no response head yet.
    (AWAITING, REQ_DATA): (M._forward, {AWAITING} | _FAILED),
    (AWAITING, REQ_END): (M._request_end, {AWAITING} | _FAILED),
    (AWAITING, WRITTEN): (M._written, {AWAITING}),
    (AWAITING, INFO): (M._inform, {AWAITING}),
    (AWAITING, HEAD): (M._head, {RESPONDING} | _FAILED),
    (AWAITING, WHOLE): (M._whole, _FAILED),  # HEAD, DATA, END: DONE, or FLUSHING when held
    (AWAITING, LOST): (M._lost_before_head, {ROUTING} | _FAILED),
    (AWAITING, INVALID): (M._invalid, _FAILED),
    (AWAITING, READ_TIMEOUT): (M._timeout, _FAILED),
    (AWAITING, WINDOW): (M._ignore, {AWAITING}),
    (AWAITING, CLIENT_RESET): (M._abort, {DONE}),
    (AWAITING, FAIL): (M._fail, _FAILED),
    (AWAITING, UPGRADED): (M._switch, {TUNNEL} | _FAILED),
    # RESPONDING: streaming the response; nothing held.
    (RESPONDING, DATA): (M._deliver, {RESPONDING, BLOCKED, DONE}),
    (RESPONDING, TRAILERS): (M._trailers, {RESPONDING, DONE}),
    (RESPONDING, END): (M._complete, {DONE}),
    (RESPONDING, REQ_DATA): (M._forward, {RESPONDING, DONE}),
    (RESPONDING, REQ_END): (M._request_end, {RESPONDING, DONE}),
    (RESPONDING, WRITTEN): (M._written, {RESPONDING}),
    (RESPONDING, WINDOW): (M._ignore, {RESPONDING}),
    (RESPONDING, LOST): (M._lost_after_head, {DONE}),
    (RESPONDING, INVALID): (M._broken, {DONE}),
    (RESPONDING, READ_TIMEOUT): (M._timeout, {DONE}),
    (RESPONDING, CLIENT_RESET): (M._abort, {DONE}),
    (RESPONDING, FAIL): (M._fail, {DONE}),
    # BLOCKED: response bytes held for a shut client window; the backend is paused.
    (BLOCKED, DATA): (M._hold, {BLOCKED, DONE}),
    (BLOCKED, WINDOW): (M._drain, {BLOCKED, RESPONDING}),
    (BLOCKED, TRAILERS): (M._trailers, {BLOCKED, DONE}),
    (BLOCKED, END): (M._backend_done, {FLUSHING, DONE}),
    (BLOCKED, REQ_DATA): (M._forward, {BLOCKED, DONE}),
    (BLOCKED, REQ_END): (M._request_end, {BLOCKED, DONE}),
    (BLOCKED, WRITTEN): (M._written, {BLOCKED}),
    (BLOCKED, LOST): (M._lost_after_head, {DONE}),
    (BLOCKED, INVALID): (M._broken, {DONE}),
    (BLOCKED, STALL_TIMEOUT): (M._stalled, {DONE}),
    (BLOCKED, CLIENT_RESET): (M._abort, {DONE}),
    (BLOCKED, FAIL): (M._fail, {DONE}),
    # FLUSHING: no backend any more; held bytes wait for the client.
    (FLUSHING, WINDOW): (M._drain_final, {FLUSHING, DONE}),
    (FLUSHING, REQ_DATA): (M._drop, {FLUSHING}),
    (FLUSHING, REQ_END): (M._ignore, {FLUSHING}),
    (FLUSHING, READY): (M._release_late, {FLUSHING}),  # the connect it had asked for came
    (FLUSHING, UNREACHABLE): (M._ignore, {FLUSHING}),  # ... or failed: answered already
    (FLUSHING, STALL_TIMEOUT): (M._stalled, {DONE}),
    (FLUSHING, CLIENT_RESET): (M._abort, {DONE}),
    (FLUSHING, FAIL): (M._fail, {DONE}),
    # TUNNEL: the backend switched protocols; bytes flow both ways.
    (TUNNEL, REQ_DATA): (M._pipe_up, {TUNNEL}),
    (TUNNEL, REQ_END): (M._request_end, {TUNNEL, DONE}),
    (TUNNEL, WRITTEN): (M._written, {TUNNEL}),
    (TUNNEL, DATA): (M._pipe_down, {TUNNEL, TUNNEL_BLOCKED}),
    (TUNNEL, WINDOW): (M._ignore, {TUNNEL}),
    (TUNNEL, END): (M._tunnel_end, {DONE}),
    (TUNNEL, LOST): (M._tunnel_lost, {DONE}),
    (TUNNEL, INVALID): (M._tunnel_broken, {DONE}),
    (TUNNEL, IDLE_TIMEOUT): (M._tunnel_idle, {DONE}),
    (TUNNEL, CLIENT_RESET): (M._tunnel_closed, {DONE}),
    (TUNNEL, FAIL): (M._tunnel_broken, {DONE}),
    # TUNNEL_BLOCKED: backend bytes held for a shut client window; the backend is paused.
    (TUNNEL_BLOCKED, REQ_DATA): (M._pipe_up, {TUNNEL_BLOCKED}),
    (TUNNEL_BLOCKED, REQ_END): (M._request_end, {TUNNEL_BLOCKED, DONE}),
    (TUNNEL_BLOCKED, WRITTEN): (M._written, {TUNNEL_BLOCKED}),
    (TUNNEL_BLOCKED, DATA): (M._tunnel_hold, {TUNNEL_BLOCKED}),
    (TUNNEL_BLOCKED, WINDOW): (M._tunnel_drain, {TUNNEL_BLOCKED, TUNNEL}),
    (TUNNEL_BLOCKED, END): (M._tunnel_end, {FLUSHING}),
    (TUNNEL_BLOCKED, LOST): (M._tunnel_lost, {DONE}),
    (TUNNEL_BLOCKED, INVALID): (M._tunnel_broken, {DONE}),
    (TUNNEL_BLOCKED, IDLE_TIMEOUT): (M._tunnel_idle, {DONE}),
    (TUNNEL_BLOCKED, CLIENT_RESET): (M._tunnel_closed, {DONE}),
    (TUNNEL_BLOCKED, FAIL): (M._tunnel_broken, {DONE}),
    # DONE: late inputs.
    (DONE, READY): (M._release_late, {DONE}),
    (DONE, REQ_DATA): (M._drop, {DONE}),
}
for _event in INPUTS:
    if _event not in (READY, REQ_DATA):
        TRANSITIONS[(DONE, _event)] = (M._ignore, {DONE})
del _event
# The same table indexed by state, then input (one dict lookup less per input, no tuple key).
_BY_STATE = {state: {} for state in STATES}
for (_state, _event), _entry in TRANSITIONS.items():
    _BY_STATE[_state][_event] = _entry
del _state, _event, _entry
