"""Routes, backend groups and health through the in-memory proxy (MemoryReactorClock): which
backend each request reaches, 404 without a route, a refused connect moved to the other backend,
passive health (down after max_fails, probed back with backoff), 503 with Retry-After when all
are down, and no timer of the health monitor left after it stops."""

import h11

from proxyd.net.health import HealthMonitor

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def routes(**extra):
    """Two apps by host and path; the first a group of two, the second one backend."""
    return [{"match": {"host": "shop.example.com", "path": "/"},
             "backends": [{"address": A}, {"address": B}], **extra},
            {"match": {"host": "*.example.com", "path": "/api/"}, "backends": [{"address": C}]}]


def get(proxy, host, path=b"/"):
    """One HTTP/1.1 request on a new client connection; returns the client."""
    client = proxy.h1_client()
    client.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
    return client


def status(client):
    """The status of the first response the client got (0 if none)."""
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    parser.receive_data(client.read())
    event = parser.next_event()
    return event.status_code if type(event) is h11.Response else 0, event


def port(proxy, index=-1):
    """The port of backend connection attempt ``index``."""
    return proxy.reactor.tcpClients[index][1]


def test_requests_go_to_the_route_of_their_host_and_path(make_proxy):
    """Host and path pick the group; the group alternates; other hosts use the default."""
    proxy = make_proxy(routes=routes())
    get(proxy, b"shop.example.com")
    get(proxy, b"shop.example.com", b"/cart")
    get(proxy, b"a.example.com", b"/api/x")
    get(proxy, b"elsewhere.org")
    assert [port(proxy, i) for i in range(4)] == [9001, 9002, 9003, 8081]


def test_no_route_is_404_from_proxyd(make_proxy):
    """Without top-level backends, a request no route matches gets proxyd's own 404."""
    proxy = make_proxy(routes=routes(), backends=None)
    client = get(proxy, b"elsewhere.org")
    code, head = status(client)
    assert code == 404 and proxy.connects == 0
    assert proxy.listener.refusals["no_route"] == 1


def test_h2_no_route_is_404_and_the_connection_goes_on(make_proxy):
    """An HTTP/2 stream without a route is answered 404; the next stream is routed."""
    proxy = make_proxy(routes=routes(), backends=None)
    client = proxy.h2_client()
    sid = client.request(authority=b"nowhere.org")
    events = client.pump()
    assert [dict(e.headers)[b":status"] for e in events if hasattr(e, "headers")
            and e.stream_id == sid] == [b"404"]
    client.request(authority=b"shop.example.com")
    assert port(proxy) == 9001


def test_refused_connect_moves_to_the_other_backend_and_marks_it_down(make_proxy):
    """A refused connect is retried on the other backend (the client never sees it); after
    max_fails refusals the backend is down and gets no request until a probe succeeds."""
    proxy = make_proxy(routes=routes(passive_health={"max_fails": 2, "backoff": "1s"}))
    proxy.balancer.start()
    try:
        b_conn = None
        for i in range(2):
            client = get(proxy, b"shop.example.com", b"/%d" % i)
            attempt = proxy.backend(connect=False)
            assert attempt.address[1] == 9001  # round robin starts at A each time
            attempt.refuse()
            if b_conn is None:  # the first time B is connected; then its pooled connection
                assert port(proxy) == 9002
                b_conn = proxy.backend()
            assert b_conn.requests()[0].target == b"/%d" % i
            b_conn.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            assert status(client)[0] == 200
        [a] = [b for b in proxy.balancer.backends if b.config.address == A]
        assert not a.health.up
        before = proxy.connects
        for i in range(3):  # every request goes to B, no attempt at A
            get(proxy, b"shop.example.com", b"/more%d" % i)
        assert {port(proxy, i) for i in range(before, proxy.connects)} <= {9002}
        proxy.advance(1.0)  # the probe of A is due: a connect attempt
        probe = proxy.backend(connect=False)
        assert probe.address[1] == 9001
        probe.connect()  # it succeeds: A is up again
        assert a.health.up
    finally:
        proxy.balancer.stop()
    assert not proxy.reactor.getDelayedCalls() or all(
        not call.func.__qualname__.startswith("HealthMonitor")
        for call in proxy.reactor.getDelayedCalls())


def test_all_down_is_503_with_retry_after(make_proxy):
    """When every backend of the group is down the request is refused at once: 503 with
    Retry-After, counted as no_healthy_backend."""
    proxy = make_proxy(routes=routes(passive_health={"max_fails": 1, "backoff": "4s"}))
    for backend in proxy.balancer.backends:
        if backend.config.address in (A, B):
            backend.health.failed(proxy.reactor.seconds())
    client = get(proxy, b"shop.example.com")
    code, head = status(client)
    assert code == 503 and dict(head.headers)[b"retry-after"] == b"4"
    assert proxy.connects == 0 and proxy.listener.refusals["no_healthy_backend"] == 1


def test_a_lone_backend_is_never_marked_down(make_proxy):
    """The default single backend keeps answering 502 (not 503) however often it refuses."""
    proxy = make_proxy()
    for i in range(5):
        client = get(proxy, b"example.com")
        proxy.backend(connect=False).refuse()
        assert status(client)[0] == 502
    assert proxy.balancer.backends[0].health.up


def test_least_outstanding_sends_to_the_idle_backend(make_proxy):
    """With one request in flight at A, the next goes to B, then whichever has fewer."""
    proxy = make_proxy(routes=routes(balance="least_outstanding"))
    get(proxy, b"shop.example.com")
    first = port(proxy)
    get(proxy, b"shop.example.com")
    assert {first, port(proxy)} == {9001, 9002}


def test_active_check_marks_a_500_backend_down_and_back(make_proxy):
    """Checks every interval: two 500s in a row mark B down; a 200 brings it back."""
    proxy = make_proxy(routes=routes(health_check={"path": "/healthz", "interval": "1s",
                                                   "timeout": "1s"},
                                     passive_health={"max_fails": 2}))
    proxy.balancer.start()
    monitor = proxy.balancer.monitor
    assert isinstance(monitor, HealthMonitor)
    [b] = [x for x in proxy.balancer.backends if x.config.address == B]

    def check_b(answer):
        while not any(x is b for x in monitor.looking):
            proxy.advance(0.5)
        index = max(i for i in range(proxy.connects) if port(proxy, i) == 9002)
        conn = proxy.backend(index)
        assert conn.received().startswith(b"GET /healthz HTTP/1.1\r\n")
        conn.respond(answer)

    check_b(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    assert b.health.up and b.health.fails == 1
    check_b(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    assert not b.health.up
    check_b(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert b.health.up
    proxy.balancer.stop()
    assert not monitor.calls and not monitor.looking


def test_route_write_limit_paces_each_stream(make_proxy):
    """A route's write limit: 16 KiB at once (the burst), the rest as the bucket refills, and
    no timer left once the stream is over."""
    limited = {"match": {"path": "/slow/"}, "backends": [{"address": C}],
               "rate_limits": {"write": {"rate": "16KiB", "burst": "16KiB"}}}
    proxy = make_proxy(routes=[limited])
    client = proxy.h2_client()
    sid = client.request(path=b"/slow/file")
    backend = proxy.backend()
    body = b"x" * 40000
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n" + body)

    def received():
        return sum(len(e.data) for e in client.pump() if getattr(e, "stream_id", 0) == sid
                   and hasattr(e, "data") and e.data is not None)

    got = received()
    assert got == 16384  # the burst; the rest is held by the stream machine
    progress = []
    for _ in range(5):  # (the clock in steps, as time passes)
        proxy.advance(0.5)
        got += received()
        progress.append(got)
    assert progress == [16384, 32768, 32768, 40000, 40000]
    assert not proxy.reactor.getDelayedCalls() or all(
        "StreamRate" not in repr(call.func) for call in proxy.reactor.getDelayedCalls())


def test_route_read_limit_holds_window_updates(make_proxy):
    """A route's read limit: request body bytes beyond the burst are acknowledged (the client's
    stream window reopened) only as the bucket refills."""
    limited = {"match": {"path": "/up/"}, "backends": [{"address": C}],
               "rate_limits": {"read": {"rate": "8KiB", "burst": "8KiB"}}}
    proxy = make_proxy(routes=[limited])
    client = proxy.h2_client()
    window = client.h2.remote_settings.initial_window_size
    size = window - 1000
    sid = client.request(method=b"POST", path=b"/up/x", body=b"y" * size, end_stream=False)
    backend = proxy.backend()
    backend.requests()
    client.pump()
    assert client.h2.local_flow_control_window(sid) < window // 2  # held back
    proxy.advance(size / 8192 + 2)  # enough refill for every byte
    client.pump()
    assert client.h2.local_flow_control_window(sid) > window // 2  # reopened


def test_active_check_over_http2(make_proxy):
    """An h2 backend is checked over HTTP/2: a GET of the health path on a stream; a 503
    answer (not in expect_status) counts as a failed check."""
    import h2.config
    import h2.connection
    import h2.events

    proxy = make_proxy(mode="bridge", backends=None, routes=[{
        "backends": [{"address": A, "protocol": "h2", "tls": False},
                     {"address": B, "protocol": "h2", "tls": False}],
        "health_check": {"path": "/hc", "interval": "1s", "expect_status": [204]},
        "passive_health": {"max_fails": 1}}])
    proxy.balancer.start()
    monitor = proxy.balancer.monitor
    while len(monitor.looking) < 2:
        proxy.advance(0.25)
    for index in range(proxy.connects):
        conn = proxy.backend(index)
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        events = server.receive_data(conn.received())
        [request] = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert (b":path", b"/hc") in request.headers
        status = b"204" if conn.address[1] == 9001 else b"503"
        server.send_headers(request.stream_id, [(b":status", status)], end_stream=True)
        conn.respond(server.data_to_send())
    by_port = {b.config.port: b.health.up for b in proxy.balancer.backends}
    assert by_port == {9001: True, 9002: False}
    proxy.balancer.stop()


def test_no_backend_reads_a_dot_segment_its_route_did_not_see(make_proxy):
    """``%2%65`` is a stray ``%`` then ``2`` then ``%65`` ("e"): decoding the unreserved escape
    once makes ``%2e``, an escape of its own. Routing must not choose ``/public`` for a target
    that reaches the backend as ``/public/%2e%2e/admin``, which nginx (and proxyd's own
    normalisation, applied again) reads as ``/admin``: the request is refused (400, like nginx
    and Apache for an invalid escape) or goes, and is forwarded, as the path it resolves to."""
    from proxyd.route import normalize_path

    proxy = make_proxy(routes=[{"match": {"path": "/public"}, "backends": [{"address": A}]},
                               {"match": {"path": "/admin"}, "backends": [{"address": C}]}])
    for target in (b"/public/%2%65%2%65/admin", b"/public/%%32%65%%32%65/admin?x=1"):
        before = proxy.connects
        client = get(proxy, b"app.example.com", target)
        if proxy.connects == before:
            assert status(client)[0] == 400
            continue
        [head] = [e for e in proxy.backend().requests() if type(e) is h11.Request]
        path = head.target.partition(b"?")[0]
        assert normalize_path(path) == path, head.target
        assert port(proxy) == (9003 if path.startswith(b"/admin") else 9001)


def test_options_asterisk_routes_as_the_root_whatever_other_routes_exist(make_proxy):
    """``OPTIONS *`` is about the server: it goes to the host's ``/`` route (as nghttpx routes a
    target that is not a path as ``/``) whether or not the host has other routes too; adding a
    ``/api`` route to a host must not move its ``OPTIONS *`` to the default backends."""
    def options_port(extra):
        proxy = make_proxy(routes=[{"match": {"host": "app.example.com", "path": "/"},
                                    "backends": [{"address": A}]}, *extra])
        client = proxy.h1_client()
        client.write(b"OPTIONS * HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        assert proxy.backend().requests()[0].target == b"*"
        return port(proxy)

    alone = options_port([])
    assert alone == 9001
    assert options_port([{"match": {"host": "app.example.com", "path": "/api"},
                          "backends": [{"address": C}]}]) == alone


def test_a_route_with_escapes_gets_them_in_any_case_from_every_frontend(make_proxy):
    """A route written with escapes (``/caf%C3%A9/``, the form routing writes) receives the
    requests that escape the same bytes in lower or mixed case, from HTTP/1.1, HTTP/2 and
    SPDY alike, and its backend gets the escapes in that normal form. Before, ``%c3%a9`` missed
    the route and went to the default backend, which decodes it to the same ``/café/``: a
    route's backend and policy bypassed by the case of two hex digits."""
    listen = {"endpoint": "tcp:8080:interface=127.0.0.1",
              "protocols": ["h2", "spdy/3.1", "spdy/3", "http/1.1"]}
    proxy = make_proxy(listen=[listen], routes=[{"match": {"path": "/caf%C3%A9/"},
                                                 "backends": [{"address": A}]}])
    get(proxy, b"app.example.com", b"/caf%c3%a9/menu?q=%c3")
    assert port(proxy) == 9001
    assert proxy.backend().requests()[0].target == b"/caf%C3%A9/menu?q=%c3"
    proxy.h2_client().request(path=b"/caf%C3%a9/menu")
    assert port(proxy) == 9001
    assert proxy.backend().requests()[0].target == b"/caf%C3%A9/menu"
    spdy = proxy.spdy_client(3)
    spdy.send_syn(1, spdy.peer.request_pairs(b"/caf%c3%A9/"))
    assert port(proxy) == 9001
    assert proxy.backend().requests()[0].target == b"/caf%C3%A9/"


def test_a_doubled_slash_does_not_bypass_a_route(make_proxy):
    """``//admin`` (or ``/admin//x``) reaches the ``/admin`` route's backend, from HTTP/1.1 and
    HTTP/2, and the backend gets the merged path: before, it missed the route and went to the
    default backend, where an app that merges slashes (nginx's default, most frameworks) served
    its ``/admin`` without the route's backend or policy."""
    proxy = make_proxy(routes=[{"match": {"path": "/admin"}, "backends": [{"address": C}]},
                               {"match": {"path": "/"}, "backends": [{"address": A}]}])
    get(proxy, b"app.example.com", b"//admin?x=//y")
    assert port(proxy) == 9003
    assert proxy.backend().requests()[0].target == b"/admin?x=//y"
    proxy.h2_client().request(path=b"/admin//users")
    assert port(proxy) == 9003
    assert proxy.backend().requests()[0].target == b"/admin/users"
