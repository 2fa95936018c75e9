"""Metrics and health endpoint (``metrics:`` in the config): Prometheus text and a health check.

Strategy: the numbers live where they are made: listeners count connections, bytes and
refusals in plain attributes, pool states hold their sizes, :mod:`proxyd.stats` keeps request
counts and histograms. Nothing is exported until a scrape: :class:`ProxyCollector` is a
prometheus_client custom collector that reads those objects and yields metric families, and
prometheus_client's own ``generate_latest`` writes the text, so every label value (listener
endpoints such as ``tcp6:8443:interface=\\:\\:1`` included) is escaped by the exposition rules
of the library, never by hand. Process metrics (CPU, memory, open files) come from the
library's process, platform and GC collectors. One registry per service.

The endpoint answers one HTTP/1.x request per connection and closes it: ``GET /metrics`` (also
HEAD), and the health path (``metrics.health_path``, default ``/healthz``), which is 200 while
proxyd serves and 503 once it drains (graceful shutdown), for load balancers.

Families (label values: ``listener`` = endpoint string of the config, ``backend`` = backend
address of the config, ``protocol`` in h2/spdy/3.1/spdy/3/spdy/2/http/1.1, ``method`` in the
common methods or ``other``, ``code`` in 1xx..5xx or ``none``, ``reason`` a registered refusal
reason, ``state`` in total/idle/busy/waiting):

    proxyd_requests_total{listener,protocol,method,code}       finished requests
    proxyd_requests_received_total{listener}                    requests received
    proxyd_request_duration_seconds{protocol}                   histogram, request to last byte
    proxyd_backend_first_byte_seconds{backend}                  histogram, request sent to head
    proxyd_client_received_bytes_total / _sent_bytes_total{listener}   bytes on client sockets
    proxyd_client_connections{listener,protocol}                open client connections
    proxyd_client_connections_accepted_total{listener}          connections accepted
    proxyd_client_streams{listener,protocol}                    streams in flight
    proxyd_backend_connections{backend,state}                   pool: total, idle, busy, waiting
    proxyd_backend_up{backend}                                  1 unless its last connect failed
    proxyd_refusals_total{reason}                               requests/connections refused
    proxyd_rate_limited_total, proxyd_refused_connections_total, proxyd_flood_closed_total,
    proxyd_timeout_closed_total{listener}                       the same refusals per listener
    proxyd_shared_limit_fallbacks_total{reason}, proxyd_shared_limit_up   limits.shared (Redis)
    proxyd_reloads_total{result}, proxyd_config_last_reload_successful
    proxyd_draining, proxyd_build_info{version,python,twisted}
"""

import platform

import twisted
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.internet.protocol import Factory, Protocol

import proxyd

_MAX_REQUEST = 8192
_PER_LISTENER = (
    ("proxyd_rate_limited", "metrics_rate_limited", "rate_limited",
     "Requests refused with 429 by requests_per_ip."),
    ("proxyd_refused_connections", "metrics_refused_connections", "max_connections",
     "Connections closed at accept by max_connections(_per_ip)."),
    ("proxyd_flood_closed", "metrics_flood_closed", "flood",
     "Connections closed because the client queued output it never read."),
    ("proxyd_timeout_closed", "metrics_timeouts", "frontend_timeout",
     "Connections closed by frontend_header or frontend_idle."),
)


def _histogram(name, doc, label, series):
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, snapshot in sorted(series.items()):
        family.add_metric([value], snapshot.cumulative(), sum_value=snapshot.sum)
    return family


class ProxyCollector:
    """Reads a :class:`proxyd.service.ProxyService` (and its stats) at scrape time."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        """Yield every proxyd metric family (prometheus_client's collector protocol)."""
        service = self.service
        stats = service.stats
        listeners = service.all_listeners()
        yield from self._requests(stats, listeners)
        yield from self._clients(listeners)
        yield from self._refusals(stats, listeners)
        yield from self._backends(service, stats)
        yield from self._shared_limits(service)
        reloads = CounterMetricFamily("proxyd_reloads", "Configuration reloads (SIGHUP), by "
                                      "result.", labels=["result"])
        for result, count in sorted(stats.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily("proxyd_config_last_reload_successful",
                                "1 if the last reload applied (or none was tried), else 0.",
                                value=int(stats.last_reload_ok))
        yield GaugeMetricFamily("proxyd_draining", "1 once a graceful shutdown started.",
                                value=int(service.draining))
        info = GaugeMetricFamily("proxyd_build_info", "Versions of proxyd and what it runs on.",
                                 labels=["version", "python", "twisted"])
        info.add_metric([proxyd.__version__, platform.python_version(), twisted.__version__], 1)
        yield info

    def _requests(self, stats, listeners):
        finished = CounterMetricFamily(
            "proxyd_requests", "Finished requests by listener, frontend protocol, method class "
            "and status class.", labels=["listener", "protocol", "method", "code"])
        for key, count in sorted(stats.requests.items()):
            finished.add_metric(list(key), count)
        yield finished
        received = CounterMetricFamily("proxyd_requests_received",
                                       "Requests received from clients.", labels=["listener"])
        for listener in listeners:
            received.add_metric([listener.endpoint], listener.metrics_requests)
        yield received
        yield _histogram("proxyd_request_duration_seconds", "Seconds from a request's head to "
                         "its last response byte, by frontend protocol.", "protocol",
                         stats.durations)
        yield _histogram("proxyd_backend_first_byte_seconds", "Seconds from sending a request to "
                         "a backend to its response head.", "backend", stats.first_byte)

    def _clients(self, listeners):
        received = CounterMetricFamily("proxyd_client_received_bytes",
                                       "Bytes read from clients (after TLS).", labels=["listener"])
        sent = CounterMetricFamily("proxyd_client_sent_bytes",
                                   "Bytes written to clients (before TLS).", labels=["listener"])
        accepted = CounterMetricFamily("proxyd_client_connections_accepted",
                                       "Client connections accepted.", labels=["listener"])
        open_now = GaugeMetricFamily("proxyd_client_connections", "Open client connections.",
                                     labels=["listener", "protocol"])
        streams = GaugeMetricFamily("proxyd_client_streams", "Client streams in flight.",
                                    labels=["listener", "protocol"])
        for listener in listeners:
            received.add_metric([listener.endpoint], listener.bytes_received)
            sent.add_metric([listener.endpoint], listener.bytes_sent)
            accepted.add_metric([listener.endpoint], listener.metrics_accepted)
            by_protocol = {}
            for conn in listener.connections:
                protocol = conn.codec.protocol if conn.codec is not None else "none"
                counts = by_protocol.setdefault(protocol, [0, 0])
                counts[0] += 1
                counts[1] += len(conn.streams)
            if not by_protocol:
                by_protocol["none"] = [0, 0]
            for protocol, (conns, open_streams) in sorted(by_protocol.items()):
                open_now.add_metric([listener.endpoint, protocol], conns)
                streams.add_metric([listener.endpoint, protocol], open_streams)
        yield from (received, sent, accepted, open_now, streams)

    def _refusals(self, stats, listeners):
        totals = dict(stats.refusals)
        for name, attribute, reason, doc in _PER_LISTENER:
            family = CounterMetricFamily(name, doc, labels=["listener"])
            for listener in listeners:
                value = getattr(listener, attribute)
                family.add_metric([listener.endpoint], value)
                totals[reason] = totals.get(reason, 0) + value
            yield family
        family = CounterMetricFamily("proxyd_refusals", "Requests and connections refused, by "
                                     "reason.", labels=["reason"])
        for reason, count in sorted(totals.items()):
            family.add_metric([reason], count)
        yield family

    def _backends(self, service, stats):
        pool = GaugeMetricFamily("proxyd_backend_connections", "Backend connections (total = "
                                 "open or connecting; idle; busy) and requests waiting for one.",
                                 labels=["backend", "state"])
        up = GaugeMetricFamily("proxyd_backend_up", "1 unless the last attempt to connect to the "
                               "backend failed (passive health).", labels=["backend"])
        for backend in service.balancer.backends:
            state = backend.state
            address = backend.config.address
            idle = len(state.idle)
            for name, value in (("total", state.total), ("idle", idle),
                                ("busy", state.total - idle), ("waiting", len(state.waiting))):
                pool.add_metric([address, name], value)
            up.add_metric([address], int(stats.backend_health.get(address, True)))
        yield pool
        yield up

    def _shared_limits(self, service):
        channel = getattr(service, "shared", None)
        if channel is not None:
            yield from _shared_limits_families(channel)


def _shared_limits_families(channel):
    fallbacks = CounterMetricFamily(
        "proxyd_shared_limit_fallbacks", "Per-IP limit decisions made without Redis "
        "(limits.shared), by reason: timeout, error, down, busy.", labels=["reason"])
    for reason, count in sorted(channel.fallbacks.items()):
        fallbacks.add_metric([reason], count)
    yield fallbacks
    yield GaugeMetricFamily("proxyd_shared_limit_up", "1 while Redis answers the per-IP limit "
                            "updates (limits.shared), 0 while each instance limits alone.",
                            value=int(channel.up))


def make_registry(service):
    """A registry with proxyd's collector and prometheus_client's process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(service):
    """The metrics text of a service (Prometheus text format 0.0.4)."""
    return generate_latest(service.metrics_registry)


class MetricsProtocol(Protocol):
    """Answers one HTTP/1.x request: metrics, health, 404 or 405."""

    def __init__(self, service, health_path):
        self.service = service
        self.health_path = health_path.encode()
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            if len(self.buffer) > _MAX_REQUEST:
                self.transport.loseConnection()
            return
        parts = self.buffer.split(b"\n", 1)[0].split(b" ")
        method = parts[0]
        path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
        content_type = b"text/plain; charset=utf-8"
        if method not in (b"GET", b"HEAD"):
            status, body = b"405 Method Not Allowed", b"only GET and HEAD\n"
        elif path == b"/metrics":
            status, body = b"200 OK", render(self.service)
            content_type = CONTENT_TYPE_LATEST.encode()
        elif path == self.health_path:
            if self.service.draining:
                status, body = b"503 Service Unavailable", b"draining\n"
            else:
                status, body = b"200 OK", b"ok\n"
        else:
            status, body = b"404 Not Found", b"not found\n"
        head = (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type +
                b"\r\ncontent-length: %d\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
                % len(body))
        self.transport.write(head if method == b"HEAD" else head + body)
        self.transport.loseConnection()


class MetricsFactory(Factory):
    """Builds :class:`MetricsProtocol` objects for one service."""

    noisy = False

    def __init__(self, service, health_path):
        self.service = service
        self.health_path = health_path

    def logPrefix(self):
        """Name in Twisted's "... starting on PORT" lines."""
        return "proxyd-metrics"

    def buildProtocol(self, addr):
        return MetricsProtocol(self.service, self.health_path)


__all__ = ["MetricsFactory", "ProxyCollector", "make_registry", "render"]
