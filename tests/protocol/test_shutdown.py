"""Protocol tests of graceful shutdown: ProxyService.stopService on a MemoryReactorClock.

Stopping sends GOAWAY (HTTP/2) or ``connection: close`` (HTTP/1.1), lets streams in flight finish,
and fires the stopService Deferred once every client connection is gone, or after
``timeouts.graceful_shutdown`` with what is left aborted.
"""

from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame

from memproxy import parse_frames


def stop(proxy):
    """Call stopService; return a list that receives the Deferred's result when it fires."""
    fired = []
    proxy.service.stopService().addBoth(fired.append)
    return fired


def run_until(proxy, fired, clients, limit, step=0.05):
    """Advance the clock in small steps (closing what the proxy closed) until ``fired`` or ``limit``."""
    start = proxy.reactor.seconds()
    while not fired and proxy.reactor.seconds() - start < limit:
        proxy.advance(step)
        for client in clients:
            client.finish_close()
    return proxy.reactor.seconds() - start


def test_listening_port_is_recorded(make_service):
    """The service listens through the reactor on the configured endpoint."""
    proxy = make_service()
    assert [entry[0] for entry in proxy.reactor.tcpServers] == [8080]
    assert proxy.reactor.tcpServers[0][3] == "127.0.0.1"


def test_shutdown_waits_for_in_flight_h2_stream(make_service):
    """An h2 stream in flight gets GOAWAY, still receives its response, then the service stops.

    The stop must follow the end of the last stream promptly, not wait for graceful_shutdown.
    """
    proxy = make_service()
    client = proxy.h2_client()
    sid = client.request(path=b"/slow")
    backend = proxy.backend()
    fired = stop(proxy)
    [goaway] = [f for f in parse_frames(client.read()) if isinstance(f, GoAwayFrame)]
    assert goaway.last_stream_id == sid
    run_until(proxy, fired, [client], 5)
    assert not fired and not client.closing
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    frames = parse_frames(client.read())
    assert [f.stream_id for f in frames if isinstance(f, HeadersFrame)] == [sid]
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame)) == b"done"
    took = run_until(proxy, fired, [client], 30)
    assert client.closing
    assert fired == [None]
    assert took < 1, f"stopService fired {took:.2f}s after the last stream ended"


def test_shutdown_waits_for_in_flight_h1_request(make_service):
    """An HTTP/1.1 request in flight is answered with ``connection: close`` and then the service stops."""
    proxy = make_service()
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    fired = stop(proxy)
    run_until(proxy, fired, [client], 5)
    assert not fired and not client.closing
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = client.read()
    assert out.startswith(b"HTTP/1.1 200 ") and b"connection: close" in out.lower()
    assert out.endswith(b"ok")
    took = run_until(proxy, fired, [client], 30)
    assert fired == [None] and took < 1


def test_shutdown_closes_idle_connections_at_once(make_service):
    """Connections without streams are closed immediately (GOAWAY first for HTTP/2)."""
    proxy = make_service()
    h2_client = proxy.h2_client()
    h1_client = proxy.h1_client()
    fired = stop(proxy)
    assert h2_client.closing and h1_client.closing
    assert [f for f in parse_frames(h2_client.read()) if isinstance(f, GoAwayFrame)]
    took = run_until(proxy, fired, [h2_client, h1_client], 30)
    assert fired == [None] and took < 1


def test_shutdown_aborts_after_graceful_timeout(make_service):
    """A stream that never finishes is aborted once timeouts.graceful_shutdown has passed."""
    proxy = make_service(timeouts={"graceful_shutdown": "3s", "backend_read": "60s"})
    client = proxy.h2_client()
    client.request()
    proxy.backend()
    fired = stop(proxy)
    run_until(proxy, fired, [], 2.9)
    assert not fired and not client.closing
    run_until(proxy, fired, [], 1)
    assert fired == [None]
    assert client.transport.disconnecting  # aborted
    assert 3 <= proxy.reactor.seconds() < 3.2


def test_new_stream_after_shutdown_is_refused(make_service):
    """A stream opened after the GOAWAY is refused and never reaches a backend."""
    proxy = make_service()
    client = proxy.h2_client()
    first = client.request()
    proxy.backend()
    stop(proxy)
    late = client.request()  # the client has not read the GOAWAY yet
    resets = [(f.stream_id, f.error_code) for f in parse_frames(client.read()) if f.type == 0x03]
    assert resets == [(late, 7)]
    assert proxy.connects == 1
    assert first != late


def test_retire_lets_h2_connections_go_on_and_closes_http1_after_the_answer(make_service,
                                                                             tmp_path):
    """A worker replaced by a reload (ProxyService.retire): its port stops accepting; an h2
    connection gets no GOAWAY and its next stream goes to the new configuration's backend; an
    HTTP/1.1 connection is answered with ``connection: close`` and closed."""
    from memproxy import base_config

    from proxyd.config import parse_config

    proxy = make_service()
    h2 = proxy.h2_client()
    h1 = proxy.h1_client()
    h1.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    first = proxy.backend()
    assert proxy.service._ports
    new = parse_config(base_config(backends=[{"address": "127.0.0.1:9999"}]), str(tmp_path))
    proxy.service.retire(new)
    assert proxy.service._ports == {}  # the new workers accept now
    first.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = h1.read()
    assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
    assert h1.closing
    sid = h2.request(path=b"/after")
    assert not [f for f in parse_frames(h2.read()) if isinstance(f, GoAwayFrame)]
    assert proxy.reactor.tcpClients[-1][:2] == ("127.0.0.1", 9999)
    assert sid == 1 and not h2.closing
