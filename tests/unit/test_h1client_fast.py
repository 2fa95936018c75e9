"""The lean backend HTTP/1.1 client codec against h11 (the oracle) and against hand-made input.

Strategy: random valid responses (content-length, chunked with trailers, close-delimited, 1xx,
HEAD, 204/304) cut into random pieces must give the same events from
:class:`proxyd.codec.h1client.H1FastClientCodec` as from h11 (``tests.support.H11ResponseOracle``);
requests it writes must parse in an h11 server into the same request; malformed responses raise
``Refused("bad_response")``. (The writer's refusals have their own property tests in
``test_gate.py``, ``test_writer_refuses_or_writes_exactly_one_request``, and in
``test_backend_oracles.py``.)
"""

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd import events as ev
from proxyd.bridge import BackendRequest
from proxyd.codec.h1client import H1FastClientCodec, _split_block
from proxyd.errors import Refused
from tests.support import H11ResponseOracle, parse_h11_requests


def request(method=b"GET", headers=(), length=None, has_body=False):
    """A neutral request for the codec under test."""
    return BackendRequest(method, b"/x", b"app", list(headers), length, has_body)

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


def _run(codec, raw, cuts, closes):
    """Feed ``raw`` in pieces; return events with body bytes merged (chunking may differ)."""
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


def _oracle(method, raw, cuts, closes):
    """What h11 reads (as :func:`_run`), less what the codec consumes and h11 keeps: the
    Transfer-Encoding of a chunked head and the Content-Length it overrides."""
    events = _run(H11ResponseOracle(method), raw, cuts, closes)
    for event in events:
        if type(event) is ev.ResponseReceived and any(
                name == b"transfer-encoding" for name, _ in event.headers):
            event.headers = [(name, value) for name, value in event.headers
                             if name not in (b"transfer-encoding", b"content-length")]
    return events


@settings(max_examples=300, deadline=None)
@given(responses(), st.lists(st.integers(0, 400), max_size=10))
def test_same_events_as_h11_for_any_chunking(case, cuts):
    """Random valid responses cut anywhere give the events h11 gives."""
    method, raw, closes = case
    cuts = sorted(c for c in cuts if c < len(raw))
    ours = H1FastClientCodec()
    ours.send_request(1, request(method))
    ours.data_to_send()
    assert _run(ours, raw, cuts, closes) == _oracle(method, raw, cuts, closes)


@settings(max_examples=200, deadline=None)
@given(responses(), st.lists(st.integers(0, 400), max_size=10))
def test_bare_lf_responses_give_the_same_events(case, cuts):
    """RFC 9112 §2.2: a recipient may accept a bare LF as a line end. The same responses with LF
    instead of CR LF in head, chunk lines and trailers give the same events (h11 agrees)."""
    method, raw, closes = case
    start = raw.find(b"\r\n\r\n") + 4 if raw.startswith(b"HTTP/1.1 103") else 0
    head_end = raw.find(b"\r\n\r\n", start) + 4  # the heads; bodies may hold CR LF themselves
    bare = raw[:head_end].replace(b"\r\n", b"\n") + raw[head_end:]
    cuts = sorted(c for c in cuts if c < len(bare))
    ours = H1FastClientCodec()
    ours.send_request(1, request(method))
    assert _run(ours, bare, cuts, closes) == _oracle(method, bare, cuts, closes)


@pytest.mark.parametrize("length,chunks,expect_chunked", [
    (5, [b"hello"], False),
    (None, [b"he", b"llo"], True),
])
def test_requests_parse_in_h11(length, chunks, expect_chunked):
    """A request written by the fast codec is the same request to an h11 server: Host first,
    the framing derived from the declared length (chunked when none), trailers when chunked."""
    codec = H1FastClientCodec()
    codec.send_request(1, BackendRequest(b"POST", b"/up?x=1", b"app", [(b"x-a", b"1")], length,
                                         True))
    for chunk in chunks:
        codec.send_data(chunk)
    codec.end_request([(b"x-t", b"1")] if expect_chunked else ())
    events = parse_h11_requests(codec.data_to_send())
    head = events[0]
    assert head.method == b"POST" and head.target == b"/up?x=1"
    assert list(head.headers)[:2] == [(b"host", b"app"), (b"x-a", b"1")]
    assert b"".join(bytes(e.data) for e in events if type(e) is h11.Data) == b"hello"
    end = events[-1]
    assert type(end) is h11.EndOfMessage
    assert list(end.headers) == ([(b"x-t", b"1")] if expect_chunked else [])


@pytest.mark.parametrize("length", [None, 5, 0], ids=["chunked", "length", "bodiless"])
def test_writer_writes_nothing_after_the_request_ended(length):
    """The last line of defence: once a request ended (last chunk, declared length, no body),
    body bytes or a second end would be a request of their own on the connection (after
    ``0\r\n\r\n``, ``GET /admin ...`` is the next request to the backend), whatever the layers
    above let through: the writer refuses them and has written exactly one request."""
    codec = H1FastClientCodec()
    codec.send_request(1, BackendRequest(b"POST", b"/up", b"app", [], length, length != 0))
    if length != 0:
        codec.send_data(b"hello")
        codec.end_request()
    smuggled = b"GET /admin HTTP/1.1\r\nhost: app\r\n\r\n"
    with pytest.raises(Refused):
        codec.send_data(smuggled)
    with pytest.raises(Refused):
        codec.end_request()
    events = parse_h11_requests(codec.data_to_send())
    assert [type(e) for e in events].count(h11.Request) == 1
    assert type(events[-1]) is h11.EndOfMessage


def test_request_without_body_framing():
    """No body: no framing line, except ``content-length: 0`` for POST, PUT and PATCH; an empty
    authority falls back to the backend's address as Host."""
    codec = H1FastClientCodec()
    codec.send_request(1, BackendRequest(b"GET", b"/", b"", [], None, False), b"10.0.0.1:80")
    assert codec.data_to_send() == b"GET / HTTP/1.1\r\nhost: 10.0.0.1:80\r\n\r\n"
    codec = H1FastClientCodec()
    codec.send_request(1, BackendRequest(b"POST", b"/", b"a", [], None, False))
    assert codec.data_to_send() == b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"


def test_header_values_with_line_breaks_are_refused():
    """A CR or LF in a header value is never written (request smuggling): Refused, nothing
    queued."""
    codec = H1FastClientCodec()
    with pytest.raises(Refused) as refused:
        codec.send_request(1, request(headers=[(b"x", b"a\r\nevil: 1")]))
    assert refused.value.reason == "unsafe_request"
    assert codec.data_to_send() == b""


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0_5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\x0c5\r\nhello\r\n0\r\n\r\n",
])
def test_malformed_responses_raise(raw):
    """Broken responses (bad status lines, conflicting lengths, obs-fold, bare CR, chunk sizes of
    2^64 and more or not 1*HEXDIG, transfer codings other than one ``chunked``) raise
    Refused("bad_response")."""
    codec = H1FastClientCodec()
    codec.send_request(1, request())
    with pytest.raises(Refused) as refused:
        codec.receive_data(raw)
    assert refused.value.reason == "bad_response"


def _chunk_outcome(parser, line):
    """The body ``parser`` reads from a chunked response whose first chunk-size line is
    ``line`` (its chunk holds as many bytes as the line's digits say), or None if it refuses."""
    digits = bytes(c for c in line.split(b";")[0] if c in b"0123456789abcdefABCDEF")
    raw = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + line + b"\r\n"
           + b"a" * int(digits or b"0", 16) + b"\r\n0\r\n\r\n")
    try:
        events = parser.receive_data(raw)
    except (Refused, h11.RemoteProtocolError):
        return None
    if type(events[-1]) is not ev.StreamEnded:
        return None
    return b"".join(e.data for e in events if type(e) is ev.DataReceived)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"", b" ", b"\t", b"\x0b", b"\x0c", b"+", b"-", b"0x", b"0X", b"0"]),
       st.text("0123456789abcdefABCDEF_", min_size=0, max_size=3).map(str.encode),
       st.sampled_from([b"", b" ", b"\t", b"\x0b", b";", b";a=b", b";a=\"x y\"", b" \t", b"_"]))
def test_chunk_size_lines_are_read_as_h11_reads_them(prefix, digits, suffix):
    """RFC 9112 §7.1: a chunk size is 1*HEXDIG (no sign, ``0x``, ``_`` or leading whitespace),
    then optional whitespace and chunk extensions. Random size lines give the body h11 gives,
    and are refused where h11 refuses them. (Whitespace before ``;``, which RFC 9112 allows as
    BWS and h11 does not, is not drawn.)"""
    line = prefix + digits + suffix
    ours = H1FastClientCodec()
    ours.send_request(1, request())
    assert _chunk_outcome(ours, line) == _chunk_outcome(H11ResponseOracle(), line), line


def test_chunk_size_may_be_followed_by_whitespace_and_extensions():
    """BWS before a chunk extension (RFC 9112 §7.1.1) and whitespace after the size are read;
    upper- and lower-case hex digits alike."""
    codec = H1FastClientCodec()
    codec.send_request(1, request())
    events = codec.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"A \t;ext=1\r\n0123456789\r\n0b\t\r\nhello world\r\n0\r\n\r\n")
    assert b"".join(e.data for e in events if type(e) is ev.DataReceived) == \
        b"0123456789hello world"
    assert type(events[-1]) is ev.StreamEnded


def test_field_contents_are_the_gates_to_judge():
    """A bare CR or a NUL inside a value is no framing error: the codec hands the field over and
    the gate refuses the response (one check, not two)."""
    from proxyd import gate

    codec = H1FastClientCodec()
    codec.send_request(1, request())
    [head, _end] = codec.receive_data(b"HTTP/1.1 200 OK\r\nx: a\rb\r\ny: a\x00b\r\n"
                                      b"content-length: 0\r\n\r\n")
    assert head.headers[:2] == [(b"x", b"a\rb"), (b"y", b"a\x00b")]
    with pytest.raises(Refused) as refused:
        gate.check_response(head.status, head.headers)
    assert refused.value.reason == "bad_response"


def _split_reference(buf, limit):
    """The head split by its definition: the first blank line anywhere (CR LF or bare LF line
    ends), the block no longer than ``limit``; "none" while incomplete, "large" when refused."""
    ends = [i for i in range(len(buf)) if buf[i:i + 2] == b"\n\n" or buf[i:i + 3] == b"\n\r\n"]
    if not ends:
        return "large" if len(buf) > limit else "none"
    end = ends[0]
    skip = 2 if buf[end + 1:end + 2] == b"\n" else 3
    if end > 0 and buf[end - 1] == 0x0D:
        end, skip = end - 1, skip + 1
    if end > limit:
        return "large"
    return buf[:end], buf[end + skip:]


@settings(max_examples=300, deadline=None)
@given(head=st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b": "]), max_size=30),
       body=st.binary(max_size=40), limit=st.integers(0, 24))
def test_head_split_searches_only_the_head(head, body, limit):
    """The split searches at most ``limit`` bytes and the terminator, yet finds what a search of
    the whole buffer finds (a body behind the head is never scanned, RFC 9112 §2.2 line ends)."""
    buf = b"".join(head) + body
    try:
        found = _split_block(buf, limit, "head")
    except Refused:
        found = "large"
    want = _split_reference(buf, limit)
    if found is None:
        assert want == "none"
    elif found == "large":
        assert want == "large"
    else:
        lines, rest = found
        block, want_rest = want
        assert rest == want_rest and b"\n".join(line.rstrip(b"\r") for line in lines) == \
            b"\n".join(line.rstrip(b"\r") for line in block.split(b"\n"))


def test_head_split_does_not_scan_the_body():
    """A 64 KiB read holding a head and a body: the search for the blank line stops at the
    head's limit (it scanned the whole body before, a measurable cost on large responses)."""
    scanned = []

    class Probe(bytes):
        def find(self, sub, start=0, end=None):
            scanned.append(len(self) if end is None else end)
            return bytes.find(self, sub, start, len(self) if end is None else end)

    head = b"HTTP/1.1 200 OK\r\ncontent-length: 65000\r\n\r\n"
    lines, rest = _split_block(Probe(head + b"x" * 65000), 1024, "head")
    assert lines[0] == b"HTTP/1.1 200 OK" and len(rest) == 65000
    assert scanned and max(scanned) <= 1024 + 4


def test_oversized_head_raises():
    """A response head larger than the limit is refused before it completes."""
    codec = H1FastClientCodec(max_header_list_size=1024)
    codec.send_request(1, request())
    with pytest.raises(Refused):
        codec.receive_data(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 2000)


def test_length_and_chunked_together_are_framed_chunked_and_never_reused():
    """RFC 9112 §6.3: with both Content-Length and Transfer-Encoding the chunked coding frames the
    body, and the connection is not reused afterwards (a smuggling attempt)."""
    codec = H1FastClientCodec()
    codec.send_request(1, request())
    events = codec.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n"
                                b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert b"".join(e.data for e in events if type(e) is ev.DataReceived) == b"hello"
    assert type(events[-1]) is ev.StreamEnded
    assert codec.response_complete and not codec.reusable()


def test_chunked_coding_is_consumed_with_the_length_it_overrides():
    """The codec decodes the chunked coding, so the head it hands on has no Transfer-Encoding
    and no Content-Length (RFC 9112 §6.3: an intermediary removes the overridden length): a
    Transfer-Encoding that reaches the gate can only be an HTTP/2 backend's, and is refused.
    The same from the memo of heads."""
    for _ in range(2):
        codec = H1FastClientCodec()
        codec.send_request(1, request())
        [head, *_] = codec.receive_data(b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\n"
                                        b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
        assert head.headers == [(b"x-a", b"1")]


def test_keep_alive_cycle_and_close():
    """reusable() after a complete exchange; not after Connection: close or HTTP/1.0."""
    codec = H1FastClientCodec()
    for _ in range(3):
        codec.send_request(1, request())
        codec.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert codec.response_complete and codec.reusable()
    codec.send_request(1, request())
    codec.receive_data(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert codec.response_complete and not codec.reusable()
    old = H1FastClientCodec()
    old.send_request(1, request())
    old.receive_data(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert not old.reusable()


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS"])
@pytest.mark.parametrize("length", [7, None], ids=["length", "chunked"])
def test_content_without_semantics_travels_alone(method, length):
    """RFC 9110 §9.3.1/2/5/8: content on GET, HEAD, DELETE or TRACE has no semantics (on OPTIONS,
    §9.3.7, none defined), and a backend that ignores it would read it as a request of its own
    (CL.0; an OPTIONS handler such as a CORS preflight reads none). The request is still
    written whole, with ``connection: close`` (h11 reads exactly one request carrying it), and
    the connection is never reused; the same head from the memo does the same."""
    for _ in range(2):  # the second one is written from the memo
        codec = H1FastClientCodec()
        codec.send_request(1, request(method, length=length, has_body=True))
        codec.send_data(b"GET /a ")
        codec.end_request()
        events = parse_h11_requests(codec.data_to_send())
        assert [type(e) for e in events].count(h11.Request) == 1
        assert (b"connection", b"close") in list(events[0].headers)
        assert b"".join(bytes(e.data) for e in events if type(e) is h11.Data) == b"GET /a "
        codec.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert codec.response_complete and not codec.reusable()


@pytest.mark.parametrize("method,length,has_body", [
    (b"GET", None, False), (b"GET", 0, True), (b"POST", 7, True), (b"PUT", None, True),
    (b"PATCH", 7, True), (b"OPTIONS", 0, True)])
def test_requests_with_meaningful_or_no_content_keep_their_connection(method, length, has_body):
    """No content (none, or a declared length of 0), or a method that gives content a meaning
    (POST, PUT, PATCH): no
    ``connection`` field is written and the connection is reused after the exchange."""
    codec = H1FastClientCodec()
    codec.send_request(1, request(method, length=length, has_body=has_body))
    if has_body:
        if length:
            codec.send_data(b"x" * length)
        codec.end_request()
    wire = codec.data_to_send()
    assert b"connection" not in wire.lower()
    codec.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert codec.response_complete and codec.reusable()


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS"])
def test_body_of_unknown_length_that_turns_out_empty_keeps_the_connection(method):
    """A body of unknown length that ends without a byte or trailer (an HTTP/2 GET whose
    HEADERS lacks END_STREAM, ended by an empty DATA frame) carried no content: the writer
    sends one bodiless request, without ``transfer-encoding`` (its ``0`` chunk would be a
    request of its own to an app that reads no content on these methods) and without
    ``connection: close``, and the connection is reused; the same from the memo."""
    for _ in range(2):  # the second one is written from the memo
        codec = H1FastClientCodec()
        codec.send_request(1, request(method, has_body=True))
        codec.end_request()
        wire = codec.data_to_send()
        assert wire.endswith(b"\r\n\r\n") and wire.count(b"\r\n\r\n") == 1
        events = parse_h11_requests(wire)
        assert [type(e) for e in events] == [h11.Request, h11.EndOfMessage]
        assert b"connection" not in wire.lower() and b"transfer-encoding" not in wire.lower()
        codec.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert codec.response_complete and codec.reusable()


@pytest.mark.parametrize("method,head", [
    (b"HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 1\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n")])
def test_announced_content_that_may_not_follow_ends_the_connections_use(method, head):
    """RFC 9110 §6.4.1: nothing follows a response to HEAD, a 204 or a 304, whatever its head
    announces. The response ends with its head; but a backend that announced content may write
    it anyway, in a later read, where it would be taken for the next request's response: such a
    connection is not reused. The same from the memo of heads."""
    for _ in range(2):
        codec = H1FastClientCodec()
        codec.send_request(1, request(method))
        events = codec.receive_data(head)
        assert [type(e) for e in events] == [ev.ResponseReceived, ev.StreamEnded]
        assert codec.response_complete and not codec.reusable()


@pytest.mark.parametrize("method,head", [
    (b"HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n")])
def test_bodiless_responses_that_announce_nothing_keep_their_connection(method, head):
    """A response to HEAD, a 204 or a 304 that announces no content (no Content-Length, or 0,
    and no Transfer-Encoding) leaves nothing to come: the connection is reused."""
    codec = H1FastClientCodec()
    codec.send_request(1, request(method))
    codec.receive_data(head)
    assert codec.response_complete and codec.reusable()


def test_early_response_before_request_body_is_not_reusable():
    """A response that comes before the request body ended leaves the connection unusable."""
    codec = H1FastClientCodec()
    codec.send_request(1, request(b"POST", length=10, has_body=True))
    codec.receive_data(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
    assert codec.response_complete and not codec.reusable()


@settings(max_examples=300, deadline=None)
@given(responses(), st.lists(st.integers(0, 400), max_size=10))
def test_a_head_seen_again_gives_the_same_events(case, cuts):
    """The memo of parsed heads: the same response on a second connection (its head parsed from
    the memo) gives the events the first gave, and both equal h11's."""
    from proxyd.codec import h1client

    method, raw, closes = case
    cuts = sorted(c for c in cuts if c < len(raw))
    h1client._heads.clear()
    runs = []
    for _ in range(2):
        codec = H1FastClientCodec()
        codec.send_request(1, request(method))
        runs.append(_run(codec, raw, cuts, closes))
    assert runs[0] == runs[1] == _oracle(method, raw, cuts, closes)


def test_the_head_memo_keeps_only_small_final_heads_and_is_bounded():
    """1xx heads and heads over the memo's ``max_bytes`` are parsed every time; the memo holds at
    most ``max_entries`` heads; a malformed head is refused every time."""
    from proxyd.codec import h1client

    h1client._heads.clear()
    h1client._parse_head(b"HTTP/1.1 103 Early Hints\r\nlink: </a>")
    h1client._parse_head(b"HTTP/1.1 200 OK\r\nx: " + b"v" * h1client._heads.max_bytes)
    assert not h1client._heads
    for i in range(3 * h1client._heads.max_entries):
        assert h1client._parse_head(b"HTTP/1.1 200 OK\r\netag: %d" % i)[0] == 200
    assert 0 < len(h1client._heads) <= h1client._heads.max_entries
    for _ in range(2):
        with pytest.raises(Refused):
            h1client._parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2")


@pytest.mark.parametrize("value", [b"\x0b", b"a\x0cb", b"a\x7f", b"\x1b[0m"])
def test_writer_refuses_control_characters_in_values(value):
    """Defence in depth (found by the writer's property test): a control character other than
    HTAB in a field value (RFC 9110 §5.5) is refused by the writer even without the gate, and
    nothing is queued; HTAB and obs-text still pass."""
    codec = H1FastClientCodec()
    with pytest.raises(Refused) as refused:
        codec.send_request(1, request(headers=[(b"x-a", value)]))
    assert refused.value.reason == "unsafe_request" and codec.data_to_send() == b""
    codec.send_request(1, request(headers=[(b"x-a", b"a\tb\xe9")]))
    assert b"x-a: a\tb\xe9\r\n" in codec.data_to_send()


@pytest.mark.parametrize("breq", [
    BackendRequest(b"POST", b"/a", b"h", [], -5, True),
    BackendRequest(b"GET", b"/", b"h", [(b"upgrade", b"h2c")], None, False),
    BackendRequest(b"GET", b"/", b"h", [(b"http2-settings", b"AAMAAABkAAQAAP__")], None, False),
    BackendRequest(b"GET", b"/a#frag", b"h", [], None, False),
    BackendRequest(b"GET", b"*", b"h", [], None, False),
    BackendRequest(b"POST", b"/", b"h", [(b"transfer_encoding", b"chunked")], 5, True),
    BackendRequest(b"POST", b"/", b"h", [(b"content_length", b"0")], None, True),
], ids=["negative-length", "upgrade", "http2-settings", "fragment", "star-get",
        "transfer_encoding", "content_length"])
def test_writer_alone_refuses_what_would_change_framing_or_meaning(breq):
    """Defence in depth (review): without the gate, the writer refuses a Content-Length that is
    not 1*DIGIT, an Upgrade or HTTP2-Settings field it did not add itself (an h2c switch), a
    fragment in the target, ``*`` with another method than OPTIONS, and a framing field spelled
    with ``_`` (CGI-style parsers frame by ``transfer_encoding``); nothing is queued, and
    nothing is remembered."""
    from proxyd.codec import h1client

    h1client._written.clear()
    codec = H1FastClientCodec()
    for _ in range(2):
        with pytest.raises(Refused) as refused:
            codec.send_request(1, breq)
        assert refused.value.reason == "unsafe_request" and codec.data_to_send() == b""
    assert not h1client._written


def test_writer_still_writes_options_star_and_websocket_upgrades():
    """``OPTIONS *`` is written, and so is a WebSocket handshake the writer was told of (its
    own ``upgrade: websocket`` line)."""
    from proxyd.bridge import TunnelBackendRequest

    codec = H1FastClientCodec()
    codec.send_request(1, BackendRequest(b"OPTIONS", b"*", b"h", [], None, False))
    assert codec.data_to_send().startswith(b"OPTIONS * HTTP/1.1\r\n")
    codec = H1FastClientCodec()
    codec.send_request(1, TunnelBackendRequest(b"GET", b"/ws", b"h", [], None, False, False,
                                               upgrade=b"websocket", key=b"k", own_key=True))
    assert b"upgrade: websocket\r\nconnection: upgrade\r\n" in codec.data_to_send()
