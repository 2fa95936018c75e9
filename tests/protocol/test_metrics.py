"""Protocol tests of the metrics endpoint: prometheus_client writes (and escapes) the text,
counters and histograms follow traffic, and the health path flips to 503 while draining.

Strategy: a whole ProxyService on a MemoryReactorClock (memproxy.ServiceProxy); the metrics
listener's protocol is driven over a StringTransport, and its output is parsed with
prometheus_client's own parser, as Prometheus would.
"""

import json
import re

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from memproxy import parse_frames
from proxyd.net.metrics import render

IPV6_LISTENER = "tcp6:8081:interface=\\:\\:1"
QUOTED_LISTENER = 'unix:/tmp/proxyd "test".sock'
# A sample line of the text format, label values by the exposition rules: only \\, \" and \n
# are escapes (Prometheus' own parser rejects anything else, e.g. the \: of an IPv6 endpoint).
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                     r'(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? \S+$')


def scrape(proxy, path=b"/metrics", method=b"GET"):
    """(status line, body) of one request to the service's metrics listener."""
    factory = proxy.service._metrics_factory
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def samples(text):
    """{(name, frozenset(labels)): value} of every sample, parsed by prometheus_client."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def service_with_metrics(make_service, **sections):
    listen = [{"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": ["h2", "http/1.1"]},
              {"endpoint": IPV6_LISTENER}, {"endpoint": QUOTED_LISTENER}]
    return make_service(listen=listen, metrics={"endpoint": "tcp:9100:interface=127.0.0.1"},
                        **sections)


def test_odd_listener_labels_are_escaped_and_parse(make_service):
    """Listener endpoints with backslashes (an IPv6 interface) or quotes are valid label values:
    every sample line follows the exposition grammar, and the labels read back as the
    configured endpoint strings."""
    proxy = service_with_metrics(make_service)
    text = render(proxy.service).decode()
    bad = [line for line in text.splitlines()
           if line and not line.startswith("#") and not _SAMPLE.match(line)]
    assert bad == []
    parsed = samples(text)
    for endpoint in (IPV6_LISTENER, QUOTED_LISTENER):
        key = ("proxyd_client_connections", frozenset({("listener", endpoint),
                                                       ("protocol", "none")}))
        assert parsed[key] == 0
    assert 'listener="tcp6:8081:interface=\\\\:\\\\:1"' in text


def test_counters_and_histograms_move_with_traffic(make_service):
    """One h2 request through the proxy: received and finished request counters, the duration
    and backend first-byte histograms, bytes both ways and the pool gauges all move."""
    proxy = service_with_metrics(make_service)
    before = samples(scrape(proxy)[1].decode())
    client = proxy.h2_client()
    sid = client.request(path=b"/x")
    backend = proxy.backend()
    proxy.advance(0.25)
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    assert sid in {f.stream_id for f in parse_frames(client.read())}
    status, body = scrape(proxy)
    assert status == b"HTTP/1.1 200 OK"
    after = samples(body.decode())
    listener = "tcp:8080:interface=127.0.0.1"
    finished = ("proxyd_requests_total", frozenset({("listener", listener), ("protocol", "h2"),
                                                    ("method", "GET"), ("code", "2xx")}))
    assert before.get(finished, 0) == 0 and after[finished] == 1
    duration = ("proxyd_request_duration_seconds_count", frozenset({("protocol", "h2")}))
    assert after[duration] == 1
    le_01 = ("proxyd_request_duration_seconds_bucket",
             frozenset({("protocol", "h2"), ("le", "0.1")}))
    le_05 = ("proxyd_request_duration_seconds_bucket",
             frozenset({("protocol", "h2"), ("le", "0.5")}))
    assert (after[le_01], after[le_05]) == (0, 1)  # the clock moved 0.25 s
    ttfb = ("proxyd_backend_first_byte_seconds_count",
            frozenset({("backend", proxy.config.backends[0].address)}))
    assert after[ttfb] == 1
    for name in ("proxyd_client_received_bytes_total", "proxyd_client_sent_bytes_total"):
        key = (name, frozenset({("listener", listener)}))
        assert after[key] > before[key]
    idle = ("proxyd_backend_connections", frozenset({
        ("backend", proxy.config.backends[0].address), ("state", "idle")}))
    assert after[idle] == 1
    build = [k for k in after if k[0] == "proxyd_build_info"]
    assert build and after[build[0]] == 1


def test_health_answers_200_then_503_while_draining(make_service):
    """The health path is 200 while serving and 503 once a graceful stop began (the metrics
    listener stays open while connections drain); other paths are 404, POST is 405."""
    proxy = service_with_metrics(make_service)
    client = proxy.h2_client()
    client.request(path=b"/slow")
    proxy.backend()
    assert scrape(proxy, b"/healthz") == (b"HTTP/1.1 200 OK", b"ok\n")
    assert scrape(proxy, b"/nope")[0] == b"HTTP/1.1 404 Not Found"
    assert scrape(proxy, b"/metrics", b"POST")[0] == b"HTTP/1.1 405 Method Not Allowed"
    proxy.service.stopService()
    assert scrape(proxy, b"/healthz") == (b"HTTP/1.1 503 Service Unavailable", b"draining\n")
    draining = samples(scrape(proxy)[1].decode())[("proxyd_draining", frozenset())]
    assert draining == 1


def test_snapshots_of_two_workers_render_as_one_daemon(make_service):
    """What a supervisor serves: the JSON snapshots of two services (one with a request in
    flight, one with a finished request) merged, plus the supervisor's families; the text
    parses and every family is the sum."""
    from proxyd.net.metrics import render_snapshot, snapshot, worker_families
    from proxyd.stats import Stats, merge

    first, second = service_with_metrics(make_service), service_with_metrics(make_service)
    for proxy in (first, second):  # each worker process has its own numbers
        proxy.service.stats = proxy.service.hub.stats = Stats()
    busy = first.h2_client()
    busy.request(path=b"/slow")
    first.backend()
    done = second.h2_client()
    sid = done.request(path=b"/x")
    second.backend().respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sid in {f.stream_id for f in parse_frames(done.read())}
    wire = [json.loads(json.dumps(snapshot(proxy.service))) for proxy in (first, second)]
    data = merge(wire)
    workers = {"serving": 2, "starting": 0, "draining": 0, "restarts": 1}
    parsed = samples(render_snapshot(data, lambda: worker_families(workers, data["process"]))
                     .decode())
    listener = "tcp:8080:interface=127.0.0.1"

    def total(name, **labels):
        return sum(v for (n, lbls), v in parsed.items()
                   if n == name and set(labels.items()) <= lbls)

    assert total("proxyd_requests_received_total", listener=listener) == 2
    assert total("proxyd_requests_total", code="2xx") == 1
    assert total("proxyd_client_connections", listener=listener, protocol="h2") == 2
    assert total("proxyd_client_streams", listener=listener) == 1
    assert total("proxyd_build_info") == 2
    assert total("proxyd_workers", state="serving") == 2
    assert total("proxyd_worker_restarts_total") == 1
    assert total("proxyd_workers_cpu_seconds_total") > 0


def test_metrics_connections_time_out(make_service):
    """A connection to the metrics listener that never sends its request is aborted after
    CONNECTION_TIMEOUT (it held a descriptor of the serving process forever); one that was
    answered leaves no timer behind."""
    from proxyd.net.metrics import CONNECTION_TIMEOUT

    proxy = service_with_metrics(make_service)
    factory = proxy.service._metrics_factory
    idle = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    idle.makeConnection(transport)
    proxy.advance(CONNECTION_TIMEOUT - 0.5)
    assert not transport.disconnecting
    proxy.advance(1)
    assert transport.disconnecting
    idle.connectionLost(None)
    calls = len(proxy.reactor.getDelayedCalls())
    answered = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
    transport = StringTransport()
    answered.makeConnection(transport)
    answered.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answered.connectionLost(None)
    assert len(proxy.reactor.getDelayedCalls()) == calls
