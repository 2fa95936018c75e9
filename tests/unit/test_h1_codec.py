"""Unit tests of proxyd.codec.h1: the client-facing H1ServerCodec (llhttp frames, proxyd writes).

The other side is h11 itself (an h11 client writing requests, an h11 client parsing what the codec
wrote) or hand-written bytes where a test needs something h11 would refuse to produce (smuggling
attempts, obs-fold, chunk sizes beyond 2^64, garbage). What heads mean is the gate's business:
tests read them through ``tests.support.gated``.
"""

import tracemalloc

import h11
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proxyd import events as ev
from proxyd.codec import h1
from proxyd.codec.h1 import H1ServerCodec
from proxyd.errors import Refused
from tests.support import fields, gated


def of(events, kind):
    """The events of type ``kind``."""
    return [e for e in events if type(e) is kind]


def h11_client_bytes(*items):
    """Serialize the h11 client events of one request (head, data, end of message) into bytes."""
    client = h11.Connection(h11.CLIENT)
    return b"".join(client.send(item) for item in items)


def parse_responses(data, method=b"GET"):
    """Parse what the server codec wrote with an h11 client that sent ``method``; return events."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    events = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return events
        events.append(event)
        if type(event) is h11.ConnectionClosed:
            return events


def get(target=b"/", headers=((b"host", b"example.com"),)):
    """Raw bytes of a bodiless HTTP/1.1 GET."""
    head = b"GET %s HTTP/1.1\r\n" % target
    return head + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"


# -- server side: requests -----------------------------------------------------------------------

def test_get_is_one_request_event():
    """A bodiless GET gives RequestReceived(end_stream=True) with Host as authority, no StreamEnded."""
    codec = H1ServerCodec(scheme=b"https")
    data = h11_client_bytes(h11.Request(method="GET", target="/a?b=c",
                                        headers=[("Host", "example.com"), ("Accept", "*/*")]),
                            h11.EndOfMessage())
    events = codec.receive_data(data)
    assert events == [ev.RequestReceived(
        stream_id=1, headers=[(b":method", b"GET"), (b":path", b"/a?b=c"),
                              (b"Host", b"example.com"), (b"Accept", b"*/*")],
        end_stream=True, http_version=b"1.1")]
    assert fields(gated(events[0], b"https")) == (b"GET", b"https", b"example.com", b"/a?b=c",
                                                  [(b"accept", b"*/*")])
    assert codec.open_streams == 1


def test_post_with_content_length():
    """A content-length body arrives as DataReceived (no flow control) followed by StreamEnded."""
    codec = H1ServerCodec()
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    events = codec.receive_data(head + b"01234")
    assert [type(e) for e in events] == [ev.RequestReceived, ev.DataReceived]
    assert events[0].end_stream is False
    assert events[1] == ev.DataReceived(stream_id=1, data=b"01234", flow_length=0)
    events = codec.receive_data(b"56789")
    assert events == [ev.DataReceived(stream_id=1, data=b"56789"), ev.StreamEnded(stream_id=1)]


def test_chunked_body_with_trailers():
    """A chunked body gives its chunks as data (one event for the chunks of one read), then
    TrailersReceived and StreamEnded."""
    codec = H1ServerCodec()
    data = h11_client_bytes(
        h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Transfer-Encoding", "chunked")]),
        h11.Data(data=b"abc"), h11.Data(data=b"defg"),
        h11.EndOfMessage(headers=[("X-Checksum", "sum")]),
    )
    events = codec.receive_data(data)
    assert [type(e) for e in events] == [ev.RequestReceived, ev.DataReceived,
                                         ev.TrailersReceived, ev.StreamEnded]
    assert events[1] == ev.DataReceived(stream_id=1, data=b"abcdefg", flow_length=0)
    assert events[2].headers == [(b"X-Checksum", b"sum")]


def test_tiny_chunks_of_one_read_are_one_data_event():
    """10,000 one-byte chunks in one read are one DataReceived (one backend write, not 10,000);
    the next read's bytes are another, and the end of the body still follows the last byte."""
    codec = H1ServerCodec()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = codec.receive_data(head + b"1\r\na\r\n" * 10_000)
    assert [type(e) for e in events] == [ev.RequestReceived, ev.DataReceived]
    assert events[1] == ev.DataReceived(stream_id=1, data=b"a" * 10_000, flow_length=0)
    events = codec.receive_data(b"2\r\nbc\r\n1\r\nd\r\n0\r\n\r\n")
    assert events == [ev.DataReceived(stream_id=1, data=b"bcd"), ev.StreamEnded(stream_id=1)]


def test_merged_data_never_spans_two_requests():
    """Two pipelined chunked POSTs in one read: each gets its own bytes, in order, each ended."""
    codec = H1ServerCodec()
    post = b"POST /%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
    events = codec.receive_data(post % (1, b"1\r\na\r\n" * 3) + post % (2, b"1\r\nb\r\n" * 4))
    assert events[1:] == [ev.DataReceived(stream_id=1, data=b"aaa"), ev.StreamEnded(stream_id=1)]
    codec.send_response(1, 200, [(b"content-length", b"0")], end_stream=True)
    events = codec.receive_data(b"")
    assert events[1:] == [ev.DataReceived(stream_id=2, data=b"bbbb"), ev.StreamEnded(stream_id=2)]


def test_response_with_content_length_and_keep_alive():
    """A response goes out as h11 frames it; the connection stays open for the next request."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_response(1, 200, [(b"content-length", b"5"), (b"x-a", b"1")])
    codec.send_data(1, b"hello", end_stream=True)
    events = parse_responses(codec.data_to_send())
    assert [type(e) for e in events] == [h11.Response, h11.Data, h11.EndOfMessage]
    assert events[0].status_code == 200 and (b"x-a", b"1") in events[0].headers
    assert events[1].data == b"hello"
    assert not codec.wants_close and codec.open_streams == 0
    [second] = codec.receive_data(get(b"/two"))
    assert (second.stream_id, gated(second).path) == (2, b"/two")


def test_chunked_response_with_trailers():
    """Without content-length an HTTP/1.1 client gets a chunked body and the trailers."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_response(1, 200, [(b"trailer", b"x-sum")])
    codec.send_data(1, b"part")
    codec.send_trailers(1, [(b"x-sum", b"7")])
    events = parse_responses(codec.data_to_send())
    assert [type(e) for e in events] == [h11.Response, h11.Data, h11.EndOfMessage]
    assert (b"transfer-encoding", b"chunked") in events[0].headers
    assert events[2].headers == [(b"x-sum", b"7")]
    assert not codec.wants_close


def test_informational_for_http11_client():
    """A 103 reaches an HTTP/1.1 client ahead of the final response; 101 is never sent."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_informational(1, 103, [(b"link", b"</a.css>; rel=preload")])
    codec.send_informational(1, 101, [(b"upgrade", b"websocket")])
    codec.send_response(1, 204, [], end_stream=True)
    events = parse_responses(codec.data_to_send())
    assert [type(e) for e in events] == [h11.InformationalResponse, h11.Response, h11.EndOfMessage]
    assert events[0].status_code == 103


def test_pipelined_requests_come_one_at_a_time():
    """A second pipelined request surfaces only after the first response ended and a b"" re-poll."""
    codec = H1ServerCodec()
    events = codec.receive_data(get(b"/1") + get(b"/2"))
    assert [(e.stream_id, gated(e).path) for e in of(events, ev.RequestReceived)] == [(1, b"/1")]
    assert codec.backlogged  # the network layer stops reading meanwhile
    assert codec.receive_data(b"") == []  # still busy with request 1
    codec.send_response(1, 200, [(b"content-length", b"1")])
    assert codec.receive_data(b"") == []  # response not finished yet
    codec.send_data(1, b"a", end_stream=True)
    events = codec.receive_data(b"")
    assert [(e.stream_id, gated(e).path) for e in of(events, ev.RequestReceived)] == [(2, b"/2")]
    assert codec.open_streams == 1 and not codec.backlogged


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\rX: y\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
    b"POST / HTTP/1.1\r\nHost : x\r\nContent-Length: 0\r\n\r\n",
], ids=["cl-then-te", "te-then-cl", "two-lengths", "plus-length", "chunked-not-last",
        "obs-fold", "bare-cr", "bare-lf", "nul-in-value", "chunk-size-2^64", "space-before-colon"])
def test_smuggling_is_refused_with_400(head):
    """Framing an HTTP/1.1 parser might read differently from the backend's (CL with TE, two
    lengths, a signed length, chunked not last, obs-fold, bare CR or LF, NUL, a chunk size beyond
    2^64, whitespace before the colon): 400 and close, never a RequestReceived."""
    codec = H1ServerCodec()
    events = codec.receive_data(head + b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not of(events, ev.RequestReceived)
    [terminated] = of(events, ev.ConnectionTerminated)
    assert terminated.remote is False
    assert codec.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert codec.wants_close
    assert not of(codec.receive_data(b""), ev.RequestReceived)


def test_oversized_head_arriving_slowly_is_431():
    """A head that grows beyond max_header_list_size without ending is answered 431 and closed."""
    codec = H1ServerCodec(max_header_list_size=1024)
    events = codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert events == []
    for _ in range(20):
        events = codec.receive_data(b"X-Filler: " + b"a" * 100 + b"\r\n")
        if events:
            break
    assert not of(events, ev.RequestReceived)
    assert of(events, ev.ConnectionTerminated)
    assert codec.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert codec.wants_close


def test_oversized_head_in_one_read_is_431():
    """A complete head larger than max_header_list_size is refused even when it arrives in one read.

    (A client must not get past the limit just because its whole head fits in one TCP read.)
    """
    codec = H1ServerCodec(max_header_list_size=1024)
    events = codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    assert not of(events, ev.RequestReceived)
    assert codec.data_to_send().startswith(b"HTTP/1.1 431 ")
    assert codec.wants_close


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",   # a TLS ClientHello on cleartext
], ids=["no-version", "extra-token", "header-without-colon", "tls-hello"])
def test_bad_request_line_is_400(garbage):
    """Unparseable request heads are answered with 400 and the connection closes."""
    codec = H1ServerCodec()
    events = codec.receive_data(garbage)
    assert not of(events, ev.RequestReceived)
    assert [e.remote for e in of(events, ev.ConnectionTerminated)] == [False]
    out = codec.data_to_send()
    assert out.startswith(b"HTTP/1.1 400 ") and b"connection: close" in out
    assert codec.wants_close


def test_error_is_answered_only_once():
    """A request whose body breaks in the same read as its head never runs: one 400, and
    re-polling (as the network layer does with b"") adds no second answer."""
    codec = H1ServerCodec()
    events = codec.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n")
    assert not of(events, ev.RequestReceived)
    assert codec.data_to_send().startswith(b"HTTP/1.1 400 ")
    codec.receive_data(b"")
    assert codec.data_to_send() == b""


def test_broken_body_of_a_running_request_is_refused_on_its_stream():
    """A bad chunk after the head was handed out: StreamRefused for that stream (the stream
    machine answers 400 if its response has not started), then the connection closes."""
    codec = H1ServerCodec()
    [head] = codec.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    events = codec.receive_data(b"10000000000000000\r\n")
    assert events[0] == ev.StreamRefused(stream_id=head.stream_id, reason="bad_framing",
                                         detail="bad_framing: Chunk size overflow")
    codec.send_response(1, 400, [(b"content-length", b"0")], end_stream=True)
    assert codec.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert codec.wants_close


def test_head_response_has_no_body():
    """The response to HEAD keeps its content-length but carries no body bytes."""
    codec = H1ServerCodec()
    [request] = codec.receive_data(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gated(request).method == b"HEAD"
    codec.send_response(1, 200, [(b"content-length", b"100")], end_stream=True)
    out = codec.data_to_send()
    assert out.endswith(b"\r\n\r\n") and b"content-length: 100" in out
    events = parse_responses(out, method=b"HEAD")
    assert [type(e) for e in events] == [h11.Response, h11.EndOfMessage]
    assert not codec.wants_close


def test_connection_close_from_client():
    """``Connection: close`` from the client makes the codec ask to close after the response only."""
    codec = H1ServerCodec()
    codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not codec.wants_close
    codec.send_response(1, 200, [(b"content-length", b"2")])
    assert not codec.wants_close
    codec.send_data(1, b"ok", end_stream=True)
    assert codec.wants_close
    assert b"connection: close" in codec.data_to_send().lower()


def test_http10_client():
    """An HTTP/1.0 client is served without 1xx and the connection closes after the response."""
    codec = H1ServerCodec()
    [request] = codec.receive_data(b"GET /old HTTP/1.0\r\n\r\n")
    assert request.http_version == b"1.0" and gated(request).authority == b"" and request.end_stream
    codec.send_informational(1, 103, [])
    codec.send_response(1, 200, [])
    codec.send_data(1, b"whole body", end_stream=True)
    out = codec.data_to_send()
    assert not out.startswith(b"HTTP/1.1 103")
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"whole body")
    assert b"chunked" not in out.lower()  # a 1.0 client cannot read chunked framing
    assert codec.wants_close


@pytest.mark.parametrize("closing", [
    b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
    b"POST /a HTTP/1.0\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",
], ids=["connection close", "http/1.0", "http/1.0 with a body"])
def test_bytes_after_a_closing_request_do_not_take_its_answer(closing):
    """A complete request that closes the connection (``Connection: close``, HTTP/1.0 without
    keep-alive), followed in the same read by more bytes: llhttp refuses those ("Data after
    Connection: close") before any message begins, so they are nobody's request. The complete
    request is still handed out and gets its own answer, then the connection closes (RFC 9112
    §9.6: no later request is processed); it must not be dropped and answered with the 400
    of the bytes after it."""
    codec = H1ServerCodec()
    events = codec.receive_data(closing + get(b"/next"))
    requests = of(events, ev.RequestReceived)
    assert [gated(e).path for e in requests] == [b"/a"], events
    assert codec.data_to_send() == b""  # no 400 ahead of the answer
    codec.send_response(1, 200, [(b"content-length", b"2")])
    codec.send_data(1, b"ok", end_stream=True)
    assert not of(codec.receive_data(b""), ev.RequestReceived)
    out = codec.data_to_send()
    assert [type(e) for e in parse_responses(out)] == [h11.Response, h11.Data, h11.EndOfMessage]
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 1, out
    assert codec.wants_close


def test_http10_request_with_transfer_encoding_closes_after_its_answer():
    """RFC 9112 §6.1: a server that receives an HTTP/1.0 message with Transfer-Encoding MUST
    treat its framing as faulty and close the connection after processing it (an HTTP/1.0
    hop in front may not know chunked coding and frame it differently; nginx answers 400).
    Even with ``Connection: keep-alive``, the request pipelined after it is not served."""
    codec = H1ServerCodec()
    events = codec.receive_data(
        b"POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n" + b"GET /b HTTP/1.0\r\nHost: x\r\nConnection: keep-alive"
        b"\r\n\r\n")
    assert [gated(e).path for e in of(events, ev.RequestReceived)] == [b"/a"]
    assert of(events, ev.DataReceived) == [ev.DataReceived(stream_id=1, data=b"hello")]
    codec.send_response(1, 200, [(b"content-length", b"2")])
    codec.send_data(1, b"ok", end_stream=True)
    assert not of(codec.receive_data(b""), ev.RequestReceived)
    assert b"connection: close\r\n" in codec.data_to_send()
    assert codec.wants_close


def test_expect_100_continue_is_answered_when_asked():
    """``Expect: 100-continue`` is the gate's ``expect_continue``; the stream machine asks for the
    ``100 Continue`` (only once the request is accepted) and the codec writes it."""
    codec = H1ServerCodec()
    [request] = codec.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert request.end_stream is False and gated(request).expect_continue
    assert codec.data_to_send() == b""
    codec.send_informational(1, 100, [])
    assert codec.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    events = codec.receive_data(b"abc")
    assert events == [ev.DataReceived(stream_id=1, data=b"abc"), ev.StreamEnded(stream_id=1)]


def test_goaway_when_idle_closes_now():
    """goaway() without a request in progress asks to close at once."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_response(1, 204, [], end_stream=True)
    assert not codec.wants_close
    codec.goaway()
    assert codec.wants_close


def test_goaway_when_busy_closes_after_the_response():
    """goaway() during an exchange lets the response finish, marked ``connection: close``."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.goaway()
    assert not codec.wants_close
    codec.send_response(1, 200, [(b"content-length", b"2")])
    codec.send_data(1, b"ok", end_stream=True)
    assert codec.wants_close
    events = parse_responses(codec.data_to_send())
    assert (b"connection", b"close") in events[0].headers
    assert events[1].data == b"ok"


def test_goaway_after_head_sent_still_closes():
    """goaway() once the response head is out still closes after the body."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_response(1, 200, [(b"content-length", b"2")])
    codec.goaway()
    assert not codec.wants_close
    codec.send_data(1, b"ok", end_stream=True)
    assert codec.wants_close


def test_response_before_request_body_finished_closes():
    """An early response (request body unread) cannot keep the connection alive."""
    codec = H1ServerCodec()
    codec.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    codec.send_response(1, 413, [(b"content-length", b"0")], end_stream=True)
    assert codec.wants_close


def test_reset_stream_closes():
    """HTTP/1.1 cannot reset one exchange: reset_stream asks for the connection to close."""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.reset_stream(1, 2)
    assert codec.wants_close and codec.open_streams == 0


def test_upgrade_request_is_served_as_plain_http():
    """An ``Upgrade`` request (h2c, websocket) is answered as a plain request (no tunnels yet),
    and a request pipelined behind it is still parsed."""
    codec = H1ServerCodec()
    events = codec.receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                b"Upgrade: h2c\r\n\r\n" + get(b"/b"))
    assert [gated(e).path for e in of(events, ev.RequestReceived)] == [b"/a"]
    codec.send_response(1, 200, [(b"content-length", b"0")], end_stream=True)
    assert [gated(e).path for e in of(codec.receive_data(b""), ev.RequestReceived)] == [b"/b"]


OFFER = b"Upgrade: h2c, websocket\r\nConnection: keep-alive, Upgrade\r\n"


@pytest.mark.parametrize("framing, body, trailers", [
    (b"Content-Length: 5\r\n", b"hello", []),
    (b"Transfer-Encoding: chunked\r\n", b"2\r\nhe\r\n3\r\nllo\r\n0\r\nX-T: 1\r\n\r\n",
     [(b"X-T", b"1")])], ids=["content-length", "chunked"])
@pytest.mark.parametrize("whole", [True, False], ids=["one read", "byte by byte"])
def test_upgrade_offer_with_a_body_is_an_ordinary_request(framing, body, trailers, whole):
    """An upgrade offer with a body: the body (llhttp skips it) is read as the request's body,
    and what follows it is the next request; nothing is held, the connection stays open."""
    data = b"POST /a HTTP/1.1\r\nHost: x\r\n" + OFFER + framing + b"\r\n" + body + get(b"/b")
    events, codec = drive([data] if whole else [data[i:i + 1] for i in range(len(data))])
    requests = of(events, ev.RequestReceived)
    assert [gated(e).path for e in requests] == [b"/a", b"/b"] and not requests[0].end_stream
    assert of(events, ev.DataReceived) == [ev.DataReceived(stream_id=1, data=b"hello")]
    assert [e.headers for e in of(events, ev.TrailersReceived)] == ([trailers] if trailers else [])
    assert [e.stream_id for e in of(events, ev.StreamEnded)] == [1]
    assert not codec.wants_close and not codec.backlogged


def test_upgrade_offer_with_a_body_keeps_the_framing_checks_and_the_head_limit():
    """The body of an upgrade offer is framed as any other: a Transfer-Encoding that is not
    chunked is a framing error (400, close); the head read to frame it counts for no limit."""
    codec = H1ServerCodec()
    events = codec.receive_data(b"POST /a HTTP/1.1\r\nHost: x\r\n" + OFFER +
                                b"Transfer-Encoding: gzip\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    assert not of(events, ev.RequestReceived) and codec.wants_close
    assert codec.data_to_send().startswith(b"HTTP/1.1 400 ")
    head = [(b"Host", b"x"), (b"Upgrade", b"h2c"), (b"Connection", b"upgrade"),
            (b"Content-Length", b"2")]
    limit = len(b"/a") + sum(len(n) + len(v) + 4 for n, v in head)  # exactly this head
    codec = H1ServerCodec(max_header_list_size=limit)
    events = codec.receive_data(b"POST /a HTTP/1.1\r\n" + b"".join(b"%s: %s\r\n" % f for f in head)
                                + b"\r\nok")
    assert of(events, ev.DataReceived) == [ev.DataReceived(stream_id=1, data=b"ok")]


def test_bytes_after_a_pipelined_handshake_wait_for_its_answer():
    """The bytes after a pipelined upgrade request belong to it: the end of the response before
    it neither parses them nor lets a 101 through; its own 101 makes them tunnel bytes."""
    codec = H1ServerCodec()
    handshake = get(b"/ws", ((b"host", b"x"), (b"upgrade", b"websocket"),
                             (b"connection", b"upgrade")))
    events = codec.receive_data(get(b"/1") + handshake + b"frame")
    assert [gated(e).path for e in of(events, ev.RequestReceived)] == [b"/1"]
    with pytest.raises(Refused):
        codec.send_response(1, 101, [(b"upgrade", b"websocket")])
    codec.send_response(1, 200, [(b"content-length", b"0")], end_stream=True)
    events = codec.receive_data(b"")
    assert [e.stream_id for e in events] == [2] and codec.backlogged
    codec.send_response(2, 101, [(b"upgrade", b"websocket")])
    codec.open_tunnel(2)
    assert codec.receive_data(b"") == [ev.DataReceived(stream_id=2, data=b"frame")]


def test_unsafe_response_fields_are_refused_by_the_writer():
    """The writer's own check (whatever the gate said): a CR or LF in a response field, a NUL
    or any other control character but HTAB (VT, FF, ESC, DEL) raises
    Refused("unsafe_response") and queues nothing; HTAB and obs-text go through."""
    for value in (b"a\r\nset-cookie: evil=1", b"a\x00b", b"a\x0bb", b"a\x0cb", b"a\x1bb",
                  b"a\x7fb"):
        codec = H1ServerCodec()
        codec.receive_data(get())
        with pytest.raises(Refused) as refused:
            codec.send_response(1, 200, [(b"x", value)])
        assert refused.value.reason == "unsafe_response"
        assert codec.data_to_send() == b""
    codec = H1ServerCodec()
    codec.receive_data(get())
    codec.send_response(1, 200, [(b"x", b"a\tb\xe9")])
    assert b"x: a\tb\xe9\r\n" in codec.data_to_send()


# -- hypothesis: chunking of a pipelined stream -------------------------------------------------

def pipelined(bodies):
    """Raw bytes of several pipelined requests: GETs, content-length POSTs and chunked POSTs."""
    out = []
    for index, body in enumerate(bodies):
        kind = index % 3
        if kind == 0 or not body:
            out.append(get(b"/%d" % index))
        elif kind == 1:
            out.append(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (index, len(body), body))
        else:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 5]), body[i:i + 5])
                              for i in range(0, len(body), 5))
            out.append(b"POST /%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s"
                       b"0\r\nX-T: %d\r\n\r\n" % (index, chunks, index))
    return b"".join(out)


def drive(pieces):
    """Feed ``pieces`` to a server codec, answering each finished request; return merged events."""
    codec = H1ServerCodec()
    events = []

    def take(new):
        """Record ``new`` (merging adjacent data of one stream) and answer finished requests."""
        for event in new:
            if (type(event) is ev.DataReceived and events and type(events[-1]) is ev.DataReceived
                    and events[-1].stream_id == event.stream_id):
                events[-1] = ev.DataReceived(stream_id=event.stream_id, data=events[-1].data + event.data)
            else:
                events.append(event)
            ended = type(event) is ev.StreamEnded or (type(event) is ev.RequestReceived and event.end_stream)
            if ended:
                codec.send_response(event.stream_id, 200, [(b"content-length", b"0")], end_stream=True)
                take(codec.receive_data(b""))

    for piece in pieces:
        take(codec.receive_data(piece))
    return events, codec


def split(data, cuts):
    """``data`` cut at the positions in ``cuts`` (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return [p for p in pieces if p]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_random_chunking_of_pipelined_stream(bodies, cuts):
    """Any split of a pipelined byte stream yields the same requests, bodies and trailers in order."""
    data = pipelined(bodies)
    expected, _ = drive([data])
    assert [e.stream_id for e in of(expected, ev.RequestReceived)] == list(range(1, len(bodies) + 1))
    got, codec = drive(split(data, cuts))
    assert got == expected
    assert not codec.wants_close and codec.open_streams == 0


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=5))
def test_random_bytes_never_raise(chunks):
    """Random client bytes never raise out of the server codec; errors end in wants_close."""
    codec = H1ServerCodec()
    for chunk in chunks:
        events = codec.receive_data(chunk)
        if of(events, ev.ConnectionTerminated):
            assert codec.wants_close
        codec.receive_data(b"")
        codec.data_to_send()


# -- pipelining: parsed a few requests ahead -----------------------------------------------------

def answer_all(codec, events, status=200):
    """Answer each request handed out (bodiless GETs) until none is left; return their ids."""
    ids = []
    while True:
        requests = of(events, ev.RequestReceived)
        if not requests:
            return ids
        for request in requests:
            ids.append(request.stream_id)
            codec.send_response(request.stream_id, status, [(b"content-length", b"0")],
                                end_stream=True)
        events = codec.receive_data(b"")


def test_pipelined_read_is_parsed_only_a_few_requests_ahead():
    """One 64 KiB read of 2,427 tiny GETs: the codec holds a few times the bytes (most of them
    raw), not ~1.3 MiB of parsed events, until the first is answered; answered one at a time,
    every request comes out once, in order, and the codec stops being backlogged."""
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    blob = request * (65536 // len(request))
    codec = H1ServerCodec()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        events = codec.receive_data(blob)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 3 * len(blob), f"{held} B held for {len(blob)} B read"
    assert codec.backlogged
    assert answer_all(codec, events) == list(range(1, 65536 // len(request) + 1))
    assert not codec.backlogged and not codec.wants_close and codec.open_streams == 0


def mixed_pipeline():
    """120 requests: GETs, Content-Length and chunked POSTs (pipelined()), then an upgrade offer
    with a body that looks like a request, a bodiless upgrade request and two GETs."""
    offer = (b"POST /offer HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade\r\n"
             b"Content-Length: 32\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    handshake = get(b"/ws", ((b"host", b"x"), (b"upgrade", b"websocket"),
                             (b"connection", b"upgrade")))
    bodies = [b"body %d " % i * (i % 7) for i in range(116)]
    return pipelined(bodies) + offer + handshake + get(b"/after") + get(b"/last")


@pytest.mark.parametrize("pipeline,step", [(2, 1), (2, 7), (3, 64), (16, 4096)])
def test_requests_parsed_later_keep_their_framing(monkeypatch, pipeline, step):
    """Whatever the bound and the step (down to one byte at a time, held in the middle of heads,
    bodies and chunk sizes), a pipelined read gives exactly the events it gives unbounded: each
    request once, in order, with its body, trailers and end; the offer's body stays a body."""
    data = mixed_pipeline()
    monkeypatch.setattr(h1, "_PIPELINE", 10 ** 9)
    expected, _ = drive([data])
    paths = [gated(e).path for e in of(expected, ev.RequestReceived)]
    assert len(paths) == 120 and paths[-4:] == [b"/offer", b"/ws", b"/after", b"/last"]
    monkeypatch.setattr(h1, "_PIPELINE", pipeline)
    monkeypatch.setattr(h1, "_STEP", step)
    got, codec = drive([data])
    assert got == expected
    assert not codec.wants_close and not codec.backlogged


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
       pipeline=st.integers(min_value=2, max_value=5), step=st.integers(min_value=1, max_value=50))
def test_random_chunking_with_a_small_bound(bodies, cuts, pipeline, step):
    """Any split of a pipelined stream, parsed at most ``pipeline`` requests ahead ``step`` bytes
    at a time, yields the events of the whole stream parsed unbounded."""
    data = pipelined(bodies)
    saved = h1._PIPELINE, h1._STEP
    try:
        h1._PIPELINE = 10 ** 9
        expected, _ = drive([data])
        h1._PIPELINE, h1._STEP = pipeline, step
        got, codec = drive(split(data, cuts))
    finally:
        h1._PIPELINE, h1._STEP = saved
    assert got == expected
    assert not codec.wants_close and not codec.backlogged


def test_handshake_parsed_after_the_bound_still_tunnels():
    """A WebSocket handshake after 400 pipelined GETs (beyond the bound in one read): once they
    are answered, its 101 makes the bytes after it tunnel bytes, as without pipelining."""
    codec = H1ServerCodec()
    handshake = get(b"/ws", ((b"host", b"x"), (b"upgrade", b"websocket"),
                             (b"connection", b"upgrade")))
    events = codec.receive_data(get(b"/") * 400 + handshake + b"frame")
    for stream_id in range(1, 401):
        assert [e.stream_id for e in events] == [stream_id]
        codec.send_response(stream_id, 200, [(b"content-length", b"0")], end_stream=True)
        events = codec.receive_data(b"")
    assert [gated(e).path for e in events] == [b"/ws"] and events[0].stream_id == 401
    assert codec.backlogged
    codec.send_response(401, 101, [(b"upgrade", b"websocket")])
    codec.open_tunnel(401)
    assert codec.receive_data(b"") == [ev.DataReceived(stream_id=401, data=b"frame")]


def test_framing_error_found_later_never_overtakes_earlier_answers():
    """400 GETs then garbage in one read: the garbage is parsed only as answers finish, while
    parsed requests wait; no 400 may go out before their answers (it would answer them): every
    response is a 200 until the connection closes."""
    codec = H1ServerCodec()
    events = codec.receive_data(get(b"/") * 400 + b"\x00garbage\r\n\r\n")
    assert not of(events, ev.ConnectionTerminated)
    ids = answer_all(codec, events)
    assert codec.wants_close and 16 < len(ids) < 400 and ids == list(range(1, len(ids) + 1))
    out = codec.data_to_send()
    assert out.count(b"HTTP/1.1 200 ") == len(ids) and b" 400 " not in out
