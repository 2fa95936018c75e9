"""What proxyd writes to an HTTP/1.1 backend, read by several independent parsers.

A single oracle is not enough: h11 read ``transfer_encoding: chunked`` as an ordinary field
while CGI-style backends framed the body by it. So every request that passes the gate, the
header translation and the HTTP/1.1 writer is read back by h11 (RFC 9112, strict), llhttp
(httptools: Node.js's parser, strict mode) and a small lenient model of permissive legacy
backends (:func:`tests.oracles.lenient_view`, first and last Content-Length), and the head's
fields by Python's email parser as well: each must see exactly one request, with the gate's
method and target and the body proxyd meant to send, and no byte after it (identical framing).

The lenient model is tested first on hand-written inputs (it is an oracle, so it needs its own
checks). The property runs the unit pipeline (gate -> headers -> writer) on hostile requests
from every frontend family; ``tests/protocol/test_oracles_frontends.py`` runs the same requests
through the whole in-memory proxy. Bounded in the suite (ten times ``PROXYD_FUZZ_EXAMPLES``, 60
by default, per property); a long run is ``PROXYD_FUZZ_EXAMPLES=2000 python -m pytest
tests/unit/test_backend_oracles.py -q`` (20,000 requests per property; 10,000 took 39 s and
30 s here).
"""

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxyd import events as ev
from proxyd import gate
from proxyd.bridge import Policy, backend_request
from proxyd.codec.h1client import H1FastClientCodec
from proxyd.config import HeaderPolicy
from proxyd.errors import Refused
from proxyd.headers import request_trailers
from proxyd.route import normalize_target
from tests.oracles import (FRAMING_SPELLINGS, HOSTILE_VALUES, ClientRequest, Seen,
                           assert_backends_agree, assert_one_backend_request, client_requests,
                           h11_view, h2_request_head, ignores_bodies_view, lenient_view,
                           llhttp_view, stdlib_fields)

EXAMPLES = int(os.environ.get("PROXYD_FUZZ_EXAMPLES", "60"))
# The unit pipeline costs about a millisecond per example (llhttp is fed byte by byte).
UNIT = settings(max_examples=10 * EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=list(HealthCheck))
LONG = pytest.mark.timeout(max(300, EXAMPLES // 10))
POLICY = Policy(headers=HeaderPolicy(), tls=False)
VERSIONS = {"h1": b"1.1", "h2": b"2", "spdy": b"SPDY/3.1"}
FAMILIES = {"h1": gate.HTTP1, "h2": gate.H2, "spdy": gate.SPDY}


# -- the lenient model on its own --------------------------------------------------------------

@pytest.mark.parametrize("data, requests, leftover", [
    # bare LF line ends, blank lines before the request line, whitespace runs in it
    (b"\r\n\nGET  /a \tHTTP/1.1\nHost: a\n\n", [Seen(b"GET", b"/a", [(b"host", b"a")], b"")],
     b""),
    # "_" is "-", any case, whitespace before the colon: a body of its own length
    (b"POST / HTTP/1.1\r\nContent_Length : 3\r\n\r\nabcGET",
     [Seen(b"POST", b"/", [(b"content-length", b"3")], b"abc")], b"GET"),
    # obs-fold joined with one SP
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n  2\r\n\r\n", [Seen(b"GET", b"/", [(b"x-a", b"1 2")], b"")],
     b""),
    # Transfer-Encoding: the last of a list, any case, over Content-Length; chunk extensions
    # skipped, a bare LF after chunk data, trailers read and ignored
    (b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: gzip\r\nTransfer_Encoding:"
     b" CHUNKED\r\n\r\n2;a=\"b\"\r\nab\n1 ; x\r\nc\r\n0\r\nx-t: 1\r\n\r\n",
     [Seen(b"POST", b"/", [(b"content-length", b"1"), (b"transfer-encoding", b"gzip"),
                           (b"transfer-encoding", b"CHUNKED")], b"abc")], b""),
    # an unfinished request is leftover, not an error
    (b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabc", [],
     b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nabc"),
])
def test_lenient_model_reads_what_permissive_backends_read(data, requests, leftover):
    """The lenient model's rules, each on a hand-written input: bare LF, blank lines before the
    request, ``_`` for ``-``, whitespace before the colon, obs-fold, Transfer-Encoding (last
    coding, any case, wins over Content-Length), chunk extensions, trailers, unfinished input."""
    assert lenient_view(data) == (requests, leftover, None)


def test_lenient_model_first_or_last_content_length():
    """Of two Content-Length fields the model takes the first, its variant the last: the two
    read different requests; h11 reads only the first spelling."""
    data = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent_length: 4\r\n\r\nabcd"
    first, last = lenient_view(data), lenient_view(data, last_length=True)
    assert [r.body for r in first.requests] == [b"a"] and first.leftover == b"bcd"
    assert [r.body for r in last.requests] == [b"abcd"] and last.leftover == b""
    assert [r.body for r in h11_view(data).requests] == [b"a"]  # one length, a leftover


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\n continuation first\r\n\r\n",
    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\ncontent-length: 0x5\r\n\r\n",
    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nz\r\n",
    b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXY",
    b"GET /\r\n\r\n",
])
def test_lenient_model_refuses_what_nobody_can_read(data):
    """Lines without a colon, a continuation line first, a last coding that is not chunked, a
    non-digit length, a non-hex chunk size, chunk data without its line end, an HTTP/0.9
    request line: errors, no request."""
    view = lenient_view(data)
    assert view.error and view.requests == [] and view.leftover == data


def test_the_oracles_differ_where_the_review_found_the_hole():
    """The review's case: h11 and llhttp read ``transfer_encoding: chunked`` beside a
    Content-Length as an ordinary field, the lenient model frames the body by it, so the
    oracles disagree on such bytes (which the writer now refuses to write)."""
    body = b"0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n"
    data = (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\ntransfer_encoding: chunked"
            b"\r\n\r\n%s" % (len(body), body))
    assert [r.body for r in h11_view(data).requests] == [body]
    assert [r.body for r in llhttp_view(data).requests] == [body]
    assert [(r.target, r.body) for r in lenient_view(data).requests] == [(b"/", b""),
                                                                         (b"/admin", b"")]
    with pytest.raises(AssertionError):
        assert_backends_agree(data, b"POST")


def test_the_body_ignoring_model_runs_a_request_hidden_in_get_content():
    """The CL.0 app (:func:`tests.oracles.ignores_bodies_view`) reads no content on GET: a
    request hidden in it runs as a second one, which ``assert_backends_agree`` catches, while
    the other parsers read one GET; told ``connection: close`` it stops after the first
    request and the hidden one never runs. POST content is read as usual."""
    hidden = b"GET /admin HTTP/1.1\r\nhost: a\r\n\r\n"
    data = b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s" % (len(hidden), hidden)
    assert [r.body for r in h11_view(data).requests] == [hidden]
    assert [r.target for r in ignores_bodies_view(data).requests] == [b"/", b"/admin"]
    with pytest.raises(AssertionError):
        assert_backends_agree(data, b"GET")
    closing = data.replace(b"host: a\r\n", b"host: a\r\nconnection: close\r\n", 1)
    assert ignores_bodies_view(closing) == ([Seen(b"GET", b"/", [(b"host", b"a"),
                                                               (b"connection", b"close"),
                                                               (b"content-length", b"%d" % len(hidden))],
                                                  b"")], b"", None)
    assert_backends_agree(closing, b"GET")
    post = data.replace(b"GET / ", b"POST / ", 1)
    assert [r.body for r in ignores_bodies_view(post).requests] == [hidden]


def test_email_parser_reads_the_fields_of_a_head():
    """:func:`tests.oracles.stdlib_fields` reads a head's fields in order, as written."""
    assert stdlib_fields(b"host: a\r\nx_a: 1\r\nx-a: \xff\r\n\r\n") == \
        [(b"host", b"a"), (b"x_a", b"1"), (b"x-a", b"\xff")]


# -- the property ------------------------------------------------------------------------------

def unit_event(req):
    """The raw :class:`proxyd.events.RequestReceived` a codec of ``req.family`` hands over, and
    the body it delivers (HTTP/1.1: the decoded body of its framing)."""
    if req.family == "h1":
        headers = [(b":method", req.method), (b":path", req.target), (b"Host", req.authority),
                   *req.fields]
        if req.framing == "length":
            headers.append((b"Content-Length", b"%d" % len(req.body)))
        elif req.framing == "chunked":
            headers.append((b"Transfer-Encoding", b"chunked"))
        body = b"" if req.framing == "none" else req.body
        open_ = bool(body) or req.framing == "chunked"
    else:
        headers = h2_request_head(req)
        body = req.body
        open_ = bool(body or req.trailers)
    event = ev.RequestReceived(stream_id=1, headers=headers, end_stream=not open_,
                               http_version=VERSIONS[req.family])
    return event, body


def write_to_backend(req):
    """``(gated request, body, wire)``: ``req`` through the gate, the header translation and
    the HTTP/1.1 writer as the relay drives them; ``wire`` None when refused before any byte
    (then nothing was queued), ``body`` None when refused after the head went."""
    event, body = unit_event(req)
    family = FAMILIES[req.family]
    try:
        request = gate.check_request(event, family)
    except Refused:
        return None, None, None
    codec = H1FastClientCodec()
    try:
        codec.send_request(1, backend_request(request, client_ip=b"192.0.2.1", policy=POLICY),
                           b"backend.internal:8080")
    except Refused:
        assert codec.data_to_send() == b""
        return request, None, None
    if request.end_stream:
        return request, b"", codec.data_to_send()
    if request.content_length is not None and request.content_length != len(body):
        return request, None, codec.data_to_send()  # the stream machine's length_mismatch
    codec.send_data(body[:5])
    codec.send_data(body[5:])
    trailers = ()
    if req.trailers and (req.family != "h1" or req.framing == "chunked"):
        try:
            trailers = request_trailers(gate.check_trailers(req.trailers, family), None)
        except Refused:
            return request, None, codec.data_to_send()  # the stream is reset
    codec.end_request(trailers)
    return request, body, codec.data_to_send()


@LONG
@UNIT
@given(client_requests())
@example(ClientRequest("h2", b"POST", b"/up", b"a", [(b"transfer_encoding", b"chunked")],
                       b"0\r\n\r\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n", "length", [b""], []))
@example(ClientRequest("h1", b"POST", b"/up", b"a", [(b"Content_Length", b"0")], b"abc",
                       "chunked", [b";x"], [(b"transfer_encoding", b"chunked")]))
def test_every_backend_reads_one_identical_request(req):
    """For any hostile request of any frontend family: refused with nothing written, or the
    bytes written are exactly one request to h11, llhttp, the lenient model (first and last
    Content-Length) and the email parser alike: the gate's method, the normalised target, the
    body proxyd sent, the same fields, no byte after it. When the request is refused after its
    head went (a length mismatch, bad trailers: the stream machine then aborts the backend
    connection), the parsers agree on what they saw: nothing complete, or the same one
    request (a head with ``content-length: 0``) and nothing after it."""
    request, body, wire = write_to_backend(req)
    if wire is None:
        return
    if body is None:
        assert_backends_agree(wire, request.method)
        return
    assert_one_backend_request(wire, request.method, normalize_target(request.path), body)


_WRITER_NAMES = st.sampled_from([n.lower() for n in FRAMING_SPELLINGS] + [b"x-a", b"x_a"])
_WRITER_VALUES = st.sampled_from(HOSTILE_VALUES + [b" v", b"v\t", b"\tv ", b"a\x0bb"])


@LONG
@UNIT
@given(st.sampled_from([b"GET", b"POST", b"HEAD", b"X-CUSTOM", b"get", b"GET /"]),
       st.sampled_from([b"/", b"/a?b", b"*", b"/a b", b"/a\r\n", b"/a\"<>\\{}|^`"]),
       st.sampled_from([b"a", b"", b"a_b:1", b"a\r\nb"]),
       st.lists(st.tuples(_WRITER_NAMES, _WRITER_VALUES), max_size=4),
       st.booleans(), st.none() | st.integers(0, 9),
       st.lists(st.tuples(_WRITER_NAMES, _WRITER_VALUES), max_size=2))
def test_the_writer_alone_writes_one_request_every_backend_reads(method, target, authority,
                                                                 fields, body, length,
                                                                 trailers):
    """Defence in depth, without the gate: for any neutral request (hostile names in every
    spelling, values with whitespace around them or controls, trailers), the HTTP/1.1 writer
    refuses it with nothing queued, or writes exactly one request that every parser reads with
    the same method, target, body and fields (values compared without surrounding whitespace,
    which the writer need not refuse)."""
    from proxyd.bridge import BackendRequest

    codec = H1FastClientCodec()
    try:
        codec.send_request(1, BackendRequest(method, target, authority, fields, length, body),
                           b"backend.internal")
    except Refused as refused:
        assert refused.reason == "unsafe_request" and codec.data_to_send() == b""
        return
    sent = b""
    if body:
        sent = b"y" * length if length is not None else b"abc"
        codec.send_data(sent)
        try:
            codec.end_request(trailers)
        except Refused:
            assert_backends_agree(codec.data_to_send(), method)  # the connection is aborted
            return
    assert_one_backend_request(codec.data_to_send(), method, target, sent)
