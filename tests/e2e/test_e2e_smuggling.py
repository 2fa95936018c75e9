"""Request smuggling and desync attempts through every frontend, against the real daemon.

The backend is :class:`harness.CaptureBackend`: it records every byte proxyd writes to it, per
connection, and parses them with h11 (the independent oracle). For each malicious input, through
each frontend (HTTP/2 over TLS and cleartext, SPDY/3.1, 3 and 2 over TLS and cleartext, HTTP/1.1
over TLS and cleartext), the assertions are on those bytes: the backend saw nothing of the attack
(the marker the attack carries never appears, no request carries it, the oracle parsed no error),
and a good request sent right after on the same listener (on HTTP/2 and SPDY: on the same
connection) reached it exactly once. The client gets its protocol's refusal: RST_STREAM
PROTOCOL_ERROR (HTTP/2, SPDY), the table's 4xx and a closed connection (HTTP/1.1).

Crafted backend responses (the response side of the gate) come last: Content-Length with
Transfer-Encoding, differing lengths, bytes after a complete response (response queue poisoning),
bare-LF heads, Content-Length on bodiless statuses.
"""

import itertools
import re

import pytest

from proxyd.codec.spdy import frames as fr

from .harness import CaptureBackend, IgnoresBodyBackend, LateBodyBackend, base_config, curl, \
    raw_http1, running
from .rawh2 import NO_ERROR, PROTOCOL_ERROR, RawH2, data_frame, headers_frame
from .rawspdy import RawSpdy

PROTOCOLS = ["h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1"]
_counter = itertools.count()


@pytest.fixture(scope="module")
def capture():
    """One capture backend for the module."""
    backend = CaptureBackend()
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def proxy(capture, tls_cert, tmp_path_factory):
    """The daemon with every protocol on a TLS and a cleartext listener, before the capture."""
    cert, key = tls_cert
    config = base_config(capture, cert, key)
    for listen in config["listen"]:
        listen["protocols"] = PROTOCOLS
    with running(config, tmp_path_factory.mktemp("proxyd-smuggling")) as p:
        yield p


def mark():
    """A marker unique to one attack (it must never reach the backend)."""
    return f"SMUGGLED{next(_counter)}x"


def assert_clean(capture, marker, good_target):
    """The backend never saw ``marker`` and got ``good_target`` exactly once, well-formed."""
    raw = capture.raw()
    assert marker.encode() not in raw, raw[-2000:]
    assert not any(marker.encode() in r["target"] or any(marker.encode() in v for _, v in
                                                         r["headers"])
                   for r in capture.requests())
    assert [r["target"] for r in capture.requests()].count(good_target.encode()) == 1
    assert capture.errors() == []


def assert_no_tracebacks(proxy):
    """No stream ended in an unexpected exception; nothing unhandled."""
    text = proxy.log_text()
    assert "Traceback" not in text and "Unhandled" not in text and "internal error" not in text


# -- HTTP/2 -------------------------------------------------------------------------------------

def h2_head(authority, path="/", method="GET", extra=()):
    """A raw HTTP/2 request head (bytes, anything goes)."""
    head = [(b":method", method.encode() if isinstance(method, str) else method),
            (b":scheme", b"http"), (b":authority", authority.encode()),
            (b":path", path.encode() if isinstance(path, str) else path)]
    return head + [(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str)
                    else v) for n, v in extra]


H2_ATTACKS = {
    # name: (head(authority, marker) -> header list, body DATA payloads or None)
    "CR LF in :path": (lambda a, m: h2_head(a, f"/x HTTP/1.1\r\nHost: a\r\n\r\nGET /{m}"), None),
    "CR LF in :method": (lambda a, m: h2_head(a, "/", f"GET /{m} HTTP/1.1\r\nX:"), None),
    "CR LF in :authority": (lambda a, m: h2_head(f"a\r\nX-{m}: 1"), None),
    "CR LF in a value": (lambda a, m: h2_head(a, extra=[("x-a", f"1\r\nX-{m}: 1")]), None),
    "LF in a value": (lambda a, m: h2_head(a, extra=[("x-a", f"1\nX-{m}: 1")]), None),
    "NUL in a value": (lambda a, m: h2_head(a, extra=[("x-a", f"1\x00{m}")]), None),
    "CR LF in a name": (lambda a, m: h2_head(a, extra=[(f"x\r\n{m}", "1")]), None),
    "space in :path": (lambda a, m: h2_head(a, f"/{m} HTTP/1.1"), None),
    # a stray % would decode into a new escape: routed as /public, read by nginx as /admin
    "stray % in :path": (lambda a, m: h2_head(a, f"/public/%2%65%2%65/{m}"), None),
    ":path without /": (lambda a, m: h2_head(a, f"{m}"), None),
    ":path absolute": (lambda a, m: h2_head(a, f"http://evil/{m}"), None),
    "@ in :authority": (lambda a, m: h2_head(f"{m}@evil"), None),
    "leading space": (lambda a, m: h2_head(a, f"/{m}", extra=[("x-a", " 1")]), None),
    "transfer-encoding": (lambda a, m: h2_head(a, f"/{m}", "POST",
                                               [("transfer-encoding", "chunked")]),
                          [b"0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"]),
    "te gzip": (lambda a, m: h2_head(a, f"/{m}", extra=[("te", "gzip")]), None),
    "connection header": (lambda a, m: h2_head(a, f"/{m}", extra=[("connection", "close")]), None),
    "CONNECT": (lambda a, m: h2_head(a, f"/{m}", "CONNECT"), None),
    "two content-lengths": (lambda a, m: h2_head(a, f"/{m}", "POST", [("content-length", "3"),
                                                                      ("content-length", "30")]),
                            [b"abc"]),
    "content-length +5": (lambda a, m: h2_head(a, f"/{m}", "POST", [("content-length", "+5")]),
                          [b"abcde"]),
    # the body longer than declared: the extra bytes (a second request) never reach the backend
    "body over content-length": (lambda a, m: h2_head(a, "/post-over", "POST",
                                                      [("content-length", "5")]),
                                 [lambda m: f"aaaaaGET /{m} HTTP/1.1\r\nHost: a\r\n\r\n".encode()]),
}


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "cleartext"])
@pytest.mark.parametrize("attack", list(H2_ATTACKS))
def test_h2(proxy, capture, attack, tls):
    """HTTP/2: the attack's stream is reset PROTOCOL_ERROR, the next stream on the same
    connection is served, and the backend saw nothing of the attack."""
    marker = mark()
    build, body = H2_ATTACKS[attack]
    c = RawH2(proxy.port(tls), tls=tls)
    try:
        block = c.encode(build(c.authority, marker))
        c.send(headers_frame(1, block, end_stream=body is None))
        for i, payload in enumerate(body or ()):
            payload = payload(marker) if callable(payload) else payload
            c.send(data_frame(1, payload, end_stream=i == len(body) - 1))
        good = f"/good-{marker.lower()}"
        c.request(3, good)
        c.pump(lambda: 1 in c.rsts and c.done(3), what="the reset and the good response")
        assert c.rsts[1] == PROTOCOL_ERROR
        assert c.status(3) == 200 and c.goaway is None
    finally:
        c.close()
    assert_clean(capture, marker, good)
    assert_no_tracebacks(proxy)


# -- SPDY ---------------------------------------------------------------------------------------

SPDY_ATTACKS = {
    "CR LF in :path": lambda m: {"path": f"/x HTTP/1.1\r\nHost: a\r\n\r\nGET /{m}"},
    "CR LF in a name": lambda m: {"extra": [(f"x\r\n{m}", "1")]},
    "CR LF in a value": lambda m: {"extra": [("x-a", f"1\r\nX-{m}: 1")]},
    "NUL in :path": lambda m: {"path": f"/{m}\x00/admin"},
    "upper-case name": lambda m: {"path": f"/{m}", "extra": [("X-Upper", "1")]},
    "content-length +5": lambda m: {"path": f"/{m}", "method": "POST",
                                    "extra": [("content-length", "+5")]},
    "NUL-joined content-length": lambda m: {"path": f"/{m}", "method": "POST",
                                            "extra": [("content-length", "5\x00 50")]},
    "content-length x": lambda m: {"path": f"/{m}", "method": "POST",
                                   "extra": [("content-length", "x")]},
    "transfer-encoding": lambda m: {"path": f"/{m}", "method": "POST",
                                    "extra": [("transfer-encoding", "chunked")]},
    "space in :path": lambda m: {"path": f"/{m} HTTP/1.1"},
    "stray % in :path": lambda m: {"path": f"/public/%2%65%2%65/{m}"},
}


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "cleartext"])
@pytest.mark.parametrize("version", ["spdy/3.1", "spdy/3", "spdy/2"])
@pytest.mark.parametrize("attack", list(SPDY_ATTACKS))
def test_spdy(proxy, capture, attack, version, tls):
    """SPDY (issue item 3): the attack's stream is reset PROTOCOL_ERROR, the next stream on the
    same session is served, and the backend saw nothing of the attack."""
    marker = mark()
    spec = SPDY_ATTACKS[attack](marker)
    c = RawSpdy(proxy.port(tls), version, tls)
    try:
        pairs = c.request_pairs(spec.get("path", f"/{marker}"), method=spec.get("method", "GET"),
                                extra=spec.get("extra", ()))
        c.syn_stream(1, pairs, fin=spec.get("method") != "POST")
        if spec.get("method") == "POST":
            c.send(fr.data_frame_header(1, 5, True) + b"abcde")
        good = f"/good-{marker.lower()}"
        c.get(3, good)
        c.pump(lambda: 1 in c.rsts and c.done(3), what="the reset and the good response")
        assert c.rsts[1] == fr.PROTOCOL_ERROR
        assert c.streams[3]["status"] == 200 and not c.goaways
    finally:
        c.close()
    assert_clean(capture, marker, good)
    assert_no_tracebacks(proxy)


# -- HTTP/1.1 -----------------------------------------------------------------------------------

H1_ATTACKS = {
    "CL.TE": ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\nTransfer-Encoding: chunked"
              "\r\n\r\n0\r\n\r\nGET /{m} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "TE.CL": ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4"
              "\r\n\r\n5c\r\nGET /{m} HTTP/1.1\r\n\r\n0\r\n\r\n", 400),
    "TE obs-fold": ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding:\r\n"
                    " chunked\r\n\r\n0\r\n\r\nGET /{m} HTTP/1.1\r\n\r\n", 400),
    "TE with a space before the colon": ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : "
                                         "chunked\r\nContent-Length: 4\r\n\r\nGET /{m}", 400),
    "TE chunked, identity": ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, "
                             "identity\r\n\r\n0\r\n\r\nGET /{m} HTTP/1.1\r\n\r\n", 400),
    "TE xchunked": ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"
                    "GET /{m} HTTP/1.1\r\n\r\n", 400),
    "two content-lengths": ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: "
                            "30\r\n\r\nGET /{m} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "content-length +0": ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +30\r\n\r\nGET /{m} "
                          "HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "chunk size over 2^64": ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "10000000000000005\r\nGET /{m}\r\n0\r\n\r\n", 400),
    "bare LF line ends": ("GET /{m} HTTP/1.1\nHost: a\n\n", 400),
    "bare CR": ("GET /{m} HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", 400),
    "NUL in a value": ("GET /{m} HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    "two Hosts": ("GET /{m} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "CONNECT (item 6)": ("CONNECT {m}:443 HTTP/1.1\r\nHost: {m}:443\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                         405),
    "space in the target": ("GET /{m} x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "stray % in the target": ("GET /public/%2%65%2%65/{m} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
}


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "cleartext"])
@pytest.mark.parametrize("attack", list(H1_ATTACKS))
def test_http1(proxy, capture, attack, tls):
    """HTTP/1.1: the table's status with ``connection: close``, the connection closes, the
    backend saw nothing of the attack, and a new connection is served."""
    marker = mark()
    template, status = H1_ATTACKS[attack]
    out = raw_http1(proxy.port(tls), template.replace("{m}", marker).encode(), tls=tls,
                    until_close=True)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    assert len(re.findall(rb"(?:^|\r\n)HTTP/1\.1 \d{3} ", out)) == 1  # one answer, then closed
    assert b"connection: close" in out
    good = f"/good-{marker.lower()}"
    out = raw_http1(proxy.port(tls), f"GET {good} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), tls=tls)
    assert out.startswith(b"HTTP/1.1 200 ")
    assert_clean(capture, marker, good)
    assert_no_tracebacks(proxy)


def test_http1_absolute_form_takes_its_host(proxy, capture):
    """Item 7: an absolute-form target reaches the backend in origin-form with the target's host
    as Host (the client's Host is ignored, RFC 9112 §3.2.2), never beside it."""
    marker = mark().lower()
    out = raw_http1(proxy.port(False), f"GET http://other.example/{marker}?q HTTP/1.1\r\n"
                                       f"Host: a.example\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200 ")
    [request] = [r for r in capture.requests() if marker.encode() in r["target"]]
    assert request["target"] == f"/{marker}?q".encode()
    assert [v for n, v in request["headers"] if n == b"host"] == [b"other.example"]


UPGRADE_OFFERS = {
    "any token": b"Upgrade: x\r\nConnection: upgrade\r\n",
    "websocket": (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
    "h2c": (b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
}


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "cleartext"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("offer", list(UPGRADE_OFFERS))
def test_http1_upgrade_offer_with_a_body_is_one_request(proxy, capture, offer, chunked, tls):
    """A POST that offers an upgrade and has a body that looks like a request: the backend gets
    the POST with that body intact (the offer ignored, no 101) and then the request pipelined
    after it; nothing of the body is ever parsed as a request (llhttp skips the bodies of
    upgrade requests: the HTTP/1.1 codec reads them anyway)."""
    marker = mark()
    post, good = f"/offer-{marker.lower()}", f"/good-{marker.lower()}"
    body = f"GET /{marker} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    if chunked:
        framing, wire = b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(body), body)
    else:
        framing, wire = b"Content-Length: %d\r\n" % len(body), body
    request = (b"POST %s HTTP/1.1\r\nHost: a\r\n%s%s\r\n%s" % (
        post.encode(), UPGRADE_OFFERS[offer], framing, wire)
        + f"GET {good} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    out = raw_http1(proxy.port(tls), request, tls=tls, until_close=True)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"200", b"200"], out  # bodies: "ok"
    [seen] = [r for r in capture.requests() if r["target"] == post.encode()]
    assert seen["method"] == b"POST" and seen["body"] == body
    assert not any(n in (b"upgrade", b"connection") for n, _ in seen["headers"])
    assert not any(marker.encode() in r["target"] for r in capture.requests())
    assert [r["target"] for r in capture.requests()].count(good.encode()) == 1
    assert capture.errors() == []
    assert_no_tracebacks(proxy)


# -- content a legacy backend does not read (CL.0) ----------------------------------------------

@pytest.fixture(scope="module")
def ignores_body(tls_cert, tmp_path_factory):
    """(daemon, backend): every protocol on cleartext, before an app that reads no content on
    GET, HEAD, DELETE or TRACE (:class:`harness.IgnoresBodyBackend`)."""
    backend = IgnoresBodyBackend()
    cert, key = tls_cert
    config = base_config(backend, cert, key, tls=False)
    config["listen"][0]["protocols"] = PROTOCOLS
    try:
        with running(config, tmp_path_factory.mktemp("proxyd-cl0")) as p:
            yield p, backend
    finally:
        backend.stop()


def _hidden(marker):
    return f"GET /{marker} HTTP/1.1\r\nhost: a\r\n\r\n".encode()


@pytest.mark.parametrize("protocol,method", [
    ("h2", "GET"), ("h2", "DELETE"), ("h2", "HEAD"), ("h2", "OPTIONS"), ("spdy/3.1", "GET"),
    ("spdy/2", "GET"), ("http/1.1", "GET"), ("http/1.1", "DELETE"), ("http/1.1", "OPTIONS")])
def test_content_a_backend_ignores_never_runs_as_a_request(ignores_body, protocol, method):
    """RFC 9110 §9.3.1/2/5: content on GET, HEAD or DELETE has no semantics, and an app that
    does not read it would run a request hidden in it, one proxyd's gate never saw (the CL.0
    desync). proxyd forwards the content but tells the backend ``connection: close``: the app
    answers the request and never runs the hidden one; the client gets its answer and the next
    request is served on another backend connection."""
    proxy, backend = ignores_body
    marker = mark()
    hidden = _hidden(marker)
    good = f"/good-{marker.lower()}"
    extra = [("content-length", str(len(hidden)))]
    if protocol == "h2":
        c = RawH2(proxy.port(False))
        try:
            c.send(headers_frame(1, c.encode(h2_head(c.authority, "/first", method, extra)),
                                 end_stream=False))
            c.send(data_frame(1, hidden, end_stream=True))
            c.pump(lambda: c.done(1), what="the first response")
            # The app may answer before the content reached it: then the stream is reset with
            # NO_ERROR after the whole response (RFC 9113 §8.1), a race this test allows.
            assert c.status(1) == 200 and 1 in c.ended and c.rsts.get(1, NO_ERROR) == NO_ERROR
            c.request(3, good)
            c.pump(lambda: c.done(3), what="the good response")
            assert c.status(3) == 200
        finally:
            c.close()
    elif protocol.startswith("spdy"):
        c = RawSpdy(proxy.port(False), protocol, False)
        try:
            c.syn_stream(1, c.request_pairs("/first", method=method, extra=extra), fin=False)
            c.send(fr.data_frame_header(1, len(hidden), True) + hidden)
            c.pump(lambda: c.done(1), what="the first response")
            # As above: SPDY's reset after a whole response is CANCEL (it has no NO_ERROR).
            assert c.streams[1]["status"] == 200 and c.streams[1]["fin"]
            assert c.rsts.get(1, fr.CANCEL) == fr.CANCEL
            c.get(3, good)
            c.pump(lambda: c.done(3), what="the good response")
            assert c.streams[3]["status"] == 200
        finally:
            c.close()
    else:
        out = raw_http1(proxy.port(False), f"{method} /first HTTP/1.1\r\nHost: a\r\n"
                        f"Content-Length: {len(hidden)}\r\n\r\n".encode() + hidden)
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"/first")
        out = raw_http1(proxy.port(False), f"GET {good} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert out.endswith(good.encode())
    targets = backend.targets()
    assert not any(marker.encode() in target for target in targets), targets
    assert targets.count(good.encode()) == 1
    assert_no_tracebacks(proxy)


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
def test_a_body_that_ends_empty_keeps_the_backend_connection(ignores_body, protocol):
    """A GET whose body of unknown length ends without a byte (HTTP/2: HEADERS without
    END_STREAM, then an empty DATA frame with END_STREAM, as reactor-netty sends GET; HTTP/1.1:
    ``Transfer-Encoding: chunked`` and the last chunk alone) carries no content. It reaches the
    app as a bodiless GET: the app runs no request ``0`` from a chunked framing it does not
    read, and two such requests in a row share one backend connection instead of costing a new
    one each (``connection: close``)."""
    proxy, backend = ignores_body
    marker = mark().lower()
    paths = [f"/empty-{marker}-{n}" for n in range(2)]
    if protocol == "h2":
        c = RawH2(proxy.port(False))
        try:
            for sid, path in zip((1, 3), paths):
                c.send(headers_frame(sid, c.encode(h2_head(c.authority, path)), end_stream=False)
                       + data_frame(sid, b"", end_stream=True))
                c.pump(lambda sid=sid: c.done(sid), what="the response")
                assert c.status(sid) == 200 and sid not in c.rsts
        finally:
            c.close()
    else:
        for path in paths:
            out = raw_http1(proxy.port(False), f"GET {path} HTTP/1.1\r\nHost: a\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode())
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(path.encode())
    executed = list(backend.executed)
    ran = [(n, target) for n, _method, target in executed if marker.encode() in target]
    assert [target for _n, target in ran] == [path.encode() for path in paths]
    assert ran[0][0] == ran[1][0], "each request cost a new backend connection"
    assert not [record for record in executed if record[1] == b"0"], executed
    assert_no_tracebacks(proxy)


# -- content written where none may follow (response queue poisoning) --------------------------

@pytest.fixture(scope="module")
def late_body(tls_cert, tmp_path_factory):
    """(daemon, backend): h2 and HTTP/1.1 on cleartext, one backend connection at most (every
    request reuses it when it may), before an app that writes content after HEAD, 204 and 304
    responses in a later segment (:class:`harness.LateBodyBackend`)."""
    backend = LateBodyBackend()
    cert, key = tls_cert
    config = base_config(backend, cert, key, tls=False, workers=1)
    config["backends"][0]["max_connections"] = 1
    try:
        with running(config, tmp_path_factory.mktemp("proxyd-late-body")) as p:
            yield p, backend
    finally:
        backend.stop()


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
@pytest.mark.parametrize("method,first", [("HEAD", "/first"), ("GET", "/status/304/first"),
                                          ("GET", "/status/204/first")])
def test_content_after_a_bodiless_response_never_answers_the_next_request(
        late_body, protocol, method, first):
    """RFC 9110 §6.4.1: no content follows a response to HEAD, a 204 or a 304, whatever its
    Content-Length says. An app that writes it anyway, in a later segment, would have it read as
    the answer to the next request on that connection, another client's (response queue
    poisoning; the content here is a whole response). A head that announces such content
    (Content-Length above 0, or chunked) ends its connection's use: the next request goes to
    another connection and gets its own answer."""
    proxy, backend = late_body
    tag = mark().lower()
    first, second = f"{first}-{tag}", f"/second-{tag}"
    if protocol == "h2":
        c = RawH2(proxy.port(False))
        try:
            c.send(headers_frame(1, c.encode(h2_head(c.authority, first, method))))
            c.pump(lambda: c.done(1), what="the first response")
            assert 1 not in c.rsts and not c.data.get(1)
            c.request(3, second)
            c.pump(lambda: c.done(3), what="the second response")
            assert c.status(3) == 200 and c.bodies.get(3) == second.encode(), c.bodies.get(3)
        finally:
            c.close()
    else:
        # Pipelined on one connection; the second asks proxyd to close after it.
        out = raw_http1(proxy.port(False), f"{method} {first} HTTP/1.1\r\nHost: a\r\n\r\n"
                        f"GET {second} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                        .encode(), until_close=True)
        assert b"POISON" not in out and out.endswith(b"\r\n\r\n" + second.encode()), out
        assert out.count(b"HTTP/1.1 ") == 2, out
    ran = {target: n for n, _method, target in backend.executed}
    assert ran[second.encode()] != ran[first.encode()]
    assert_no_tracebacks(proxy)


# -- crafted responses --------------------------------------------------------------------------

@pytest.fixture
def crafted(tls_cert, start_proxyd):
    """start(response bytes) -> (proxy, capture): a daemon before a backend answering them."""
    backends = []

    def start(response):
        backend = CaptureBackend(respond=lambda request: response)
        backends.append(backend)
        cert, key = tls_cert
        return start_proxyd(base_config(backend, cert, key)), backend

    yield start
    for backend in backends:
        backend.stop()


def test_response_with_length_and_chunked(crafted):
    """Item 5: Content-Length with chunked: the client gets the chunked body without the length,
    and the backend connection is not reused (the next request opens a new one)."""
    proxy, backend = crafted(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
                             b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    for _ in range(2):
        out = raw_http1(proxy.port(False), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _, rest = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length" not in head.lower()
        assert b"hello" in rest
    assert len(backend.connections) == 2


def test_response_with_differing_lengths_is_502(crafted):
    """Two different Content-Lengths from the backend: 502, never a guess."""
    proxy, _ = crafted(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc")
    out = raw_http1(proxy.port(False), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 ")


def test_bytes_after_a_complete_response_never_reach_the_next_client(crafted):
    """Response queue poisoning: a backend that sends a second response after the first one is
    not reused; the next client gets its own answer (the backend's first response), never the
    smuggled one."""
    proxy, backend = crafted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED")
    for _ in range(3):
        out = raw_http1(proxy.port(False), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out.endswith(b"\r\n\r\nok") and b"SMUGGLED" not in out
    assert len(backend.connections) == 3


def test_bare_lf_response_is_answered(crafted):
    """Item 14: a backend answering with bare-LF line ends is understood (RFC 9112 §2.2), so the
    client gets an answer instead of silence."""
    proxy, _ = crafted(b"HTTP/1.1 200 OK\nContent-Length: 5\nX-Legacy: yes\n\nhello")
    out = raw_http1(proxy.port(False), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"hello")
    assert b"x-legacy: yes" in out.lower()


def test_response_with_nul_in_a_value_is_502(crafted):
    """A NUL in a response field: 502 (and the connection to that backend is dropped)."""
    proxy, _ = crafted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok")
    out = raw_http1(proxy.port(False), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 ")


def test_redirect_to_the_backend_address_is_rewritten(crafted):
    """Item 13: a legacy app that redirects to its own address (host and port of the backend)
    gets that Location rewritten to the client's scheme and authority."""
    holder = {}
    proxy, backend = crafted(b"")
    backend.respond = lambda request: (
        b"HTTP/1.1 302 Found\r\nLocation: http://%s/new/page.html\r\nContent-Length: 0\r\n\r\n"
        % holder["address"])
    holder["address"] = backend.address.encode()
    out = raw_http1(proxy.port(True), b"GET /old HTTP/1.1\r\nHost: proxy.test:9443\r\n\r\n",
                    tls=True)
    assert b"location: https://proxy.test:9443/new/page.html" in out.lower()


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_bodiless_status_with_content_length_reaches_curl_over_h2(crafted, tmp_path, status):
    """A backend's 204 or 304 with ``Content-Length: 5`` (RFC 9110 §8.6: none in a 204) reaches
    curl over HTTP/2 without the length, as a clean stream: forwarded as it was, nghttp2 fails
    the 204's stream (``PROTOCOL_ERROR``, curl exit 92)."""
    proxy, _backend = crafted(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n")
    result = curl(proxy.url("/", tls=True), mode="h2", tmpdir=tmp_path, timeout=10)
    assert result.rc == 0, (result.rc, result.stderr[-300:])
    assert result.status == int(status[:3]) and result.version == "2"
    assert "content-length" not in dict(result.headers)


def test_repeated_informational_responses_reach_the_client_bounded(crafted):
    """A backend that sends 200 ``103 Early Hints`` heads before its answer: the h2 client gets
    the first 8 of them (they take no flow-control window, so nothing else would bound what a
    client that reads nothing queues) and then the final response."""
    proxy, _backend = crafted(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" * 200
                              + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c = RawH2(proxy.port(False))
    try:
        c.request(1, "/")
        c.pump(lambda: c.done(1), what="the response")
        statuses = [dict(block).get(":status") for block in c.headers.get(1, [])]
        assert statuses.count("103") == 8 and statuses[-1] == "200", statuses
        assert c.bodies.get(1) == b"ok"
    finally:
        c.close()
    assert_no_tracebacks(proxy)
