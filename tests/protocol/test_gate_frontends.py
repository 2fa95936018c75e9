"""The gate at every frontend, in memory: what a hostile request gets, and what the backend sees.

Each case sends a malicious head between two good requests on one connection (HTTP/2, SPDY/3.1,
3 and 2 by hand-built frames) or on its own connection (HTTP/1.1), and asserts on the bytes the
backend connection received (parsed with h11): only the good requests, each exactly once, never
a byte of the bad one. The bad stream gets its protocol's refusal (RST_STREAM PROTOCOL_ERROR; 4xx
and close on HTTP/1.1), the good ones their responses, and no stream ends in an internal error.
The issue's items 1, 3, 4, 6 and 7 are cases here.
"""

import h11
import h2.events
import pytest

from proxyd.codec.spdy import frames as fr

from memproxy import base_config, Proxy
from tests.support import parse_h11_requests

PROTOCOL_ERROR = 1
SPDY_PROTOCOL_ERROR = 1

H2_BAD = {
    "item 1: CR LF in :path": [(b":method", b"GET"), (b":scheme", b"http"),
                               (b":authority", b"example.com"),
                               (b":path", b"/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin")],
    "item 1: :method with a space": [(b":method", b"GET /admin"), (b":scheme", b"http"),
                                     (b":authority", b"a"), (b":path", b"/")],
    "item 4: CR LF in :authority": [(b":method", b"GET"), (b":scheme", b"http"),
                                    (b":authority", b"a\r\nx"), (b":path", b"/")],
    "item 2-like: CR LF in a value": [(b":method", b"GET"), (b":scheme", b"http"),
                                      (b":authority", b"a"), (b":path", b"/"),
                                      (b"x-a", b"1\r\nTransfer-Encoding: chunked")],
    "item 14: :authority with @": [(b":method", b"GET"), (b":scheme", b"http"),
                                   (b":authority", b"user@evil"), (b":path", b"/")],
    "item 14: leading space": [(b":method", b"GET"), (b":scheme", b"http"),
                               (b":authority", b"a"), (b":path", b"/"), (b"x-a", b" 1")],
    "transfer-encoding": [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"),
                          (b":path", b"/"), (b"transfer-encoding", b"chunked")],
    "CONNECT": [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":authority", b"a:443"),
                (b":path", b"/")],
}


def good_h2(path):
    """A valid h2 GET head."""
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"example.com"),
            (b":path", path)]


def backend_requests(proxy):
    """Every request the backend connections received so far, as (method, target, headers)."""
    answer_all(proxy, respond=False)
    return list(getattr(proxy, "seen", []))


def answer_all(proxy, respond=True):
    """Record the complete requests each backend connection received since the last call (the
    exact bytes, parsed by h11) and answer each with a small 200."""
    seen = proxy.__dict__.setdefault("seen", [])
    offsets = proxy.__dict__.setdefault("offsets", {})
    for index in range(proxy.connects):
        conn = proxy.backend(index)
        data = conn.transport.value()
        new = data[offsets.get(index, 0):]
        offsets[index] = len(data)
        for event in parse_h11_requests(new):
            if type(event) is h11.Request:
                seen.append((event.method, event.target, list(event.headers)))
            elif type(event) is h11.EndOfMessage and respond:
                conn.respond(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.mark.parametrize("bad", H2_BAD.values(), ids=list(H2_BAD))
def test_h2_bad_stream_is_reset_and_never_forwarded(proxy, bad):
    """HTTP/2: the bad stream gets RST_STREAM PROTOCOL_ERROR; the streams before and after it are
    served; the backend receives exactly the two good requests."""
    client = proxy.h2_client(raw=True)
    first = client.request(path=b"/before")
    answer_all(proxy)
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, bad, end_stream=True)
    client.flush()
    after = client.request(path=b"/after")
    answer_all(proxy)
    events = client.pump()
    resets = {e.stream_id: e.error_code for e in events if isinstance(e, h2.events.StreamReset)}
    assert resets == {sid: PROTOCOL_ERROR}
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert after in ended
    assert [target for _, target, _ in backend_requests(proxy)] == [b"/before", b"/after"]
    assert first not in resets and not client.closing
    assert proxy.listener.internal_errors == 0


SPDY_BAD = {
    "CR LF in a name": [(b"x\r\ninjected", b"1")],
    "upper-case name": [(b"X-Upper", b"1")],
    "length +5": [(b"content-length", b"+5")],
    "NUL-joined lengths": [(b"content-length", b"5\x0050")],
    "length x": [(b"content-length", b"x")],
    "CR LF in a value": [(b"x-a", b"1\r\nHost: evil")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
}


def spdy_head(version, path, extra=()):
    """A SPDY head for ``version`` (2 or 3) with ``path`` and extra pairs."""
    if version == 2:
        base = [(b"method", b"POST"), (b"url", path), (b"version", b"HTTP/1.1"),
                (b"host", b"example.com"), (b"scheme", b"http")]
    else:
        base = [(b":method", b"POST"), (b":path", path), (b":version", b"HTTP/1.1"),
                (b":host", b"example.com"), (b":scheme", b"http")]
    return base + list(extra)


@pytest.fixture
def spdy_proxy(tmp_path):
    """An in-memory proxy whose cleartext listener offers every SPDY version."""
    return Proxy(tmp_path, base_config(listen=[{"endpoint": "tcp:8080:interface=127.0.0.1",
                                                "protocols": ["spdy/3.1", "spdy/3", "spdy/2"]}]))


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("extra", SPDY_BAD.values(), ids=list(SPDY_BAD))
def test_spdy_bad_stream_is_reset_and_never_forwarded(spdy_proxy, version, extra):
    """SPDY (item 3): names with CR LF, upper case, ``+5``, NUL-joined or non-digit lengths and
    Transfer-Encoding reset that stream with PROTOCOL_ERROR; the next stream on the same session
    is served, and the backend sees only it."""
    client = spdy_proxy.spdy_client(version)
    client.send_syn(1, spdy_head(version, b"/bad", extra), fin=False)
    client.send_syn(3, spdy_head(version, b"/good"), fin=True)
    answer_all(spdy_proxy)
    client.pump()
    assert client.resets() == {1: SPDY_PROTOCOL_ERROR}
    replies = [f for f in client.frames if f[0] == fr.SYN_REPLY]
    assert [f[1] for f in replies] == [3]
    assert [target for _, target, _ in backend_requests(spdy_proxy)] == [b"/good"]
    assert spdy_proxy.listener.internal_errors == 0


H1_BAD = {
    "item 6: CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    "CL with TE": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
                   400),
    "two Hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    "TE gzip": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    "TE gzip, chunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                         b"0\r\n\r\n", 501),
    "item 14: chunk size 2^64": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n10000000000000000\r\n", 400),
    "no Host": (b"GET / HTTP/1.1\r\n\r\n", 400),
}


@pytest.mark.parametrize("raw, status", H1_BAD.values(), ids=list(H1_BAD))
def test_h1_bad_request_is_answered_and_closed(proxy, raw, status):
    """HTTP/1.1: the table's status, ``connection: close``, the connection closes; the backend
    sees nothing; a new connection is served."""
    client = proxy.h1_client()
    client.write(raw)
    out = client.read()
    assert out.startswith(b"HTTP/1.1 %d " % status) and b"connection: close" in out
    assert client.closing
    assert proxy.connects == 0
    second = proxy.h1_client()
    second.write(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    answer_all(proxy)
    assert second.read().startswith(b"HTTP/1.1 200 ")
    assert [target for _, target, _ in backend_requests(proxy)] == [b"/ok"]
    assert proxy.listener.internal_errors == 0


def test_h1_chunk_overflow_after_the_head_is_answered(proxy):
    """Item 14: a chunk size beyond 2^64 arriving after the head was handed on still gets an
    answer (400) instead of silence, and the backend connection is dropped."""
    client = proxy.h1_client()
    client.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = proxy.backend()
    client.write(b"10000000000000000\r\n")
    assert client.read().startswith(b"HTTP/1.1 400 ")
    assert client.closing and backend.transport.disconnecting


def test_h1_absolute_form_target_becomes_origin_form(proxy):
    """Item 7: ``GET http://other/x`` goes to the backend as ``GET /x`` with ``Host: other``."""
    client = proxy.h1_client()
    client.write(b"GET http://other.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
    [(method, target, headers)] = backend_requests(proxy)
    assert (method, target) == (b"GET", b"/x?y=1")
    assert [v for n, v in headers if n == b"host"] == [b"other.example"]


def test_h2_authority_crlf_never_exhausts_the_pool(make_proxy):
    """Item 4: a hundred requests with CR LF in :authority, on a backend allowed one connection,
    are each refused; the pool is untouched and a good request afterwards is served."""
    proxy = make_proxy(backends=[{"address": "127.0.0.1:8081", "max_connections": 1}])
    client = proxy.h2_client(raw=True)
    for _ in range(100):
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", b"a\r\nx"), (b":path", b"/")],
                               end_stream=True)
        client.flush()
        client.pump()
    assert proxy.connects == 0
    good = client.request(path=b"/good")
    answer_all(proxy)
    events = client.pump()
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == good for e in events)
    assert proxy.listener.internal_errors == 0


def test_refusals_are_counted_by_reason(proxy):
    """Every refusal is counted under its table reason (for the metrics)."""
    client = proxy.h2_client(raw=True)
    for bad in (H2_BAD["item 1: CR LF in :path"], H2_BAD["CONNECT"]):
        client.h2.send_headers(client.h2.get_next_available_stream_id(), bad, end_stream=True)
        client.flush()
    assert proxy.listener.refusals == {"bad_target": 1, "connect": 1}


# Framing and hop-by-hop names spelled with "_" for "-". Parsers of the Mongrel family (Unicorn,
# Puma before 5.0.3) and HTTP::Parser::XS (Starman, Starlet) fold "-" and "_" into one CGI
# name, HTTP_TRANSFER_ENCODING, and frame the body by it: behind proxyd, which frames by its own
# content-length, the rest of the body is the backend's next request.
SMUGGLED = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n"
SPELLED_FRAMING = [(b"transfer_encoding", b"chunked"), (b"content_length", b"0"),
                   (b"keep_alive", b"timeout=5"), (b"proxy_connection", b"keep-alive"),
                   (b"http2_settings", b"AAMAAABkAAQAAP__")]
FRAMING_NAMES = {b"content-length", b"transfer-encoding", b"keep-alive", b"proxy-connection",
                 b"http2-settings"}


def _post_with_spelled_framing(proxy, frontend):
    """POST ``SMUGGLED`` as a body of its own Content-Length, with ``SPELLED_FRAMING``, from
    ``frontend`` (``http/1.1``, ``h2``, ``spdy/2`` or ``spdy/3``)."""
    length = b"%d" % len(SMUGGLED)
    if frontend == "http/1.1":
        client = proxy.h1_client()
        client.write(b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: " + length
                     + b"\r\n" + b"".join(n.title() + b": " + v + b"\r\n"
                                          for n, v in SPELLED_FRAMING) + b"\r\n" + SMUGGLED)
    elif frontend == "h2":
        client = proxy.h2_client(raw=True)
        client.request(b"POST", b"/up", headers=[(b"content-length", length), *SPELLED_FRAMING],
                       body=SMUGGLED)
    else:
        version = int(frontend[-1])
        client = proxy.spdy_client(version)
        client.send_syn(1, spdy_head(version, b"/up", [(b"content-length", length),
                                                       *SPELLED_FRAMING]), fin=False)
        client.write(fr.encode_data(1, SMUGGLED, fin=True))


@pytest.mark.parametrize("frontend", ["http/1.1", "h2", "spdy/2", "spdy/3"])
def test_framing_names_spelled_with_underscores_never_reach_the_backend(tmp_path, frontend):
    """A client's ``transfer_encoding: chunked`` (and ``content_length``, ``keep_alive``,
    ``proxy_connection``, ``http2_settings``) beside a Content-Length body holding a whole
    request: no field whose name, with ``_`` read as ``-``, is a framing or hop-by-hop name
    reaches the backend (a CGI-style backend would frame the body as chunked and run the
    request inside it), from any frontend."""
    protocols = (["spdy/3.1", "spdy/3", "spdy/2"] if frontend.startswith("spdy")
                 else ["h2", "http/1.1"])
    proxy = Proxy(tmp_path, base_config(listen=[{"endpoint": "tcp:8080:interface=127.0.0.1",
                                                 "protocols": protocols}]))
    _post_with_spelled_framing(proxy, frontend)
    requests = backend_requests(proxy)
    assert [target for _, target, _ in requests] == [b"/up"]  # served, one request
    for _method, _target, headers in requests:
        spelled = [name for name, _ in headers
                   if b"_" in name and name.replace(b"_", b"-") in FRAMING_NAMES]
        assert spelled == [], headers
    assert proxy.listener.internal_errors == 0
