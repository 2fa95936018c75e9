"""Protocol tests of an HTTP/2 client through proxyd to an HTTP/1.1 backend, all in memory.

An h2 client (the h2 library) talks to a FrontendProtocol on a StringTransport; the backend
connection is completed by hand from ``reactor.tcpClients`` and answers with raw HTTP/1.1 bytes.
"""

import h11
import h2.events
from hyperframe.frame import RstStreamFrame

from proxyd.codec import INTERNAL_ERROR, PROTOCOL_ERROR
from proxyd.net.backend import BackendConnection
from proxyd.net.deadline import LazyDeadline
from proxyd.stream import MAX_INFORMATIONAL

from memproxy import CLIENT_IP, parse_frames


def of(events, kind, stream_id=None):
    """The h2 events of type ``kind`` (and of ``stream_id`` when given)."""
    return [e for e in events if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)]


def status(events, stream_id):
    """The :status of the response on ``stream_id``."""
    [response] = of(events, h2.events.ResponseReceived, stream_id)
    return dict(response.headers)[b":status"]


def body(events, stream_id):
    """The response body bytes on ``stream_id``."""
    return b"".join(e.data for e in of(events, h2.events.DataReceived, stream_id))


def test_request_reaches_backend_with_translated_head(proxy):
    """The backend gets an HTTP/1.1 request: Host from :authority, X-Forwarded-*, Via, cookies joined."""
    client = proxy.h2_client()
    client.request(path=b"/search?q=1", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2"),
                                                (b"x-forwarded-for", b"198.51.100.9"),
                                                (b"user-agent", b"test")])
    assert proxy.connects == 1
    assert proxy.reactor.tcpClients[0][:2] == ("127.0.0.1", 8081)
    request, end = proxy.backend().requests()
    assert (request.method, request.target, request.http_version) == (b"GET", b"/search?q=1", b"1.1")
    headers = list(request.headers)
    assert headers[0] == (b"host", b"example.com")
    assert (b"cookie", b"a=1; b=2") in headers
    assert (b"x-forwarded-for", b"198.51.100.9, " + CLIENT_IP.encode()) in headers
    assert (b"x-forwarded-proto", b"http") in headers
    assert (b"via", b"2 proxyd") in headers
    assert (b"user-agent", b"test") in headers
    assert type(end) is h11.EndOfMessage


def test_response_reaches_the_client(proxy):
    """The backend's response head (hop-by-hop removed, Via added) and body reach the h2 client."""
    client = proxy.h2_client()
    sid = client.request(path=b"/")
    backend = proxy.backend()
    backend.requests()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: keep-alive\r\n"
                    b"Keep-Alive: timeout=5\r\nX-App: yes\r\n\r\nhello")
    backend.respond(b" world")
    events = client.pump()
    [response] = of(events, h2.events.ResponseReceived, sid)
    headers = dict(response.headers)
    assert headers[b":status"] == b"200"
    assert headers[b"x-app"] == b"yes" and headers[b"via"] == b"1.1 proxyd"
    assert b"connection" not in headers and b"keep-alive" not in headers
    assert body(events, sid) == b"hello world"
    assert of(events, h2.events.StreamEnded, sid)
    assert not client.closing


def test_request_body_and_trailers_are_streamed_chunked(proxy):
    """An h2 body without content-length goes out chunked; h2 trailers become chunked trailers."""
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/up", end_stream=False)
    backend = proxy.backend()
    client.send_body(sid, b"part one, ")
    client.send_body(sid, b"part two")
    client.h2.send_headers(sid, [(b"x-checksum", b"c0ffee")], end_stream=True)
    client.flush()
    events = backend.requests()
    request = events[0]
    assert (b"transfer-encoding", b"chunked") in list(request.headers)
    assert b"".join(e.data for e in events if type(e) is h11.Data) == b"part one, part two"
    assert events[-1] == h11.EndOfMessage(headers=[(b"x-checksum", b"c0ffee")])


def test_response_trailers_reach_the_client(proxy):
    """Chunked trailers from the backend become HTTP/2 trailers."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
                    b"3\r\nabc\r\n0\r\nX-Sum: 6\r\n\r\n")
    events = client.pump()
    assert body(events, sid) == b"abc"
    [trailers] = of(events, h2.events.TrailersReceived, sid)
    assert trailers.headers == [(b"x-sum", b"6")]


def test_malformed_request_never_reaches_a_backend(proxy):
    """A request with an uppercase header name is reset PROTOCOL_ERROR without a backend connect."""
    client = proxy.h2_client()
    client.h2.config.validate_outbound_headers = False
    client.h2.config.normalize_outbound_headers = False
    sid = client.request(headers=[(b"X-Upper", b"1")])
    events = client.pump()
    assert [(e.stream_id, e.error_code) for e in of(events, h2.events.StreamReset)] == [
        (sid, PROTOCOL_ERROR)]
    assert proxy.connects == 0
    good = client.request()
    assert proxy.connects == 1
    proxy.backend().respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert status(client.pump(), good) == b"204"


def test_connect_failure_is_502(proxy):
    """A refused backend connection answers the stream with a short 502."""
    client = proxy.h2_client()
    sid = client.request(path=b"/x")
    proxy.backend(connect=False).refuse()
    events = client.pump()
    assert status(events, sid) == b"502"
    assert body(events, sid).startswith(b"Bad Gateway")
    assert of(events, h2.events.StreamEnded, sid)
    assert not client.closing


def test_backend_lost_mid_body_resets_only_that_stream(proxy):
    """A backend dying after the response started resets that stream; a neighbour stream completes."""
    client = proxy.h2_client()
    first = client.request(path=b"/big")
    second = client.request(path=b"/small")
    assert proxy.connects == 2
    dying, healthy = proxy.backend(0), proxy.backend(1)
    assert dying.requests()[0].target == b"/big"
    assert healthy.requests()[0].target == b"/small"
    dying.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    events = client.pump()
    assert status(events, first) == b"200"
    dying.close(clean=False)
    healthy.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events = client.pump()
    assert [(e.stream_id, e.error_code) for e in of(events, h2.events.StreamReset)] == [
        (first, INTERNAL_ERROR)]
    assert body(events, second) == b"ok" and of(events, h2.events.StreamEnded, second)
    assert not client.closing
    assert not of(events, h2.events.ConnectionTerminated)


def test_backend_closing_before_response_is_502(proxy):
    """A fresh backend connection that closes before any response byte gives 502."""
    client = proxy.h2_client()
    sid = client.request()
    proxy.backend().close()
    assert status(client.pump(), sid) == b"502"


def test_client_reset_aborts_the_backend_exchange(proxy):
    """A client RST_STREAM drops the backend connection of that stream (it cannot be reused)."""
    client = proxy.h2_client()
    sid = client.request()
    backend = proxy.backend()
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    client.pump()
    client.h2.reset_stream(sid, 8)
    client.flush()
    assert backend.transport.disconnecting
    backend.finish_close()
    assert proxy.balancer.backends[0].state.total == 0


def test_informational_is_forwarded(proxy):
    """A 103 from the backend reaches the h2 client before the final response."""
    client = proxy.h2_client()
    sid = client.request()
    proxy.backend().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                            b"HTTP/1.1 204 No Content\r\n\r\n")
    events = client.pump()
    [info] = of(events, h2.events.InformationalResponseReceived, sid)
    assert dict(info.headers)[b":status"] == b"103"
    assert status(events, sid) == b"204"


def test_informational_responses_beyond_the_bound_are_dropped(proxy):
    """A backend repeating 1xx heads (here 200 of them in one read) gets the first
    ``MAX_INFORMATIONAL`` to the h2 client and no more (they take no flow-control window, so
    nothing else would bound them); its final response still arrives."""
    client = proxy.h2_client()
    sid = client.request()
    proxy.backend().respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 200
                            + b"HTTP/1.1 204 No Content\r\n\r\n")
    events = client.pump()
    infos = of(events, h2.events.InformationalResponseReceived, sid)
    assert len(infos) == MAX_INFORMATIONAL
    assert status(events, sid) == b"204"


def test_reset_streams_do_not_leak_the_connection_window(proxy):
    """Request bytes of streams the client resets are still credited to the connection window.

    The backend never connects, so every body waits unacknowledged in the relay; when the client
    resets those streams, proxyd must give their bytes back to the connection-level window, or a
    client that cancels uploads ends up with a connection that can never send again.
    """
    client = proxy.h2_client()
    chunk = b"u" * 60000
    for round_ in range(25):
        sid = client.request(b"POST", b"/upload", end_stream=False)
        window = client.h2.local_flow_control_window(sid)
        assert window >= len(chunk), f"round {round_}: connection window leaked down to {window}"
        client.send_body(sid, chunk)
        client.h2.reset_stream(sid, 8)
        client.flush()
        client.pump()


def test_request_body_is_acknowledged_after_backend_attach(proxy):
    """Body bytes sent before the backend connection exists are acknowledged only once it takes them."""
    client = proxy.h2_client()
    sid = client.request(b"POST", b"/up", end_stream=False)
    client.send_body(sid, b"e" * 40000)
    updates = [f for f in parse_frames(client.read()) if f.type == 0x08 and f.stream_id == sid]
    assert updates == []
    backend = proxy.backend()  # the connection completes: head and early body go out
    events = backend.requests()
    assert sum(len(e.data) for e in events if type(e) is h11.Data) == 40000
    frames = parse_frames(client.read())
    assert [f.window_increment for f in frames if f.type == 0x08 and f.stream_id == sid] == [40000]
    assert not [f for f in frames if isinstance(f, RstStreamFrame)]


def test_reused_connection_dying_before_response_is_retried(proxy):
    """A request on a pooled connection that the backend closed meanwhile is retried on a fresh one."""
    client = proxy.h2_client()
    first = client.request(path=b"/1")
    stale = proxy.backend()
    stale.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert status(client.pump(), first) == b"204"
    second = client.request(path=b"/2")
    assert proxy.connects == 1
    sent = stale.requests() + stale.requests()
    assert [e.target for e in sent if type(e) is h11.Request] == [b"/1", b"/2"]
    stale.close()  # the backend had timed the idle connection out: no response byte
    assert proxy.connects == 2
    fresh = proxy.backend(1)
    assert [e.target for e in fresh.requests() if type(e) is h11.Request] == [b"/2"]
    fresh.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events = client.pump()
    assert status(events, second) == b"200" and body(events, second) == b"ok"


def test_held_get_on_a_connection_lost_before_anything_was_written_is_repeated(proxy):
    """A GET whose HEADERS lacks END_STREAM has its head held until content shows (a body may
    follow, and then it travels alone). When its pooled connection dies meanwhile (the backend
    had timed it out), nothing of the request was written: it provably was not processed and is
    repeated on a fresh connection (RFC 9110 §9.2.2), not answered 502; its empty end then goes
    out as the bodiless GET it is."""
    client = proxy.h2_client()
    first = client.request(path=b"/1")
    stale = proxy.backend()
    stale.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert status(client.pump(), first) == b"204"
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                 (b":authority", b"example.com"), (b":path", b"/2")])
    client.flush()
    assert proxy.connects == 1
    assert [e.target for e in stale.requests() if type(e) is h11.Request] == [b"/1"]
    stale.close()  # the backend had timed the idle connection out: nothing of /2 was written
    assert proxy.connects == 2
    client.h2.send_data(sid, b"", end_stream=True)
    client.flush()
    fresh = proxy.backend(1)
    sent = fresh.requests()
    assert [type(e) for e in sent] == [h11.Request, h11.EndOfMessage] and sent[0].target == b"/2"
    fresh.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events = client.pump()
    assert status(events, sid) == b"200" and body(events, sid) == b"ok"


def test_error_response_respects_a_shut_connection_window(proxy):
    """A 502 on one stream while a download filled the connection window is queued, not a crash.

    The error body must obey flow control like any body: it goes out when the client opens its
    window, and the failed stream still ends cleanly.
    """
    client = proxy.h2_client()
    download = client.request(path=b"/big")
    big = proxy.backend(0)
    big.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"d" * 65535)
    events = client.pump()  # the client does not acknowledge: the connection window is now 0
    assert len(body(events, download)) == 65535
    failing = client.request(path=b"/gone")
    proxy.backend(1, connect=False).refuse()
    events = client.pump()
    assert status(events, failing) == b"502"
    client.h2.acknowledge_received_data(65535, download)
    client.h2.increment_flow_control_window(65535)
    client.flush()
    events = client.pump()
    assert body(events, failing).startswith(b"Bad Gateway")
    assert of(events, h2.events.StreamEnded, failing)


def test_head_response_has_no_body(proxy):
    """A HEAD response keeps the backend's content-length and ends without DATA. Its backend
    connection is closed, not pooled: the content it announced may still come in a later read
    (an app that writes it on HEAD too), where it would answer the next request."""
    client = proxy.h2_client()
    sid = client.request(b"HEAD", b"/file")
    backend = proxy.backend()
    assert backend.requests()[0].method == b"HEAD"
    backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    events = client.pump()
    [response] = of(events, h2.events.ResponseReceived, sid)
    assert dict(response.headers)[b"content-length"] == b"1234"
    assert body(events, sid) == b""
    assert of(events, h2.events.StreamEnded, sid)
    assert not proxy.balancer.backends[0].state.idle and backend.transport.disconnecting


def test_get_ended_by_an_empty_data_frame_keeps_its_backend_connection(proxy):
    """A GET whose HEADERS lacks END_STREAM and whose stream ends with an empty DATA frame
    (reactor-netty under Spring's RestClient sends GET so, reactor-netty issue 3524; Traffic
    Server PR 12257 reports more clients) carries no content: the backend gets a bodiless GET
    on a keep-alive connection, not ``transfer-encoding: chunked`` with ``connection: close``,
    which cost such a client a new backend connection per request. Both orders are covered:
    the first request ends before its connection is made, the second gets the pooled
    connection at once, before the empty DATA frame of the same read is dispatched."""
    client = proxy.h2_client()
    for n in range(2):
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"example.com"), (b":path", b"/%d" % n)])
        client.h2.send_data(sid, b"", end_stream=True)
        client.flush()  # HEADERS and the empty DATA frame in one read
        backend = proxy.backend(0)
        sent = backend.requests()
        assert [type(e) for e in sent] == [h11.Request, h11.EndOfMessage]
        names = [name for name, _value in sent[0].headers]
        assert b"connection" not in names and b"transfer-encoding" not in names
        backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        events = client.pump()
        assert status(events, sid) == b"200" and body(events, sid) == b"ok"
        assert not backend.transport.disconnecting
    assert proxy.connects == 1


def test_connection_lost_cancels_every_timer(make_proxy):
    """Issue item 10: when a client connection goes, no timer it (or one of its streams) started
    stays behind: the write-rate refill, the read-rate resume, the next-pipelined-request poll,
    stream timers, the idle timer. Only the pool's idle expiry of a released backend connection
    may remain."""
    proxy = make_proxy(rate_limits={"read": {"rate": 10, "burst": 10},
                                    "write": {"rate": 10, "burst": 10}})
    client = proxy.h1_client()
    client.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    backend = proxy.backend()
    backend.requests()
    backend.respond(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n" + b"x" * 20)
    assert len(proxy.reactor.getDelayedCalls()) >= 3  # refill, resume, poll, idle expiry ...
    client.transport.loseConnection()
    client.finish_close()
    owners = [call.func for call in proxy.reactor.getDelayedCalls()]
    assert owners, "the backend connection's idle expiry stays"
    for func in owners:  # each a LazyDeadline's call, expiring an idle backend connection
        deadline = getattr(func, "__self__", None)
        assert isinstance(deadline, LazyDeadline), func
        assert isinstance(getattr(deadline.expired, "__self__", None), BackendConnection), func


def test_response_after_the_client_connection_failed_is_dropped_quietly(proxy):
    """Issue item 15: the client breaks the HTTP/2 connection (a DATA frame on stream 0: GOAWAY
    PROTOCOL_ERROR) while its stream waits for the backend; the backend's response then arrives
    before the transport is gone. Once this was h2's send_headers in state CLOSED (an unhandled
    error); now the stream ended with the connection error, nothing raises, and the backend
    connection of the stream is dropped, not reused."""
    client = proxy.h2_client()
    client.request(path=b"/slow")
    backend = proxy.backend()
    backend.requests()
    client.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert client.protocol.codec.wants_close
    backend.respond(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert proxy.listener.internal_errors == 0
    assert not client.protocol.streams
    assert backend.transport.disconnecting
