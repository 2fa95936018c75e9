"""Admission of the request heads of a client connection: the gate, the route, the limits, a relay.

Strategy: every request head a client connection's codec reports (and the HTTP/1.1 request of
an h2c upgrade, :mod:`proxyd.net.upgrades`) goes through :meth:`RequestAdmission._on_request`,
in this order: an HTTP/1.1 request asking for h2c may switch the connection; the head stops the
connection's idle timeout; the gate (:mod:`proxyd.gate`) decides whether it may be forwarded at
all (a refusal never reaches a backend: HTTP/2 and SPDY streams are reset, HTTP/1.1 gets the
table's answer and the connection closes); a draining HTTP/2 or SPDY connection resets new
streams; the route step picks the backends and their policy (none: proxyd's own 404); the
per-IP request rate and the declared body size may refuse it with the table's answer; then its
:class:`proxyd.net.relay.Relay` starts. Every stream ends: an exception while a request is set up
(a bug in routing, translation or the relay's construction) answers that request alone with
``internal_error``, never the connection's other streams; a head that gets no stream restarts
the idle timeout, so one refused request and silence cannot hold a connection open.

:class:`RequestAdmission` is a part of :class:`proxyd.net.frontend.FrontendProtocol` (a mixin:
it reads the connection's own state), kept in its own module as one concept.
"""

from twisted.logger import Logger

from proxyd import accesslog, bridge
from proxyd import gate
from proxyd import h2c
from proxyd.errors import Refused, outcome
from proxyd.net.relay import Relay
from proxyd.net.upgrades import switch_to_h2c

log = Logger(namespace="proxyd.frontend")


class RequestAdmission:
    """The admission of request heads, a part of
    :class:`proxyd.net.frontend.FrontendProtocol` (see the module docstring)."""

    def _on_request(self, raw, family=None):
        """A raw request head: the gate, then a relay (``family``: the gate's rules, when they
        are not the connection's, as for the HTTP/1.1 request of an h2c upgrade)."""
        if (self.family is gate.HTTP1 and self.listener.h2c_upgrade and not self._draining
                and not self.streams):
            settings = h2c.upgrade_settings(raw)
            if settings is not None and switch_to_h2c(self, raw, settings):
                return
        self._timer.deadline = None  # no timeout while streams are open
        self.requests += 1
        listener = self.listener
        try:
            request = gate.check_request(raw, family or self.family, self.scheme,
                                         self.extended_connect)
        except Refused as refused:
            self._refuse(raw, refused)
            return
        if self._draining and self.family is not gate.HTTP1:
            listener.count_refusal("draining")
            self.codec.reset_stream(request.stream_id, outcome("draining").reset_code)
            return
        try:
            now = self.clock.seconds()
            route = self.balancer.route(request.authority, request.path)
            if route is None:  # no route and no default backends: 404 from proxyd itself
                listener.metrics_requests += 1
                listener.count_refusal("no_route")
                stream = Relay(self, request, None, now, self.balancer.unrouted)
                self.streams[request.stream_id] = stream
                stream.refuse("no_route")
                return
            policy = route.policies[self.route_key]
            if self.policy.client_subject is not None:  # a verified client certificate
                policy = policy.with_client_subject(self.policy.client_subject)
            breq = bridge.backend_request(request, client_ip=self.client_ip, policy=policy)
            stream = Relay(self, request, breq, now, route)
            self.streams[request.stream_id] = stream
            listener.metrics_requests += 1
            limiter = listener.requests_per_ip
            if limiter is not None:
                allowed, retry_after = limiter.allow(self.client_ip, now)
                if not allowed:
                    listener.metrics_rate_limited += 1
                    listener.count_refusal("rate_limited")
                    stream.refuse("rate_limited", "", [(b"retry-after", b"%d" % retry_after)])
                    return
            limit = self.policy.max_request_body
            if limit and request.content_length is not None and request.content_length > limit:
                listener.count_refusal("body_too_large")
                stream.refuse("body_too_large", f"declared {request.content_length} bytes")
                return
            if request.stream_id not in self._doomed:
                stream.start()
        except Exception:  # noqa: BLE001 - a bug ends this request, not the connection
            self._setup_failed(request)

    def _setup_failed(self, request):
        """An exception while ``request`` was being set up (route, translation, relay; a bug):
        it gets the table's ``internal_error`` answer like any stream that fails (HTTP/2 and
        SPDY: RST_STREAM INTERNAL_ERROR; HTTP/1.1: 500, then the connection closes), and the
        connection's other streams go on. Raised into a read, it would drop the connection and
        every stream on it; raised into the timed call that reads a pipelined request, it would
        leave that request unanswered and the connection without a timeout."""
        listener = self.listener
        listener.internal_errors += 1
        log.failure("{ip}: setting up a request; it is answered with an internal error",
                    ip=self.client_ip.decode())
        stream = self.streams.get(request.stream_id)
        if stream is None or stream.request is not request:
            if self.family is not gate.HTTP1:
                self.codec.reset_stream(request.stream_id, outcome("internal_error").reset_code)
                self._idle_unless_busy()
                return
            stream = Relay(self, request, None, self.clock.seconds(), self.balancer.unrouted)
            self.streams[request.stream_id] = stream
        if self.family is gate.HTTP1:
            self.codec.goaway()  # what the client sent after this head is not read
        stream.refuse("internal_error")

    def _refuse(self, raw, refused):
        """A head the gate refused: HTTP/2 and SPDY reset the stream, HTTP/1.1 answers and closes.

        Nothing of it reaches a backend; the access log records it with the table's status.
        """
        listener = self.listener
        listener.count_refusal(refused.reason)
        if listener.client_line_due():
            log.info("{ip}: {proto} request refused: {reason} ({detail})",
                     ip=self.client_ip.decode(), proto=self.codec.protocol,
                     reason=refused.reason, detail=refused.detail or outcome(refused.reason).phrase)
        request = accesslog.refused_request(raw)
        if self.family is not gate.HTTP1:
            # A malformed request is a stream error the client provoked: counted with its resets.
            self.codec.refuse_stream(raw.stream_id, outcome(refused.reason).reset_code)
            self._idle_unless_busy()  # no stream will end to restart the idle timeout
            listener.log_refusal(self, request, outcome(refused.reason).status)
            return
        self.codec.goaway()  # HTTP/1.1: the connection closes after the answer
        stream = Relay(self, request, None, self.clock.seconds(), self.balancer.unrouted)
        self.streams[raw.stream_id] = stream
        stream.refuse(refused.reason, refused.detail)

    def _idle_unless_busy(self):
        """A request head stopped the timeout (:meth:`_on_request`) but got no stream: with none
        open, the idle timeout runs again."""
        if not self.streams:
            self._timer.set(self.listener.timeouts.frontend_idle)
