"""Listeners: the Twisted factories that accept clients, and the backend balancer they share.

Strategy: a :class:`Listener` is a protocol factory holding everything a client connection needs
(codec settings, header policy, timeouts, the shared routes and backends, the access log). It lives
as long as its endpoint stays in the configuration, so its counters survive reloads, and a
reload re-configures it in place (:meth:`Listener.configure`): new connections get the new
settings, and so do the new streams of connections already open (their routes, with the header
policies and read timeouts, are swapped); streams in flight keep the backend connection they
have. The port listens with an :class:`Entrance`, which hands each connection to the listener itself or to the
``TLSMemoryBIOFactory`` around it, so a reload can swap certificates (a new context for new
handshakes) or turn TLS on and off without closing the socket.
The "balancer" the listeners share is the :class:`proxyd.net.routing.Routing` of the
configuration (routes, backend groups, health); a ``proxy_protocol`` listener reads each
connection's PROXY header first (:mod:`proxyd.net.proxyheader`).
"""

import ipaddress

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from proxyd.bridge import Policy
from proxyd.net.frontend import FrontendProtocol
from proxyd.net.proxyheader import ProxyHeaderReceiver
from proxyd.net.routing import make_balancer  # noqa: F401 - the listeners' builder of routes
from proxyd.net.tls import ServerContextFactory
from proxyd.ratelimit import ConnectionCounter, TokenBucket
from proxyd.stats import Stats

log = Logger(namespace="proxyd.listener")
#: Lines about clients' errors (refused requests, broken connections, streams refused for the
#: client's reason) one listener writes to proxyd's log: a burst, then one a second. A client
#: chooses how many such errors it makes; the access log has a line per request and the
#: metrics count every refusal, so the log needs a sample, not a line each (nginx logs them at
#: ``info``, nghttpx at ``INFO``: both off by default).
CLIENT_LINES_BURST = 10
CLIENT_LINES_PER_SECOND = 1.0


class Entrance(Factory):
    """The factory a port listens with: builds each connection through ``target`` (a
    :class:`Listener`, or the TLS factory wrapping it), which a reload may replace."""

    noisy = False

    def __init__(self, target):
        self.target = target
        self.listener = None  # a proxy_protocol listener: its connections start with PROXY

    def logPrefix(self):
        """Name in Twisted's "... starting on PORT" lines."""
        return "proxyd"

    def buildProtocol(self, addr):
        if self.listener is not None:
            return ProxyHeaderReceiver(self.listener, self.target, addr)
        return self.target.buildProtocol(addr)


class Hub:
    """What all listeners of a process share: access log, stats, connection counter and
    per-IP request limiter (the service replaces them on reload)."""

    def __init__(self, access_log=None, requests_per_ip=None, connection_counter=None,
                 stats=None):
        self.access_log = access_log
        self.requests_per_ip = requests_per_ip
        if connection_counter is None:  # (a counter with no connection is falsy: __len__)
            connection_counter = ConnectionCounter(0, 0)
        self.connection_counter = connection_counter
        self.stats = Stats() if stats is None else stats


class Listener(Factory):
    """Factory of :class:`FrontendProtocol` for one ``listen:`` entry (one endpoint).

    ``Listener(reactor, listen, config, balancer, access_log)`` builds a standalone listener
    (tests); the service passes its shared ``hub`` instead of the last arguments.
    """

    noisy = False

    def __init__(self, reactor, listen, config, balancer, access_log=None, requests_per_ip=None,
                 connection_counter=None, worker_buckets=((), ()), hub=None, index=0,
                 context=None):
        self.clock = reactor
        self.endpoint = listen.endpoint
        if hub is None:
            hub = Hub(access_log, requests_per_ip, connection_counter)
        self.hub = hub
        self.connections = set()
        self.entrance = Entrance(self)
        self.metrics_requests = 0
        self.metrics_rate_limited = 0
        self.metrics_flood_closed = 0
        self.metrics_timeouts = 0
        self.metrics_refused_connections = 0
        self.metrics_accepted = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.refusals = {}  # reason -> count: requests refused by the gate and the limits
        self.internal_errors = 0  # streams ended by an unexpected exception (a bug)
        self._last_timeout_log = float("-inf")
        self._last_refusal_log = float("-inf")
        self._client_lines = TokenBucket(CLIENT_LINES_PER_SECOND, CLIENT_LINES_BURST,
                                         reactor.seconds())
        self.client_lines_held = 0  # lines about clients' errors not logged (since the last)
        self.configure(listen, config, balancer, worker_buckets, index, context)

    @property
    def connection_counter(self):
        """The process-wide counter of max_connections(_per_ip), shared by every listener."""
        return self.hub.connection_counter

    @property
    def requests_per_ip(self):
        """The process-wide per-client-IP request limiter, or None."""
        return self.hub.requests_per_ip

    def configure(self, listen, config, balancer, worker_buckets, index, context=None):
        """Apply a (new) configuration: ``listen`` is this endpoint's entry, ``index`` its place.

        ``context`` is the listener's TLS context when the caller built it already (a reload
        builds every context before it changes anything); otherwise it is built here first, so
        a bad certificate raises before anything changed.
        """
        tls_factory = None
        if listen.tls is not None:
            if context is None:
                context = tls_context(listen, index)
            tls_factory = TLSMemoryBIOFactory(context, False, self)
        self.listen = listen
        self.balancer = balancer
        self.tls = listen.tls is not None
        self.protocols = list(listen.protocols)
        # WebSocket over HTTP/2 (RFC 8441): HTTP/1.1 backends get an Upgrade, HTTP/2 backends
        # (client and bridge modes) an extended CONNECT; h2c upgrades only on cleartext
        # listeners that offer h2.
        self.connect_protocol = listen.enable_connect_protocol
        self.h2c_upgrade = (listen.h2c_upgrade and listen.tls is None
                            and "h2" in listen.protocols and "http/1.1" in listen.protocols)
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.rate_limits = config.rate_limits
        # Buckets shared by every connection of the process (worker_read, worker_write).
        self.worker_read, self.worker_write = (list(b) for b in worker_buckets)
        self.policy = Policy(headers=config.headers, tls=self.tls,
                             max_request_body=config.limits.max_request_body)
        self.entrance.target = tls_factory or self
        self.entrance.listener = self if listen.proxy_protocol else None
        self.trusted_proxies = config.trusted_proxies
        for conn in self.connections:
            # New streams of open connections follow the new configuration; per-connection
            # settings (codec limits, bandwidth buckets) stay what the connection started with.
            conn.balancer = balancer
            conn.policy = self.policy.with_client_subject(conn.policy.client_subject)
            # Trust is policy too: whether a client's X-Forwarded-For is extended follows the
            # new trusted_proxies (the TLS half of the key is the connection's own).
            conn.route_key = (conn.route_key[0], self.trusts(conn.client_ip.decode()))

    def buildProtocol(self, addr):
        protocol = FrontendProtocol(self)
        protocol.route_key = (self.tls, self.trusts(getattr(addr, "host", "")))
        return protocol

    def trusts(self, host):
        """True when ``host`` (an address) is in ``trusted_proxies``, or none are configured:
        then an incoming X-Forwarded-For is extended, else replaced."""
        if not self.trusted_proxies:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def admit(self, client_ip):
        """Count a new client connection; False (and a rate-limited log line) when over a limit."""
        if self.hub.connection_counter.try_open(client_ip):
            self.metrics_accepted += 1
            return True
        self.metrics_refused_connections += 1
        now = self.clock.seconds()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warn("refusing connections over limits.max_connections(_per_ip) "
                     "({n} refused so far; last from {ip})",
                     n=self.metrics_refused_connections, ip=client_ip.decode())
        return False

    def note_refused_header(self, detail, host):
        """A proxy_protocol connection closed (no, bad or untrusted header); logged at most once
        a second."""
        now = self.clock.seconds()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            log.warn("closing a proxy_protocol connection from {ip}: {detail}", ip=host,
                     detail=detail)

    def note_timeout(self, which, client_ip):
        """Count a connection closed by a frontend timeout; log at most once a second."""
        self.metrics_timeouts += 1
        now = self.clock.seconds()
        if now - self._last_timeout_log >= 1.0:
            self._last_timeout_log = now
            log.info("closing connections after {which} ({n} so far; last {ip})", which=which,
                     n=self.metrics_timeouts, ip=client_ip.decode())

    def client_line_due(self):
        """True when a line about one client's error may be logged now (see
        :data:`CLIENT_LINES_BURST`); otherwise the line is counted as held back, and the next
        line that is due comes after one that says how many were."""
        if not self._client_lines.try_take(1, self.clock.seconds()):
            self.client_lines_held += 1
            return False
        held = self.client_lines_held
        if held:
            self.client_lines_held = 0
            log.info("{n} lines about clients' errors held back (at most one a second after "
                     "{burst}; the access log and the metrics have every request)", n=held,
                     burst=CLIENT_LINES_BURST)
        return True

    def release(self, client_ip):
        """A counted client connection closed."""
        self.hub.connection_counter.close(client_ip)

    def backend_responded(self, stream):
        """A backend's response head arrived for ``stream``: time to first byte."""
        backend = stream.backend
        if backend is not None:
            self.hub.stats.backend_first_byte(backend.config.address,
                                              self.clock.seconds() - stream.backend_started)
            if backend.health.fails:
                self.balancer.backend_ok(backend)

    def backend_failed(self, backend):
        """Connecting to ``backend`` failed (passive health for the metrics)."""
        self.hub.stats.backend_failed(backend.config.address)
        self.balancer.backend_failed(backend)

    def log_access(self, frontend, stream):
        """A stream finished: count it for the metrics and write its access-log line.

        Never raises: a failure here (a bug in a formatter or a counter) is logged and counted,
        and the connection goes on (its idle timeout, its next pipelined request) as if the
        line had been written."""
        try:
            now = self.clock.seconds()
            protocol = frontend.codec.protocol
            self.hub.stats.request_finished(self.endpoint, protocol, stream.request.method,
                                            stream.status, now - stream.started)
            access_log = self.hub.access_log
            if access_log is not None:
                access_log.write(frontend, stream, now)
        except Exception:  # noqa: BLE001 - the stream is over whatever its log line does
            self.internal_errors += 1
            log.failure("access log and metrics of a finished stream")

    def count_refusal(self, reason):
        """Count a request refused for ``reason`` (a key of :data:`proxyd.errors.OUTCOMES`)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.hub.stats.refused(reason)

    def log_refusal(self, frontend, request, status):
        """A request refused before it had a relay (HTTP/2, SPDY): metrics and access log."""
        self.log_access(frontend, _Refused(request, status, self.clock.seconds()))


class _Refused:
    """What the access log reads of a request the gate refused (no relay, no backend)."""

    __slots__ = ("request", "status", "sent_bytes", "started", "backend_started", "backend")

    def __init__(self, request, status, now):
        self.request = request
        self.status = status
        self.sent_bytes = 0
        self.started = self.backend_started = now
        self.backend = None


def tls_context(listen, index):
    """The TLS contexts of listener ``index`` (raises ConfigError naming its keys)."""
    return ServerContextFactory(listen.tls, listen.protocols, path=f"listen[{index}]")


def worker_buckets(config, now):
    """The process-wide read and write buckets (empty tuples when unlimited)."""
    limits = config.rate_limits
    read = (TokenBucket(limits.worker_read.rate, limits.worker_read.burst, now),) \
        if limits.worker_read.rate else ()
    write = (TokenBucket(limits.worker_write.rate, limits.worker_write.burst, now),) \
        if limits.worker_write.rate else ()
    return read, write
