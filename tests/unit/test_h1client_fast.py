"""The lean backend HTTP/1.1 client codec against h11 (the oracle) and against hand-made input.

Strategy: random valid responses (content-length, chunked with trailers, close-delimited, 1xx,
HEAD, 204/304) cut into random pieces must give the same events from
:class:`proxyd.codec.h1client.H1FastClientCodec` as from the h11-based
:class:`proxyd.codec.h1.H1ClientCodec`; requests it writes must parse in an h11 server into the
same request; malformed responses raise ``h11.RemoteProtocolError``.
"""

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd import events as ev
from proxyd.codec.h1 import H1ClientCodec
from proxyd.codec.h1client import H1FastClientCodec

_names = st.sampled_from([b"x-a", b"X-Mixed", b"content-type", b"etag", b"set-cookie", b"x-long-name"])
_values = st.binary(min_size=0, max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7e) or b"v")
_headers = st.lists(st.tuples(_names, _values), max_size=6)


@st.composite
def responses(draw):
    """(request method, raw response bytes, whether the connection ends after it)."""
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    headers = draw(_headers)
    informational = draw(st.booleans())
    raw = b""
    if informational:
        raw += b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
    no_body = method == b"HEAD" or status in (204, 304)
    head = [b"HTTP/1.1 %d Whatever\r\n" % status]
    head += [n + b": " + v + b"\r\n" for n, v in headers]
    payload = b""
    if framing == "length":
        head.append(b"Content-Length: %d\r\n" % len(body))
        payload = b"" if no_body else body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked\r\n")
        if not no_body:
            cut = draw(st.lists(st.integers(1, 50), max_size=8))
            pieces, rest = [], body
            for n in cut:
                if rest:
                    pieces.append(rest[:n])
                    rest = rest[n:]
            if rest:
                pieces.append(rest)
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
            trailers = draw(st.lists(st.tuples(st.just(b"x-trailer"), _values), max_size=2))
            payload += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    else:
        payload = b"" if no_body else body
    raw += b"".join(head) + b"\r\n" + payload
    closes = framing == "close" and not no_body
    return method, raw, closes


def _run(codec, method, raw, cuts, closes):
    """Feed ``raw`` in pieces; return events with body bytes merged (chunking may differ)."""
    codec.send_request(1, method, b"/x", [(b"host", b"app")], end_stream=True)
    codec.data_to_send()
    events = []
    pos = 0
    for cut in cuts + [len(raw)]:
        piece = raw[pos:cut]
        pos = max(pos, cut)
        if piece:
            events += codec.receive_data(piece)
    if closes:
        events += codec.receive_data(b"")
    merged = []
    for event in events:
        if type(event) is ev.ConnectionTerminated:
            continue
        if type(event) is ev.DataReceived and merged and type(merged[-1]) is ev.DataReceived:
            merged[-1] = ev.DataReceived(stream_id=1, data=merged[-1].data + event.data)
        elif type(event) is ev.DataReceived and not event.data:
            continue
        else:
            merged.append(event)
    return merged


@settings(max_examples=300, deadline=None)
@given(responses(), st.lists(st.integers(0, 400), max_size=10))
def test_same_events_as_h11_for_any_chunking(case, cuts):
    """Random valid responses cut anywhere give the events h11 gives."""
    method, raw, closes = case
    cuts = sorted(c for c in cuts if c < len(raw))
    assert _run(H1FastClientCodec(), method, raw, cuts, closes) == \
        _run(H1ClientCodec(), method, raw, cuts, closes)


def _parse_request(data):
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    events = []
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA:
            break
        events.append(event)
        if type(event) is h11.EndOfMessage:
            break
    return events


@pytest.mark.parametrize("headers,body,expect_chunked", [
    ([(b"host", b"app"), (b"content-length", b"5")], [b"hello"], False),
    ([(b"host", b"app"), (b"transfer-encoding", b"chunked")], [b"he", b"llo"], True),
])
def test_requests_parse_in_h11(headers, body, expect_chunked):
    """A request written by the fast codec is the same request to an h11 server."""
    codec = H1FastClientCodec()
    codec.send_request(1, b"POST", b"/up?x=1", headers)
    for chunk in body:
        codec.send_data(chunk)
    codec.end_request([(b"x-t", b"1")] if expect_chunked else ())
    events = _parse_request(codec.data_to_send())
    request = events[0]
    assert request.method == b"POST" and request.target == b"/up?x=1"
    assert b"".join(bytes(e.data) for e in events if type(e) is h11.Data) == b"hello"
    end = events[-1]
    assert type(end) is h11.EndOfMessage
    assert list(end.headers) == ([(b"x-t", b"1")] if expect_chunked else [])


def test_header_values_with_line_breaks_are_refused():
    """A CR or LF in a header value is never written (request smuggling)."""
    codec = H1FastClientCodec()
    with pytest.raises(h11.LocalProtocolError):
        codec.send_request(1, b"GET", b"/", [(b"x", b"a\r\nevil: 1")], end_stream=True)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
])
def test_malformed_responses_raise(raw):
    """Broken responses raise h11.RemoteProtocolError, as the h11 codec does."""
    codec = H1FastClientCodec()
    codec.send_request(1, b"GET", b"/", [(b"host", b"a")], end_stream=True)
    with pytest.raises(h11.RemoteProtocolError):
        codec.receive_data(raw)


def test_oversized_head_raises():
    """A response head larger than the limit is refused before it completes."""
    codec = H1FastClientCodec(max_header_list_size=1024)
    codec.send_request(1, b"GET", b"/", [(b"host", b"a")], end_stream=True)
    with pytest.raises(h11.RemoteProtocolError):
        codec.receive_data(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 2000)


def test_keep_alive_cycle_and_close():
    """reusable() after a complete exchange; not after Connection: close or HTTP/1.0."""
    codec = H1FastClientCodec()
    for _ in range(3):
        codec.send_request(1, b"GET", b"/", [(b"host", b"a")], end_stream=True)
        codec.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert codec.response_complete and codec.reusable()
    codec.send_request(1, b"GET", b"/", [(b"host", b"a")], end_stream=True)
    codec.receive_data(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert codec.response_complete and not codec.reusable()
    old = H1FastClientCodec()
    old.send_request(1, b"GET", b"/", [(b"host", b"a")], end_stream=True)
    old.receive_data(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert not old.reusable()


def test_early_response_before_request_body_is_not_reusable():
    """A response that comes before the request body ended leaves the connection unusable."""
    codec = H1FastClientCodec()
    codec.send_request(1, b"POST", b"/", [(b"host", b"a"), (b"content-length", b"10")])
    codec.receive_data(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert codec.response_complete and not codec.reusable()
