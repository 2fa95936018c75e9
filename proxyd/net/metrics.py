"""Metrics and health endpoint (``metrics:`` in the config): Prometheus text and a health check.

Strategy: the numbers live where they are made: listeners count connections, bytes and
refusals in plain attributes, pool states hold their sizes, :mod:`proxyd.stats` keeps request
counts and histograms. Nothing is exported until a scrape: :func:`snapshot` reads those objects
into plain data (JSON: a worker sends it to its supervisor, which adds the workers up with
:func:`proxyd.stats.merge`), :class:`SnapshotCollector` is a prometheus_client custom collector
that yields metric families from such data, and prometheus_client's own ``generate_latest``
writes the text, so every label value (listener endpoints such as
``tcp6:8443:interface=\\:\\:1`` included) is escaped by the exposition rules of the library,
never by hand. Process metrics (CPU, memory, open files) come from the library's process,
platform and GC collectors, for the process that serves the endpoint (with workers: the
supervisor; the workers' CPU time and memory are summed in ``proxyd_workers_cpu_seconds_total``
and ``proxyd_workers_resident_memory_bytes``).

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

With workers, counters and gauges are the sums over all workers (counters include workers that
exited), ``proxyd_build_info`` counts the workers running each version (after an upgrade and a
reload, old and new side by side while the old ones drain), and the supervisor adds:

    proxyd_workers{state}                                       serving, starting, draining
    proxyd_worker_restarts_total                                workers started after a crash
    proxyd_workers_cpu_seconds_total, proxyd_workers_resident_memory_bytes
"""

import os
import platform
import resource

import twisted
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

import proxyd

log = Logger(namespace="proxyd.metrics")
_MAX_REQUEST = 8192
# Counters of a listener object: (snapshot key, attribute).
_LISTENER_COUNTERS = (
    ("requests", "metrics_requests"), ("received", "bytes_received"), ("sent", "bytes_sent"),
    ("accepted", "metrics_accepted"), ("rate_limited", "metrics_rate_limited"),
    ("refused_connections", "metrics_refused_connections"),
    ("flood_closed", "metrics_flood_closed"), ("timeouts", "metrics_timeouts"),
)
_PER_LISTENER = (
    ("proxyd_rate_limited", "rate_limited", "rate_limited",
     "Requests refused with 429 by requests_per_ip."),
    ("proxyd_refused_connections", "refused_connections", "max_connections",
     "Connections closed at accept by max_connections(_per_ip)."),
    ("proxyd_flood_closed", "flood_closed", "flood",
     "Connections closed because the client queued output it never read."),
    ("proxyd_timeout_closed", "timeouts", "frontend_timeout",
     "Connections closed by frontend_header or frontend_idle."),
)


def snapshot(service):
    """Everything the metrics of one :class:`proxyd.service.ProxyService` show, as plain data
    (JSON): the numbers of :mod:`proxyd.stats`, plus the listeners' counters, open connections
    and streams by protocol, and the backend pools. Workers send this to their supervisor."""
    data = service.stats.snapshot()
    listeners = {}
    for listener in service.all_listeners():
        fields = listeners.setdefault(listener.endpoint, {"open": {}})
        for key, attribute in _LISTENER_COUNTERS:
            fields[key] = fields.get(key, 0) + getattr(listener, attribute)
        for conn in listener.connections:
            protocol = conn.codec.protocol if conn.codec is not None else "none"
            counts = fields["open"].setdefault(protocol, [0, 0])
            counts[0] += 1
            counts[1] += len(conn.streams)
    pools = {}
    for backend in service.balancer.backends:
        state = backend.state
        idle = len(state.idle)
        pool = pools.setdefault(backend.config.address, {"total": 0, "idle": 0, "busy": 0,
                                                         "waiting": 0})
        for name, value in (("total", state.total), ("idle", idle),
                            ("busy", state.total - idle), ("waiting", len(state.waiting))):
            pool[name] += value
    channel = getattr(service, "shared", None)
    if channel is not None:
        data["shared_limits"] = {"fallbacks": dict(channel.fallbacks), "up": int(channel.up),
                                 "channels": 1}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    data.update(listeners=listeners, pools=pools, draining=bool(service.draining),
                version=proxyd.__version__, pid=os.getpid(),
                process={"cpu_seconds": usage.ru_utime + usage.ru_stime,
                         "resident_bytes": _resident_bytes()})
    return data


def _resident_bytes():
    try:
        with open("/proc/self/statm", "rb") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _histogram(name, doc, label, series):
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in sorted(series.items()):
        family.add_metric([value], [tuple(b) for b in hist["buckets"]], sum_value=hist["sum"])
    return family


class SnapshotCollector:
    """Yields proxyd's metric families from a snapshot (one process's, or a merged one)."""

    def __init__(self, data, workers=None):
        self.data = data
        self.workers = workers

    def collect(self):
        """Yield every proxyd metric family (prometheus_client's collector protocol)."""
        data = self.data
        yield from self._requests(data)
        yield from self._clients(data)
        yield from self._refusals(data)
        yield from self._backends(data)
        yield from self._shared_limits(data)
        reloads = CounterMetricFamily("proxyd_reloads", "Configuration reloads (SIGHUP), by "
                                      "result.", labels=["result"])
        for result, count in sorted(data["reloads"].items()):
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily("proxyd_config_last_reload_successful",
                                "1 if the last reload applied (or none was tried), else 0.",
                                value=int(data["last_reload_ok"]))
        yield GaugeMetricFamily("proxyd_draining", "1 once a graceful shutdown started.",
                                value=int(data["draining"]))
        info = GaugeMetricFamily("proxyd_build_info", "Versions of proxyd and what it runs on "
                                 "(with workers: how many workers run each version).",
                                 labels=["version", "python", "twisted"])
        versions = data.get("versions") or {data.get("version", proxyd.__version__): 1}
        for version, count in sorted(versions.items()):
            info.add_metric([version, platform.python_version(), twisted.__version__], count)
        yield info
        if self.workers is not None:
            yield from self.workers()

    @staticmethod
    def _requests(data):
        finished = CounterMetricFamily(
            "proxyd_requests", "Finished requests by listener, frontend protocol, method class "
            "and status class.", labels=["listener", "protocol", "method", "code"])
        for *key, count in sorted(data["requests"]):
            finished.add_metric(key, count)
        yield finished
        received = CounterMetricFamily("proxyd_requests_received",
                                       "Requests received from clients.", labels=["listener"])
        for endpoint, fields in data["listeners"].items():
            received.add_metric([endpoint], fields["requests"])
        yield received
        yield _histogram("proxyd_request_duration_seconds", "Seconds from a request's head to "
                         "its last response byte, by frontend protocol.", "protocol",
                         data["durations"])
        yield _histogram("proxyd_backend_first_byte_seconds", "Seconds from sending a request to "
                         "a backend to its response head.", "backend", data["first_byte"])

    @staticmethod
    def _clients(data):
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
        for endpoint, fields in data["listeners"].items():
            received.add_metric([endpoint], fields["received"])
            sent.add_metric([endpoint], fields["sent"])
            accepted.add_metric([endpoint], fields["accepted"])
            by_protocol = fields.get("open") or {"none": [0, 0]}
            for protocol, (conns, open_streams) in sorted(by_protocol.items()):
                open_now.add_metric([endpoint, protocol], conns)
                streams.add_metric([endpoint, protocol], open_streams)
        yield from (received, sent, accepted, open_now, streams)

    @staticmethod
    def _refusals(data):
        totals = dict(data["refusals"])
        for name, key, reason, doc in _PER_LISTENER:
            family = CounterMetricFamily(name, doc, labels=["listener"])
            for endpoint, fields in data["listeners"].items():
                family.add_metric([endpoint], fields[key])
                totals[reason] = totals.get(reason, 0) + fields[key]
            yield family
        family = CounterMetricFamily("proxyd_refusals", "Requests and connections refused, by "
                                     "reason.", labels=["reason"])
        for reason, count in sorted(totals.items()):
            family.add_metric([reason], count)
        yield family

    @staticmethod
    def _backends(data):
        pool = GaugeMetricFamily("proxyd_backend_connections", "Backend connections (total = "
                                 "open or connecting; idle; busy) and requests waiting for one.",
                                 labels=["backend", "state"])
        up = GaugeMetricFamily("proxyd_backend_up", "1 unless the last attempt to connect to the "
                               "backend failed (passive health).", labels=["backend"])
        for address, states in data["pools"].items():
            for name in ("total", "idle", "busy", "waiting"):
                pool.add_metric([address, name], states[name])
            up.add_metric([address], int(data["backend_health"].get(address, True)))
        yield pool
        yield up

    @staticmethod
    def _shared_limits(data):
        shared = data.get("shared_limits")
        if shared is None:
            return
        fallbacks = CounterMetricFamily(
            "proxyd_shared_limit_fallbacks", "Per-IP limit decisions made without Redis "
            "(limits.shared), by reason: timeout, error, down, busy.", labels=["reason"])
        for reason, count in sorted(shared.get("fallbacks", {}).items()):
            fallbacks.add_metric([reason], count)
        yield fallbacks
        channels = shared.get("channels", 0)
        yield GaugeMetricFamily("proxyd_shared_limit_up", "1 while Redis answers the per-IP "
                                "limit updates (limits.shared; with workers: answers every "
                                "worker), 0 while instances limit alone.",
                                value=int(bool(channels) and shared.get("up", 0) == channels))


def worker_families(workers, process):
    """The supervisor's own families: workers by state, restarts after a crash, and the
    workers' CPU time and memory (``process``: the merged snapshot's sums)."""
    family = GaugeMetricFamily("proxyd_workers", "Worker processes: serving (accepting), "
                               "starting, draining (replaced by a reload).", labels=["state"])
    for state in ("serving", "starting", "draining"):
        family.add_metric([state], workers[state])
    yield family
    yield CounterMetricFamily("proxyd_worker_restarts", "Workers started again after their "
                              "process ended unexpectedly.", value=workers["restarts"])
    yield CounterMetricFamily("proxyd_workers_cpu_seconds", "CPU time (user and system) of "
                              "every worker, those that exited included.",
                              value=process.get("cpu_seconds", 0.0))
    yield GaugeMetricFamily("proxyd_workers_resident_memory_bytes", "Resident memory of the "
                            "running workers together.", value=process.get("resident_bytes", 0))


def render_snapshot(data, workers=None):
    """Prometheus text (format 0.0.4) of a snapshot, with this process's process, platform and
    GC collectors; ``workers`` is an optional callable yielding more families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(data, workers))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)


def render(service):
    """The metrics text of a single-process service."""
    return render_snapshot(snapshot(service))


#: Seconds a metrics client has for its whole connection (request and answer): scrapers need
#: far less, and an idle connection would otherwise hold a descriptor of the serving process
#: (the proxy itself with one worker) forever.
CONNECTION_TIMEOUT = 10.0


class MetricsProtocol(Protocol, TimeoutMixin):
    """Answers one HTTP/1.x request: metrics, health, 404 or 405; aborts a connection still
    open after :data:`CONNECTION_TIMEOUT`.

    ``service`` has ``metrics_text()`` (bytes, or a Deferred of them: a supervisor asks its
    workers first) and ``healthy()`` (False once draining); ``clock`` schedules the timeout.
    """

    def __init__(self, service, health_path, clock):
        self.service = service
        self.health_path = health_path.encode()
        self.buffer = b""
        self.answered = False
        self.callLater = clock.callLater  # TimeoutMixin's scheduler

    def connectionMade(self):
        self.setTimeout(CONNECTION_TIMEOUT)

    def connectionLost(self, reason=None):
        self.setTimeout(None)

    def dataReceived(self, data):
        if self.answered:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            if len(self.buffer) > _MAX_REQUEST:
                self.transport.loseConnection()
            return
        self.answered = True
        parts = self.buffer.split(b"\n", 1)[0].split(b" ")
        method = parts[0]
        path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
        if method not in (b"GET", b"HEAD"):
            self._answer(method, b"405 Method Not Allowed", b"only GET and HEAD\n")
        elif path == b"/metrics":
            done = defer.maybeDeferred(self.service.metrics_text)
            done.addCallback(lambda body: self._answer(method, b"200 OK", body,
                                                       CONTENT_TYPE_LATEST.encode()))
            done.addErrback(self._failed, method)
        elif path == self.health_path:
            if self.service.healthy():
                self._answer(method, b"200 OK", b"ok\n")
            else:
                self._answer(method, b"503 Service Unavailable", b"draining\n")
        else:
            self._answer(method, b"404 Not Found", b"not found\n")

    def _failed(self, failure, method):
        log.failure("metrics could not be collected", failure)
        self._answer(method, b"500 Internal Server Error", b"metrics unavailable\n")

    def _answer(self, method, status, body, content_type=b"text/plain; charset=utf-8"):
        if self.transport is None or not self.connected:
            return
        head = (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type +
                b"\r\ncontent-length: %d\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
                % len(body))
        self.transport.write(head if method == b"HEAD" else head + body)
        self.transport.loseConnection()


class MetricsFactory(Factory):
    """Builds :class:`MetricsProtocol` objects for one service."""

    noisy = False

    def __init__(self, service, health_path, clock):
        self.service = service
        self.health_path = health_path
        self.clock = clock

    def logPrefix(self):
        """Name in Twisted's "... starting on PORT" lines."""
        return "proxyd-metrics"

    def buildProtocol(self, addr):
        return MetricsProtocol(self.service, self.health_path, self.clock)


__all__ = ["MetricsFactory", "SnapshotCollector", "render", "render_snapshot", "snapshot"]
