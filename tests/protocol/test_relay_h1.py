"""Protocol tests of HTTP/1.1 clients through proxyd, and of backend connection reuse (the pool).

The client is raw HTTP/1.1 bytes on a StringTransport; responses are parsed back with h11.
"""

import h11
import h2.events

CRLF = b"\r\n"


def parse(data, requests=1, method=b"GET"):
    """Parse ``data`` as the responses to ``requests`` requests; return h11 events."""
    client = h11.Connection(h11.CLIENT)
    events = []
    client.receive_data(data)
    for _ in range(requests):
        client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            events.append(event)
            if type(event) is h11.EndOfMessage:
                break
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
    return events


def test_h1_request_reaches_backend_with_translated_head(proxy):
    """An HTTP/1.1 request keeps its Host; hop-by-hop goes; X-Forwarded-For and Via 1.1 are added."""
    client = proxy.h1_client()
    client.write(b"GET /a?b HTTP/1.1\r\nHost: www.example.com\r\nConnection: keep-alive, x-drop\r\n"
                 b"X-Drop: 1\r\nX-Keep: 2\r\n\r\n")
    request, _end = proxy.backend().requests()
    headers = list(request.headers)
    assert request.target == b"/a?b"
    assert headers[0] == (b"host", b"www.example.com")
    assert (b"x-keep", b"2") in headers
    assert all(name not in (b"connection", b"x-drop") for name, _ in headers)
    assert (b"x-forwarded-for", b"203.0.113.5") in headers
    assert (b"via", b"1.1 proxyd") in headers


def test_h1_response_reaches_the_client(proxy):
    """The backend's response bytes reach the HTTP/1.1 client, with Via and keep-alive intact."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.backend().respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
                            b"X-App: 1\r\n\r\nhello")
    response, data, end = parse(client.read())
    assert response.status_code == 200
    assert (b"x-app", b"1") in response.headers and (b"via", b"1.1 proxyd") in response.headers
    assert data.data == b"hello" and type(end) is h11.EndOfMessage
    assert not client.closing


def test_pool_reuses_the_backend_connection(proxy):
    """A second request after the first finished uses the same backend connection: no second connect."""
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    assert backend.requests()[0].target == b"/1"
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    proxy.advance(0)
    client.write(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert proxy.connects == 1
    assert backend.requests()[0].target == b"/2"
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    assert [e.data for e in parse(client.read(), 2) if type(e) is h11.Data] == [b"a", b"b"]


def test_pool_reuse_across_clients(proxy):
    """An idle backend connection left by one client serves the next client's request."""
    first = proxy.h2_client()
    sid = first.request()
    backend = proxy.backend()
    backend.requests()
    backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in first.pump())
    second = proxy.h1_client()
    second.write(b"GET /other HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert proxy.connects == 1
    assert backend.requests()[0].target == b"/other"


def test_backend_connection_close_is_not_reused(proxy):
    """A backend that answers ``Connection: close`` is not pooled: the next request connects anew."""
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert backend.transport.disconnecting
    backend.finish_close()
    proxy.advance(0)
    client.write(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert proxy.connects == 2


def test_idle_backend_connection_expires(proxy):
    """An idle pooled connection is closed after the pool's idle timeout and a new one is opened."""
    from proxyd.net.backend import IDLE_TIMEOUT

    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    proxy.advance(IDLE_TIMEOUT + 0.1)
    assert backend.transport.disconnecting
    backend.finish_close()
    client.write(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert proxy.connects == 2


def test_idle_expiry_counts_from_the_last_release(proxy):
    """A pooled connection reused shortly before its first idle deadline is not closed at that
    deadline: it expires IDLE_TIMEOUT after it last went back to the pool."""
    from proxyd.net.backend import IDLE_TIMEOUT

    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    proxy.advance(IDLE_TIMEOUT * 0.75)
    client.write(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert len(backend.requests()) == 2  # the same connection
    proxy.advance(IDLE_TIMEOUT * 0.5)  # busy across the first deadline
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    proxy.advance(IDLE_TIMEOUT * 0.75)
    assert not backend.transport.disconnecting
    proxy.advance(IDLE_TIMEOUT * 0.25 + 0.01)
    assert backend.transport.disconnecting
    assert proxy.connects == 1


def test_pipelined_requests_are_answered_in_order(proxy):
    """Two pipelined requests in one read are relayed one after the other on one backend connection."""
    client = proxy.h1_client()
    client.write(b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    assert [e.target for e in backend.requests() if type(e) is h11.Request] == [b"/1"]
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
    proxy.advance(0)  # the codec is re-polled for the buffered request
    assert proxy.connects == 1
    assert [e.target for e in backend.requests() if type(e) is h11.Request] == [b"/2"]
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    assert [e.data for e in parse(client.read(), 2) if type(e) is h11.Data] == [b"one", b"two"]


def test_h1_connect_failure_is_502(proxy):
    """A refused backend gives an HTTP/1.1 client a 502 response."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.backend(connect=False).refuse()
    response, data, _end = parse(client.read())
    assert response.status_code == 502
    assert data.data.startswith(b"Bad Gateway")


def test_h1_backend_lost_mid_body_closes_client(proxy):
    """After the response started, an HTTP/1.1 client can only learn of a dead backend by a close."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    assert not client.closing
    backend.close(clean=False)
    assert client.closing


def test_close_delimited_body_ends_only_with_a_clean_close(proxy):
    """RFC 9112 §6.3: a response without a length ends when the backend closes. A clean close
    (FIN) completes it (the HTTP/1.1 client gets the chunked terminator and keeps its
    connection; an HTTP/2 client gets END_STREAM); a reset cuts it short: the HTTP/1.1 client's
    connection closes without the terminator, the HTTP/2 client's stream is reset."""
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.0 200 OK\r\n\r\nwhole")
    backend.close()
    out = client.read()
    assert out.endswith(b"5\r\nwhole\r\n0\r\n\r\n") and not client.closing

    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.0 200 OK\r\n\r\npartial")
    backend.close(clean=False)  # ECONNRESET, not EOF
    out = client.read()
    assert b"partial" in out and not out.endswith(b"0\r\n\r\n") and client.closing

    h2client = proxy.h2_client()
    sid = h2client.request()
    backend = proxy.backend()
    backend.respond(b"HTTP/1.0 200 OK\r\n\r\npartial")
    h2client.pump()
    backend.close(clean=False)
    events = h2client.pump()
    assert not [e for e in events if isinstance(e, h2.events.StreamEnded)]
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamReset)] == [sid]


def test_h1_smuggling_never_reaches_backend(proxy):
    """Content-Length + Transfer-Encoding is refused with 400 before any backend connect."""
    client = proxy.h1_client()
    client.write(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert client.read().startswith(b"HTTP/1.1 400 ")
    assert client.closing
    assert proxy.connects == 0


def test_h1_bad_chunk_is_answered_once(proxy):
    """A broken chunked body gets exactly one 400 response, even after the codec is re-polled."""
    client = proxy.h1_client()
    client.write(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n")
    proxy.advance(0)
    proxy.advance(0)
    data = client.read()
    assert data.count(b"HTTP/1.1 400 ") == 1, data
    assert client.closing


def test_connection_made_for_a_stream_that_went_away_serves_the_next(make_proxy):
    """max_connections 1: stream A's connection is being made, B waits in the queue, and A is
    reset before the connect completes. The new connection never carried a request, so it is as
    good as new: B gets it (one connect in all), instead of it being closed and B connecting
    again."""
    from memproxy import BACKEND

    proxy = make_proxy(backends=[{"address": BACKEND, "max_connections": 1}])
    client = proxy.h2_client()
    a = client.request(path=b"/a")
    client.request(path=b"/b")
    client.h2.reset_stream(a, 8)
    client.flush()
    backend = proxy.backend()  # A's connection completes after A is gone
    assert not backend.transport.disconnecting
    assert [e.target for e in backend.requests() if type(e) is h11.Request] == [b"/b"]
    assert proxy.connects == 1


def test_response_cut_short_resets_the_client_connection(proxy):
    """An HTTP/1.0 client's response ends with the connection (the backend sent no length). When
    the backend's connection breaks mid-body, a clean close would hand the client a truncated
    body as complete: the client connection is aborted instead (a TCP reset, see
    twistedshim.reset_connection), after the bytes already relayed."""
    client = proxy.h1_client()
    client.write(b"GET /file HTTP/1.0\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"a" * 100)
    assert client.read().endswith(b"a" * 100)
    backend.close(clean=False)
    assert client.transport.disconnected  # aborted, not closed


def test_response_ended_by_a_clean_close_closes_cleanly(proxy):
    """The same response ended by the backend's clean close is complete: the client connection
    is closed as usual (no reset)."""
    client = proxy.h1_client()
    client.write(b"GET /file HTTP/1.0\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"a" * 100)
    backend.close(clean=True)
    assert client.read().endswith(b"a" * 100)
    assert client.transport.disconnecting and not client.transport.disconnected


def test_http11_response_cut_short_resets_the_client_connection(proxy):
    """An HTTP/1.1 response with a Content-Length whose backend breaks mid-body is cut with a
    reset too (no FIN, and on TLS no close_notify, after the partial body)."""
    client = proxy.h1_client()
    client.write(b"GET /file HTTP/1.1\r\nHost: example.com\r\n\r\n")
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
    backend.close(clean=False)
    assert client.transport.disconnected
