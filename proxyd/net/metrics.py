"""Prometheus metrics endpoint (``metrics:`` in the config): ``GET /metrics`` in text format.

Strategy: the numbers already live in the objects (listeners count requests and hold their
connections, pool states hold their counts); this endpoint reads them when scraped, so counting
costs the hot path one integer increment. One request per connection, answered and closed.
"""

from twisted.internet.protocol import Factory, Protocol

_MAX_REQUEST = 8192


def render(service):
    """The metrics text of a :class:`proxyd.service.ProxyService`."""
    lines = [
        "# HELP proxyd_requests_total Requests received from clients, per listener.",
        "# TYPE proxyd_requests_total counter",
    ]
    for listener, listen in zip(service.listeners, service.config.listen):
        lines.append(f'proxyd_requests_total{{listener="{listen.endpoint}"}} {listener.metrics_requests}')
    lines += [
        "# HELP proxyd_rate_limited_total Requests refused with 429 by requests_per_ip.",
        "# TYPE proxyd_rate_limited_total counter",
    ]
    for listener, listen in zip(service.listeners, service.config.listen):
        lines.append(f'proxyd_rate_limited_total{{listener="{listen.endpoint}"}} {listener.metrics_rate_limited}')
    for name, attr, help_text in (
        ("proxyd_refused_connections_total", "metrics_refused_connections",
         "Connections closed at accept by max_connections(_per_ip)."),
        ("proxyd_flood_closed_total", "metrics_flood_closed",
         "Connections closed because the client queued output it never read."),
        ("proxyd_timeout_closed_total", "metrics_timeouts",
         "Connections closed by frontend_header or frontend_idle."),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for listener, listen in zip(service.listeners, service.config.listen):
            lines.append(f'{name}{{listener="{listen.endpoint}"}} {getattr(listener, attr)}')
    lines += [
        "# HELP proxyd_client_connections Open client connections, per listener.",
        "# TYPE proxyd_client_connections gauge",
    ]
    for listener, listen in zip(service.listeners, service.config.listen):
        lines.append(f'proxyd_client_connections{{listener="{listen.endpoint}"}} {len(listener.connections)}')
    lines += [
        "# HELP proxyd_backend_connections Backend connections (open or connecting), idle ones, "
        "and requests waiting for one.",
        "# TYPE proxyd_backend_connections gauge",
    ]
    for backend in service.balancer.backends:
        state = backend.state
        addr = backend.config.address
        lines.append(f'proxyd_backend_connections{{backend="{addr}",state="total"}} {state.total}')
        lines.append(f'proxyd_backend_connections{{backend="{addr}",state="idle"}} {len(state.idle)}')
        lines.append(f'proxyd_backend_connections{{backend="{addr}",state="waiting"}} {len(state.waiting)}')
    return ("\n".join(lines) + "\n").encode()


class MetricsProtocol(Protocol):
    """Answers one HTTP/1.x request: ``/metrics`` or 404."""

    def __init__(self, service):
        self.service = service
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer and b"\n\n" not in self.buffer:
            if len(self.buffer) > _MAX_REQUEST:
                self.transport.loseConnection()
            return
        parts = self.buffer.split(b" ", 2)
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            status, body = b"200 OK", render(self.service)
        else:
            status, body = b"404 Not Found", b"not found\n"
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; version=0.0.4\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        self.transport.loseConnection()


class _MetricsFactory(Factory):
    """Builds :class:`MetricsProtocol` objects for one service."""

    noisy = False

    def __init__(self, service):
        self.service = service

    def buildProtocol(self, addr):
        return MetricsProtocol(self.service)


def metrics_factory(service):
    """A factory serving the metrics of ``service``."""
    return _MetricsFactory(service)
