"""Listeners: the Twisted factories that accept clients, and the backend balancer they share.

Strategy: a :class:`Listener` is a protocol factory holding everything a client connection needs
(codec settings, header policy, timeouts, the shared :class:`Balancer`, the access log); TLS
listeners wrap it in ``TLSMemoryBIOFactory`` with :class:`proxyd.net.tls.ServerContextFactory`.
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


def make_balancer(reactor, config):
    """Build the backends of a config (HTTP/1.1 pools or HTTP/2 multiplexers) and a balancer."""
    limits = config.limits
    backends = []
    for b in config.backends:
        if b.protocol == "h2":
            endpoint = client_endpoint(reactor, b, config.timeouts.backend_connect)
            backends.append(H2Backend(reactor, b, endpoint, max_pending=limits.max_pending_requests,
                                      max_header_list_size=limits.max_header_list_size,
                                      connect_timeout=config.timeouts.backend_connect))
        else:
            backends.append(Backend(reactor, b, connect_timeout=config.timeouts.backend_connect,
                                    max_pending=limits.max_pending_requests,
                                    max_header_list_size=limits.max_header_list_size))
    return Balancer(backends)


class Listener(Factory):
    """Factory of :class:`FrontendProtocol` for one ``listen:`` entry."""

    noisy = False

    def __init__(self, reactor, listen, config, balancer, access_log, requests_per_ip=None,
                 connection_counter=None, worker_buckets=((), ())):
        self.clock = reactor
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
        self.access_log = access_log
        self.connections = set()
        self.metrics_requests = 0
        self.metrics_rate_limited = 0
        self.metrics_flood_closed = 0
        self.metrics_timeouts = 0
        self._last_timeout_log = float("-inf")
        self.requests_per_ip = requests_per_ip
        self.connection_counter = connection_counter
        self.metrics_refused_connections = 0
        self._last_refusal_log = float("-inf")
        self.refusals = {}  # reason -> count: requests refused by the gate and the limits
        self.internal_errors = 0  # streams ended by an unexpected exception (a bug)

    def buildProtocol(self, addr):
        return FrontendProtocol(self)

    def admit(self, client_ip):
        """Count a new client connection; False (and a rate-limited log line) when over a limit."""
        if self.connection_counter is None or self.connection_counter.try_open(client_ip):
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
        if self.connection_counter is not None:
            self.connection_counter.close(client_ip)

    def log_access(self, frontend, stream):
        """Write the access-log line of a finished stream."""
        if self.access_log is not None:
            self.access_log.write(frontend, stream, self.clock.seconds())

    def count_refusal(self, reason):
        """Count a request refused for ``reason`` (a key of :data:`proxyd.errors.OUTCOMES`)."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def log_refusal(self, frontend, request, status):
        """The access-log line of a request refused before it had a relay (HTTP/2, SPDY)."""
        if self.access_log is not None:
            now = self.clock.seconds()
            self.access_log.write(frontend, _Refused(request, status, now), now)


class _Refused:
    """What the access log reads of a request the gate refused (no relay, no backend)."""

    __slots__ = ("request", "status", "sent_bytes", "started", "backend_started", "backend")

    def __init__(self, request, status, now):
        self.request = request
        self.status = status
        self.sent_bytes = 0
        self.started = self.backend_started = now
        self.backend = None


def wrap_tls(factory, listen, index):
    """Wrap a listener factory in TLS when its config asks for it."""
    if listen.tls is None:
        return factory
    context = ServerContextFactory(listen.tls.cert, listen.tls.key, listen.protocols,
                                   path=f"listen[{index}]")
    return TLSMemoryBIOFactory(context, False, factory)
