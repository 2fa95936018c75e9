"""Routes at run time: the backend objects of every group, their health, and the route lookup.

Strategy: :func:`make_balancer` turns a configuration into one :class:`Routing`: a
:class:`proxyd.route.RouteTable` whose values are :class:`RouteState` objects (a
:class:`proxyd.route.Group` of backends, the header policies and read timeout of the route).
The frontend asks ``routing.route(authority, target)`` once per request (the table's own
``match``, bound: a single call, one dict lookup for exact hosts); the relay picks a backend from
the route's group. Top-level ``backends:`` are the default route. Decisions are pure (route.py);
this module wires them to backend objects and to :class:`proxyd.net.health.HealthMonitor`, which
owns every probe and check timer (started and stopped with the routing by the service).

A reload builds a new Routing; backends whose route, settings and address did not change are
reused with their warm pools and their health state.
"""

from dataclasses import replace

from twisted.logger import Logger

from proxyd.bridge import Policy
from proxyd.route import Group, Health, RouteTable
from proxyd.net.backend import Backend
from proxyd.net.backend_h2 import H2Backend
from proxyd.net.backend_tls import client_endpoint

log = Logger(namespace="proxyd.routing")


class RouteState:
    """One route at run time. ``policies[(tls, trusted)]`` is the translation policy for a
    client of a TLS (or cleartext) listener whose X-Forwarded-For is (or is not) trusted."""

    __slots__ = ("name", "group", "policies", "read_timeout", "check", "limits")

    def __init__(self, name, group, headers, config, read_timeout, check=None, limits=None):
        self.name = name
        self.limits = limits  # (read, write) buckets of each stream, or None
        self.group = group
        self.read_timeout = read_timeout
        self.check = check
        body = config.limits.max_request_body
        self.policies = {}
        for tls in (False, True):
            self.policies[(tls, True)] = Policy(headers=headers, tls=tls, max_request_body=body)
            # An untrusted client's X-Forwarded-For/Forwarded are replaced, its other
            # forwarding fields (X-Forwarded-Host ...) dropped.
            untrusted = headers
            if headers.x_forwarded_for == "append":
                untrusted = replace(untrusted, x_forwarded_for="replace")
            if getattr(headers, "forwarded", "off") == "append":
                untrusted = replace(untrusted, forwarded="replace")
            self.policies[(tls, False)] = Policy(headers=untrusted, tls=tls,
                                                 max_request_body=body, untrusted=True)


def outstanding(backend):
    """Requests in flight or waiting at ``backend`` (for least_outstanding)."""
    state = backend.state
    if isinstance(backend, H2Backend):
        conns = [*state.connections, *state.retired]
        return sum(len(c.channels) + c.reserved for c in conns) + len(state.waiting)
    return state.total - len(state.idle) + len(state.waiting)


class Routing:
    """Every route of one configuration (see the module docstring)."""

    def __init__(self, reactor, table, states, unrouted, stats=None):
        self.reactor = reactor
        self.unrouted = unrouted  # what answers requests no route matched (404)
        self.table = table
        self.route = table.match  # route(authority, target) -> RouteState or None
        self.states = states
        self.backends = [b for state in states for b in state.group.members]
        self.size = len(self.backends)
        self.monitor = None
        self.stats = stats

    def start(self, stats=None):
        """Start the active checks (and allow passive probes) of this configuration."""
        from proxyd.net.health import HealthMonitor

        if stats is not None:
            self.stats = stats
        if self.monitor is None:
            self.monitor = HealthMonitor(self.reactor, self)
            self.monitor.start()

    def stop(self):
        """Cancel every probe and check timer (a reload replaced us, or proxyd stops)."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def backend_failed(self, backend):
        """A connect to ``backend`` failed (passive health)."""
        health = getattr(backend, "health", None)
        if health is not None and health.failed(self.reactor.seconds()):
            self.marked_down(backend, "connections failed")

    def backend_ok(self, backend):
        """``backend`` answered a request (passive health)."""
        health = backend.health
        if health.fails and health.succeeded():
            self.marked_up(backend)

    def marked_down(self, backend, why):
        """``backend`` was just marked down: log it, count it, let the monitor probe it."""
        log.warn("backend {addr} marked down ({why}, {n} in a row); probing it again in "
                 "{t:.1f}s", addr=backend.config.address, why=why, n=backend.health.fails,
                 t=backend.health.backoff)
        if self.stats is not None:
            self.stats.backend_failed(backend.config.address)
        if self.monitor is not None:
            self.monitor.down(backend)

    def marked_up(self, backend):
        """``backend`` is healthy again."""
        log.info("backend {addr} is up again", addr=backend.config.address)
        if self.stats is not None:
            self.stats.backend_health[backend.config.address] = True

    def close_idle(self):
        """Close idle backend connections (shutdown)."""
        for backend in self.backends:
            backend.close_idle()


def _backend_key(b, config, route_key, connect_timeout, proxied):
    """What a backend object is built from: equal keys can share one pool across a reload."""
    limits = config.limits
    return (route_key, b, limits.max_pending_requests, limits.max_header_list_size,
            connect_timeout, proxied)


def _build(reactor, b, config, connect_timeout, proxied):
    limits = config.limits
    if b.protocol == "h2":
        endpoint = client_endpoint(reactor, b, connect_timeout)
        return H2Backend(reactor, b, endpoint, max_pending=limits.max_pending_requests,
                         max_header_list_size=limits.max_header_list_size,
                         connect_timeout=connect_timeout)
    if proxied:
        from proxyd.net.proxyheader import ProxyHeaderBackend as cls
    else:
        cls = Backend
    return cls(reactor, b, connect_timeout=connect_timeout,
               max_pending=limits.max_pending_requests,
               max_header_list_size=limits.max_header_list_size)


def make_balancer(reactor, config, reuse=()):
    """Build the :class:`Routing` of a config: backends (HTTP/1.1 pools or HTTP/2
    multiplexers) per route, groups, health and the route table.

    Backends of ``reuse`` (a previous routing's) built from the same settings are kept, with
    their warm connections and health; the others are new.
    """
    old = {backend.proxyd_key: backend for backend in reuse}
    timeouts = config.timeouts

    def group(route_key, backends, balance, passive, check, connect_timeout, proxied):
        members = []
        for b in backends:
            key = _backend_key(b, config, route_key, connect_timeout, proxied)
            backend = old.pop(key, None)
            if backend is None:
                backend = _build(reactor, b, config, connect_timeout, proxied)
                backend.proxyd_key = key
                # A lone backend without checks is never marked down (nowhere else to go).
                backend.health = Health(passive.max_fails, passive.backoff, passive.max_backoff,
                                        enabled=len(backends) > 1 or check is not None)
            members.append(backend)
        return Group(members, balance, load=outstanding)

    from proxyd.config_routes import PassiveHealth

    states = []
    default = None
    if config.backends:
        default = RouteState("default", group("default", config.backends, "round_robin",
                                              PassiveHealth(), None, timeouts.backend_connect,
                                              False),
                             config.headers, config, timeouts.backend_read)
        states.append(default)
    entries = []
    for route in config.routes:
        connect = route.timeouts.backend_connect or timeouts.backend_connect
        state = RouteState(route.name, group((route.host, route.path), route.backends,
                                             route.balance, route.passive_health,
                                             route.health_check, connect, route.proxy_protocol),
                           route.headers or config.headers, config,
                           route.timeouts.backend_read or timeouts.backend_read,
                           route.health_check, route.rate_limits)
        states.append(state)
        entries.append((route.host, route.path, state))
    nowhere = RouteState("-", Group([]), config.headers, config, timeouts.backend_read)
    return Routing(reactor, RouteTable(entries, default), states, nowhere)
