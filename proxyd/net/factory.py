"""Listeners: the Twisted factories that accept clients, and the backend balancer they share.

Strategy: a :class:`Listener` is a protocol factory holding everything a client connection needs
(codec settings, header policy, timeouts, the shared :class:`Balancer`, the access log). It lives
as long as its endpoint stays in the configuration, so its counters survive reloads, and a
reload re-configures it in place (:meth:`Listener.configure`): new connections get the new
settings, and so do the new streams of connections already open (their balancer, header policy
and read timeout are swapped); streams in flight keep the backend connection they have. The port
listens with an :class:`Entrance`, which hands each connection to the listener itself or to the
``TLSMemoryBIOFactory`` around it, so a reload can swap certificates (a new context for new
handshakes) or turn TLS on and off without closing the socket.
The balancer spreads requests round-robin over the backends that can take one without waiting.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from proxyd.bridge import Policy
from proxyd.net.backend import Backend
from proxyd.net.backend_h2 import H2Backend
from proxyd.net.backend_tls import client_endpoint
from proxyd.net.frontend import FrontendProtocol
from proxyd.net.tls import ServerContextFactory
from proxyd.ratelimit import ConnectionCounter, TokenBucket
from proxyd.stats import Stats

log = Logger(namespace="proxyd.listener")


class Balancer:
    """Round-robin choice among backends, skipping those already tried for a request."""

    def __init__(self, backends):
        self.backends = backends
        self.size = len(backends)
        self._next = 0

    def pick(self, tried=()):
        """The next backend not in ``tried``, preferring one with a free connection."""
        backends = self.backends
        if self.size == 1:
            return backends[0]
        fallback = None
        for _ in range(self.size):
            backend = backends[self._next]
            self._next = (self._next + 1) % self.size
            if backend in tried:
                continue
            if backend.state.has_capacity():
                return backend
            fallback = fallback or backend
        return fallback or backends[0]

    def close_idle(self):
        """Close idle backend connections (shutdown)."""
        for backend in self.backends:
            backend.close_idle()


def _backend_key(b, config):
    """What a backend object is built from: equal keys can share one pool across a reload."""
    limits = config.limits
    return (b, limits.max_pending_requests, limits.max_header_list_size,
            config.timeouts.backend_connect)


def make_balancer(reactor, config, reuse=()):
    """Build the backends of a config (HTTP/1.1 pools or HTTP/2 multiplexers) and a balancer.

    Backends of ``reuse`` (a previous balancer's) built from the same settings are kept, with
    their warm connections; the others are new.
    """
    limits = config.limits
    backends = []
    old = {backend.proxyd_key: backend for backend in reuse}
    for b in config.backends:
        key = _backend_key(b, config)
        if key in old:
            backends.append(old.pop(key))
            continue
        if b.protocol == "h2":
            endpoint = client_endpoint(reactor, b, config.timeouts.backend_connect)
            backends.append(H2Backend(reactor, b, endpoint, max_pending=limits.max_pending_requests,
                                      max_header_list_size=limits.max_header_list_size,
                                      connect_timeout=config.timeouts.backend_connect))
        else:
            backends.append(Backend(reactor, b, connect_timeout=config.timeouts.backend_connect,
                                    max_pending=limits.max_pending_requests,
                                    max_header_list_size=limits.max_header_list_size))
        backends[-1].proxyd_key = key
    return Balancer(backends)


class Entrance(Factory):
    """The factory a port listens with: builds each connection through ``target`` (a
    :class:`Listener`, or the TLS factory wrapping it), which a reload may replace."""

    noisy = False

    def __init__(self, target):
        self.target = target

    def logPrefix(self):
        """Name in Twisted's "... starting on PORT" lines."""
        return "proxyd"

    def buildProtocol(self, addr):
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
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.rate_limits = config.rate_limits
        # Buckets shared by every connection of the process (worker_read, worker_write).
        self.worker_read, self.worker_write = (list(b) for b in worker_buckets)
        self.policy = Policy(headers=config.headers, tls=self.tls,
                             max_request_body=config.limits.max_request_body)
        self.entrance.target = tls_factory or self
        for conn in self.connections:
            # New streams of open connections follow the new configuration; per-connection
            # settings (codec limits, bandwidth buckets) stay what the connection started with.
            conn.balancer = balancer
            conn.policy = self.policy.with_client_subject(conn.policy.client_subject)
            conn.read_timeout = config.timeouts.backend_read

    def buildProtocol(self, addr):
        return FrontendProtocol(self)

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

    def note_timeout(self, which, client_ip):
        """Count a connection closed by a frontend timeout; log at most once a second."""
        self.metrics_timeouts += 1
        now = self.clock.seconds()
        if now - self._last_timeout_log >= 1.0:
            self._last_timeout_log = now
            log.info("closing connections after {which} ({n} so far; last {ip})", which=which,
                     n=self.metrics_timeouts, ip=client_ip.decode())

    def release(self, client_ip):
        """A counted client connection closed."""
        self.hub.connection_counter.close(client_ip)

    def backend_responded(self, stream):
        """A backend's response head arrived for ``stream``: time to first byte."""
        if stream.backend is not None:
            self.hub.stats.backend_first_byte(stream.backend.config.address,
                                              self.clock.seconds() - stream.backend_started)

    def backend_failed(self, backend):
        """Connecting to ``backend`` failed (passive health for the metrics)."""
        self.hub.stats.backend_failed(backend.config.address)

    def log_access(self, frontend, stream):
        """A stream finished: count it for the metrics and write its access-log line."""
        now = self.clock.seconds()
        protocol = frontend.codec.protocol
        self.hub.stats.request_finished(self.endpoint, protocol, stream.request.method,
                                        stream.status, now - stream.started)
        access_log = self.hub.access_log
        if access_log is not None:
            access_log.write(frontend, stream, now)

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
