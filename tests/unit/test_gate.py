"""The gate (proxyd.gate): table-driven cases per frontend family, and properties with h11 as the
independent oracle.

Tables: every refusal reason the gate can give, each reproduced through the rule set of the
frontend that can send it (HTTP/2, SPDY, HTTP/1.1), and the accepted forms (absolute-form targets,
Host fallbacks, OPTIONS *, IPv6 authorities). The vectors of the issue's items 1, 3, 4, 7 and 14
(CR LF in :path, :method, :authority and values, NUL-joined lengths, absolute-form targets, spaces,
``@``, leading whitespace) are rows here.

Properties (hypothesis): for any head made of hostile bytes, either the gate refuses it, or the
HTTP/1.1 writer's bytes parse back in h11 to exactly one request with the same method, target,
Host and fields, and nothing else.
"""

import dataclasses

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxyd import events as ev
from proxyd import gate
from proxyd.bridge import Policy, backend_request
from proxyd.codec.h1client import H1FastClientCodec
from proxyd.config import HeaderPolicy
from proxyd.errors import OUTCOMES, Refused
from proxyd.route import normalize_target
from tests.support import parse_h11_requests

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
       (b":path", b"/")]


def h2(headers, end_stream=True):
    """A raw HTTP/2 head."""
    return ev.RequestReceived(stream_id=1, headers=headers, end_stream=end_stream)


def spdy(headers, end_stream=True):
    """A raw SPDY/3.1 head (names already mapped by the codec)."""
    return ev.RequestReceived(stream_id=1, headers=headers, end_stream=end_stream,
                              http_version=b"SPDY/3.1")


def h1(target, fields, method=b"GET", end_stream=True, version=b"1.1"):
    """A raw HTTP/1.1 head: request line parts, then fields as received."""
    return ev.RequestReceived(stream_id=1, headers=[(b":method", method), (b":path", target),
                                                    *fields],
                              end_stream=end_stream, http_version=version)


def family(event):
    """The gate family of a raw event."""
    if event.http_version == b"2":
        return gate.H2
    return gate.SPDY if event.http_version.startswith(b"SPDY") else gate.HTTP1


def with_(pairs, **changes):
    """GET with pseudo-header values replaced (``path=b"/x"``) or extra fields appended."""
    out = []
    for name, value in pairs:
        key = name[1:].decode()
        out.append((name, changes.pop(key)) if key in changes else (name, value))
    return out


REFUSED = [
    # -- issue item 1: CR LF in :path; :method and :authority were not checked at all
    ("h2 :path with CR LF", h2(with_(GET, path=b"/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /admin")),
     "bad_target"),
    ("h2 :method with CR LF", h2(with_(GET, method=b"GET /x HTTP/1.1\r\n")), "bad_method"),
    ("h2 :authority with CR LF", h2(with_(GET, authority=b"a\r\nx")), "bad_authority"),
    # -- item 14
    ("h2 :path with a space", h2(with_(GET, path=b"/a b")), "bad_target"),
    ("h2 :path with NUL", h2(with_(GET, path=b"/a\x00b")), "bad_target"),
    ("h2 :path without /", h2(with_(GET, path=b"x")), "bad_target"),
    ("h2 :path absolute-form", h2(with_(GET, path=b"http://evil/x")), "bad_target"),
    ("h2 :path empty", h2(with_(GET, path=b"")), "bad_target"),
    ("h2 :path with #", h2(with_(GET, path=b"/a#frag")), "bad_target"),
    ("h2 * without OPTIONS", h2(with_(GET, path=b"*")), "bad_target"),
    ("h2 :method with a space", h2(with_(GET, method=b"GE T")), "bad_method"),
    ("h2 :method empty", h2(with_(GET, method=b"")), "bad_method"),
    ("h2 :authority with @", h2(with_(GET, authority=b"user@example.com")), "bad_authority"),
    ("h2 :authority with a space", h2(with_(GET, authority=b"exa mple.com")), "bad_authority"),
    ("h2 :authority empty host", h2(with_(GET, authority=b":443")), "bad_authority"),
    ("h2 :authority bad port", h2(with_(GET, authority=b"a:99999")), "bad_authority"),
    ("h2 :authority port letters", h2(with_(GET, authority=b"a:8o")), "bad_authority"),
    ("h2 :authority bracket junk", h2(with_(GET, authority=b"[::1]x")), "bad_authority"),
    ("h2 value with leading space", h2(GET + [(b"x-a", b" v")]), "bad_value"),
    ("h2 value with trailing tab", h2(GET + [(b"x-a", b"v\t")]), "bad_value"),
    ("h2 value with a control byte", h2(GET + [(b"x-a", b"a\x01b")]), "bad_value"),
    ("h2 value with DEL", h2(GET + [(b"x-a", b"a\x7fb")]), "bad_value"),
    # -- item 2 and 3 (values, names, SPDY)
    ("h2 value with CR LF", h2(GET + [(b"x-a", b"a\r\nb: c")]), "bad_value"),
    ("h2 upper-case name", h2(GET + [(b"X-A", b"1")]), "bad_name"),
    ("h2 name with a space", h2(GET + [(b"x a", b"1")]), "bad_name"),
    ("h2 name with CR LF", h2(GET + [(b"x\r\nevil", b"1")]), "bad_name"),
    ("h2 empty name", h2(GET + [(b"", b"1")]), "bad_name"),
    ("spdy name with CR LF", spdy(GET + [(b"x\r\ninjected", b"1")]), "bad_name"),
    ("spdy :path with CR LF", spdy(with_(GET, path=b"/x\r\nHost: evil")), "bad_target"),
    ("spdy length +5", spdy(GET + [(b"content-length", b"+5")], False), "bad_content_length"),
    ("spdy NUL-joined lengths", spdy(GET + [(b"content-length", b"5"), (b"content-length", b" 50")],
                                     False), "bad_value"),
    ("spdy differing lengths", spdy(GET + [(b"content-length", b"5"), (b"content-length", b"50")],
                                    False), "bad_content_length"),
    ("spdy length x", spdy(GET + [(b"content-length", b"x")], False), "bad_content_length"),
    ("spdy value with NUL", spdy(GET + [(b"x-a", b"a\x00b")]), "bad_value"),
    ("spdy transfer-encoding", spdy(GET + [(b"transfer-encoding", b"chunked")], False),
     "connection_specific"),
    # -- pseudo-header rules (RFC 9113 §8.3)
    ("h2 pseudo after a field", h2(GET[:2] + [(b"x-a", b"1")] + GET[2:]), "bad_pseudo"),
    ("h2 repeated :path", h2(GET + [(b":path", b"/b")]), "bad_pseudo"),
    ("h2 unknown pseudo", h2(GET + [(b":protocol", b"websocket")]), "bad_pseudo"),
    ("h2 :status in a request", h2(GET + [(b":status", b"200")]), "bad_pseudo"),
    ("h2 :version is SPDY's", h2(GET + [(b":version", b"HTTP/1.1")]), "bad_pseudo"),
    ("h2 missing :scheme", h2([p for p in GET if p[0] != b":scheme"]), "missing_pseudo"),
    ("h2 missing authority and Host", h2([p for p in GET if p[0] != b":authority"]),
     "missing_authority"),
    ("h2 bad :scheme", h2(with_(GET, scheme=b"ht tp")), "bad_scheme"),
    ("h2 CONNECT", h2(with_(GET, method=b"CONNECT")), "connect"),
    # -- connection-specific fields, TE, lengths, Host
    ("h2 connection", h2(GET + [(b"connection", b"close")]), "connection_specific"),
    ("h2 keep-alive", h2(GET + [(b"keep-alive", b"5")]), "connection_specific"),
    ("h2 proxy-connection", h2(GET + [(b"proxy-connection", b"x")]), "connection_specific"),
    ("h2 upgrade", h2(GET + [(b"upgrade", b"h2c")]), "connection_specific"),
    ("h2 transfer-encoding", h2(GET + [(b"transfer-encoding", b"chunked")], False),
     "connection_specific"),
    ("h2 te gzip", h2(GET + [(b"te", b"gzip")]), "bad_te"),
    ("h2 length on an ended head", h2(GET + [(b"content-length", b"3")]), "length_mismatch"),
    ("h2 length of 19 digits", h2(GET + [(b"content-length", b"1" * 19)], False),
     "bad_content_length"),
    ("h2 two Hosts", h2([p for p in GET if p[0] != b":authority"] + [(b"host", b"a"),
                                                                      (b"host", b"b")]),
     "two_hosts"),
    ("h2 Host differs from :authority", h2(GET + [(b"host", b"other.example")]),
     "authority_mismatch"),
    # -- HTTP/1.1 (RFC 9112): items 6 and 7 and the framing rules the gate re-checks
    ("h1 CONNECT", h1(b"example.com:443", [(b"Host", b"example.com:443")], b"CONNECT"), "connect"),
    ("h1 two Hosts", h1(b"/", [(b"Host", b"a"), (b"Host", b"b")]), "two_hosts"),
    ("h1 no Host", h1(b"/", []), "missing_authority"),
    ("h1 bad Host", h1(b"/", [(b"Host", b"a b")]), "bad_authority"),
    ("h1 Host with @", h1(b"/", [(b"Host", b"u@a")]), "bad_authority"),
    ("h1 absolute-form other scheme", h1(b"ftp://other/x", [(b"Host", b"a")]), "bad_target"),
    ("h1 absolute-form with @", h1(b"http://u@other/x", [(b"Host", b"a")]), "bad_authority"),
    ("h1 authority-form without CONNECT", h1(b"other:80", [(b"Host", b"a")]), "bad_target"),
    ("h1 CL with TE", h1(b"/", [(b"Host", b"a"), (b"Content-Length", b"3"),
                                (b"Transfer-Encoding", b"chunked")], b"POST", False),
     "bad_framing"),
    ("h1 TE not ending in chunked", h1(b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")],
                                       b"POST", False), "bad_transfer_encoding"),
    ("h1 TE gzip, chunked", h1(b"/", [(b"Host", b"a"),
                                      (b"Transfer-Encoding", b"gzip, chunked")], b"POST", False),
     "unsupported_coding"),
    ("h1 name with a space", h1(b"/", [(b"Host", b"a"), (b"X A", b"1")]), "bad_name"),
    ("h1 value with CR", h1(b"/", [(b"Host", b"a"), (b"X", b"a\rb")]), "bad_value"),
    ("h1 target with a space", h1(b"/a b", [(b"Host", b"a")]), "bad_target"),
    ("h1 target with 8-bit bytes", h1(b"/\xc3\xa9", [(b"Host", b"a")]), "bad_target"),
    ("h1 stray % before an escape", h1(b"/a/%2%65%2%65/b", [(b"Host", b"a")]), "bad_target"),
    ("h2 % at the end of the path", h2(with_(GET, path=b"/a%?q")), "bad_target"),
]


@pytest.mark.parametrize("event, reason", [(e, r) for _, e, r in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_refusals(event, reason):
    """Each hostile head is refused with its row of the errors table."""
    assert reason in OUTCOMES
    with pytest.raises(Refused) as refused:
        gate.check_request(event, family(event))
    assert refused.value.reason == reason


CONNECT_WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
              (b":authority", b"example.com"), (b":path", b"/chat"),
              (b"sec-websocket-version", b"13")]

# RFC 8441 on a connection that advertised SETTINGS_ENABLE_CONNECT_PROTOCOL: the one CONNECT the
# gate accepts is :protocol websocket with :scheme, :path and :authority, a stream left open.
REFUSED_EXTENDED = [
    ("other :protocol", with_(CONNECT_WS[:1]) + [(b":protocol", b"chat")] + CONNECT_WS[2:],
     True, "bad_protocol"),
    (":protocol on a GET", GET + [(b":protocol", b"websocket")], True, "bad_connect"),
    (":protocol after a field", CONNECT_WS[:1] + CONNECT_WS[2:] + [(b":protocol", b"websocket")],
     True, "bad_pseudo"),
    ("END_STREAM on the CONNECT", CONNECT_WS, False, "bad_connect"),
    ("Content-Length", CONNECT_WS + [(b"content-length", b"5")], True, "bad_connect"),
    ("Host beside :authority", CONNECT_WS + [(b"host", b"example.com")], True, "bad_connect"),
    ("no :authority", [h for h in CONNECT_WS if h[0] != b":authority"], True,
     "missing_authority"),
    ("ftp scheme", [(n, b"ftp" if n == b":scheme" else v) for n, v in CONNECT_WS], True,
     "bad_scheme"),
    ("no :path", [h for h in CONNECT_WS if h[0] != b":path"], True, "missing_pseudo"),
    ("classic CONNECT", [(b":method", b"CONNECT"), (b":authority", b"example.com:443")], True,
     "missing_pseudo"),
    ("classic CONNECT with :scheme and :path",
     [h for h in CONNECT_WS if h[0] != b":protocol"], True, "connect"),
]


@pytest.mark.parametrize("headers, open_stream, reason",
                         [(h, o, r) for _, h, o, r in REFUSED_EXTENDED],
                         ids=[name for name, _, _, _ in REFUSED_EXTENDED])
def test_extended_connect_refusals(headers, open_stream, reason):
    """Each malformed extended CONNECT, and every other CONNECT, is refused with its row."""
    with pytest.raises(Refused) as refused:
        gate.check_request(h2(headers, end_stream=not open_stream), gate.H2,
                           extended_connect=True)
    assert refused.value.reason == reason


def test_extended_connect_is_a_websocket_request():
    """RFC 8441 §4: the accepted CONNECT is a tunnel request (method kept, upgrade set)."""
    request = gate.check_request(h2(CONNECT_WS, end_stream=False), gate.H2,
                                 extended_connect=True)
    assert (request.method, request.upgrade, request.path) == (b"CONNECT", b"websocket", b"/chat")
    assert request.content_length is None and not request.end_stream
    assert request.headers == [(b"sec-websocket-version", b"13")]


@pytest.mark.parametrize("family_", [gate.H2, gate.SPDY])
def test_protocol_is_unknown_where_not_offered(family_):
    """Without SETTINGS_ENABLE_CONNECT_PROTOCOL (and on SPDY) :protocol is no pseudo-header."""
    with pytest.raises(Refused) as refused:
        gate.check_request(h2(CONNECT_WS, end_stream=False), family_,
                           extended_connect=family_ is gate.SPDY)
    assert refused.value.reason == "bad_pseudo"


WS_FIELDS = [(b"Host", b"a"), (b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
             (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
             (b"Sec-WebSocket-Version", b"13")]


@pytest.mark.parametrize("event, upgrade", [
    (h1(b"/ws", WS_FIELDS), b"websocket"),
    (h1(b"/ws", [(b"Host", b"a"), (b"Upgrade", b"h2c, WebSocket"),
                 (b"Connection", b"upgrade")]), b"websocket"),
    (h1(b"/ws", WS_FIELDS, b"POST"), None),                      # not a GET
    (h1(b"/ws", WS_FIELDS + [(b"Content-Length", b"3")], b"GET", False), None),  # a body
    (h1(b"/ws", WS_FIELDS, version=b"1.0"), None),                # RFC 6455 §4.1: HTTP/1.1
    (h1(b"/ws", WS_FIELDS[:2] + WS_FIELDS[3:]), None),            # no Connection: upgrade
    (h1(b"/ws", [(b"Host", b"a"), (b"Upgrade", b"foo"), (b"Connection", b"upgrade")]), None),
], ids=["websocket", "listed among others", "POST", "with a body", "HTTP/1.0",
        "no Connection: upgrade", "another protocol"])
def test_http1_websocket_upgrade(event, upgrade):
    """RFC 6455 §4.1: only a bodiless HTTP/1.1 GET with Upgrade: websocket and Connection:
    upgrade is a tunnel request; any other Upgrade is a plain request (the field is hop-by-hop
    and goes no further)."""
    request = gate.check_request(event, gate.HTTP1)
    assert request.upgrade == upgrade
    out = backend_request(request, client_ip=b"1.2.3.4", policy=Policy(
        headers=HeaderPolicy(x_forwarded_for="off", x_forwarded_proto=False, via=False),
        tls=False))
    assert not any(name in (b"upgrade", b"connection") for name, _ in out.headers)


def test_every_request_reason_of_the_table_is_reachable():
    """The table has no dead request rows: every gate reason above is in OUTCOMES and every 4xx
    request row the gate owns appears in the cases (the others are the codecs' and limits')."""
    used = {reason for _, _, reason in REFUSED} | {r for *_, r in REFUSED_EXTENDED}
    gate_rows = {r for r, row in OUTCOMES.items() if row.status in (400, 405, 501)
                 and r not in ("bad_trailer", "unsafe_request", "bad_framing")}
    assert gate_rows - used == {"length_mismatch"} - used
    assert used <= set(OUTCOMES)


ACCEPTED = [
    ("h2 GET", h2(GET + [(b"accept", b"*/*")]),
     (b"GET", b"https", b"example.com", b"/", [(b"accept", b"*/*")])),
    ("h2 Host instead of :authority", h2([p for p in GET if p[0] != b":authority"]
                                         + [(b"host", b"h.example:8443")]),
     (b"GET", b"https", b"h.example:8443", b"/", [])),
    ("h2 Host equal to :authority", h2(GET + [(b"host", b"EXAMPLE.com")]),
     (b"GET", b"https", b"example.com", b"/", [])),
    ("h2 OPTIONS *", h2(with_(GET, method=b"OPTIONS", path=b"*")),
     (b"OPTIONS", b"https", b"example.com", b"*", [])),
    ("h2 IPv6 authority", h2(with_(GET, authority=b"[2001:db8::1]:8443")),
     (b"GET", b"https", b"[2001:db8::1]:8443", b"/", [])),
    ("h2 value with inner space and obs-text", h2(GET + [(b"x-a", b"a b\tc\xe9")]),
     (b"GET", b"https", b"example.com", b"/", [(b"x-a", b"a b\tc\xe9")])),
    ("h2 empty value", h2(GET + [(b"x-a", b"")]),
     (b"GET", b"https", b"example.com", b"/", [(b"x-a", b"")])),
    ("spdy SPDY/2 absolute url", spdy(with_(GET, path=b"http://h.example:81/p?q")),
     (b"GET", b"http", b"h.example:81", b"/p?q", [])),
    ("h1 origin-form", h1(b"/a?b", [(b"Host", b"a.example"), (b"User-Agent", b"x")]),
     (b"GET", b"http", b"a.example", b"/a?b", [(b"user-agent", b"x")])),
    # item 7: absolute-form becomes origin-form, its authority wins over Host
    ("h1 absolute-form", h1(b"http://other.example/x?y", [(b"Host", b"a.example")]),
     (b"GET", b"http", b"other.example", b"/x?y", [])),
    ("h1 absolute-form without path", h1(b"HTTPS://other.example:8443", [(b"Host", b"a")]),
     (b"GET", b"https", b"other.example:8443", b"/", [])),
    ("h1 absolute-form query only", h1(b"http://o.example?q=1", [(b"Host", b"a")]),
     (b"GET", b"http", b"o.example", b"/?q=1", [])),
    # RFC 9112 §3.2.4: OPTIONS to an absolute URI with an empty path is "*" to the origin
    ("h1 absolute-form OPTIONS without path", h1(b"http://o.example:81", [], b"OPTIONS"),
     (b"OPTIONS", b"http", b"o.example:81", b"*", [])),
    ("h1 absolute-form OPTIONS with a query", h1(b"http://o.example?q", [], b"OPTIONS"),
     (b"OPTIONS", b"http", b"o.example", b"/?q", [])),
    ("h1 absolute-form OPTIONS /", h1(b"http://o.example/", [], b"OPTIONS"),
     (b"OPTIONS", b"http", b"o.example", b"/", [])),
    ("spdy SPDY/2 absolute url OPTIONS", spdy(with_(GET, method=b"OPTIONS",
                                                   path=b"http://h.example")),
     (b"OPTIONS", b"http", b"h.example", b"*", [])),
    ("h1 HTTP/1.0 without Host", h1(b"/", [], version=b"1.0"), (b"GET", b"http", b"", b"/", [])),
    ("h1 empty Host", h1(b"/", [(b"Host", b"")]), (b"GET", b"http", b"", b"/", [])),
]


@pytest.mark.parametrize("event, expected", [(e, x) for _, e, x in ACCEPTED],
                         ids=[name for name, _, _ in ACCEPTED])
def test_accepted(event, expected):
    """Valid heads pass; the neutral request says what they mean."""
    request = gate.check_request(event, family(event))
    assert (request.method, request.scheme, request.authority, request.path,
            request.headers) == expected


def test_framing_fields_become_attributes():
    """Content-Length, TE: trailers and Expect: 100-continue are attributes, not fields."""
    request = gate.check_request(h2(GET + [(b"content-length", b"5"), (b"te", b"trailers"),
                                           (b"expect", b"100-continue")], False), gate.H2)
    assert (request.content_length, request.te_trailers, request.expect_continue) == (5, True, True)
    assert request.headers == []
    request = gate.check_request(h1(b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked"),
                                           (b"TE", b"deflate, trailers;q=1")], b"POST", False),
                                 gate.HTTP1)
    assert (request.content_length, request.end_stream, request.te_trailers) == (None, False, True)


@pytest.mark.parametrize("headers, family_, expected", [
    ([(b"x-sum", b"1")], gate.H2, [(b"x-sum", b"1")]),
    ([(b"X-Sum", b"1")], gate.HTTP1, [(b"x-sum", b"1")]),
    ([(b"x-sum", b"1"), (b"content-length", b"9"), (b"host", b"h")], gate.HTTP1,
     [(b"x-sum", b"1")]),
])
def test_trailers_accepted(headers, family_, expected):
    """Trailers pass with framing and routing fields dropped (RFC 9110 §6.5.1)."""
    assert gate.check_trailers(headers, family_) == expected


@pytest.mark.parametrize("headers, family_", [
    ([(b":path", b"/x")], gate.H2),
    ([(b"x-sum", b"a\r\nb")], gate.H2),  # issue item 2
    ([(b"X-Sum", b"1")], gate.H2),
    ([(b"connection", b"x")], gate.SPDY),
    ([(b"x-sum", b"a\x00b")], gate.HTTP1),
])
def test_trailers_refused(headers, family_):
    """Pseudo-header fields, CR/LF/NUL, upper case in h2 and connection fields: bad_trailer."""
    with pytest.raises(Refused) as refused:
        gate.check_trailers(headers, family_)
    assert refused.value.reason == "bad_trailer"


# -- responses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"chunked")],
])
def test_response_transfer_encoding_is_refused(headers):
    """The HTTP/1.1 codec consumes Transfer-Encoding (and the Content-Length it overrides: item
    5 of the issue, chunked wins), so one that reaches the gate came from an HTTP/2 backend, where
    it makes the response malformed (RFC 9113 §8.2.2): refused, never a reason to drop the
    length."""
    with pytest.raises(Refused) as refused:
        gate.check_response(200, headers)
    assert refused.value.reason == "bad_response"


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_loses_its_content_length(status):
    """RFC 9110 §8.6: 204 and 304 carry no body, so their Content-Length is checked and dropped
    (an HTTP/2 client would hold it against the 0 bytes that follow); 1xx lose it too. A
    malformed one is still refused."""
    assert gate.check_response(status, [(b"etag", b"x"), (b"content-length", b"5")]) == \
        ([(b"etag", b"x")], None)
    assert gate.check_informational(103, [(b"link", b"</a>"), (b"content-length", b"5")]) == \
        [(b"link", b"</a>")]
    with pytest.raises(Refused):
        gate.check_response(status, [(b"content-length", b"-5")])


def test_response_repeated_equal_lengths_become_one():
    """``5, 5`` and two equal copies are one Content-Length."""
    assert gate.check_response(200, [(b"content-length", b"5, 5"), (b"content-length", b"5")]) \
        == ([(b"content-length", b"5")], 5)


@pytest.mark.parametrize("status, headers", [
    (200, [(b"content-length", b"5"), (b"content-length", b"6")]),
    (200, [(b"x", b"a\r\nb")]),
    (200, [(b"x", b"a\x00b")]),
    (200, [(b"X-Upper", b"1")]),
    (200, [(b":status", b"200")]),
    (0, []),
    (99, []),
    (600, []),
    (101, []),
])
def test_bad_responses(status, headers):
    """Differing lengths, CR/LF/NUL, bad names, pseudo-header fields and bad statuses: 502."""
    with pytest.raises(Refused) as refused:
        gate.check_response(status, headers)
    assert refused.value.reason == "bad_response"


def test_informational_101_is_refused_and_103_passes():
    """1xx heads: 101 has no tunnel to go to (yet); 103 passes with its fields."""
    assert gate.check_informational(103, [(b"link", b"</a>")]) == [(b"link", b"</a>")]
    with pytest.raises(Refused):
        gate.check_informational(101, [])


# -- properties ---------------------------------------------------------------------------------

NASTY = b"\r\n\x00 \t:@#/?%\x7f\xff\x0b;,\"AZaz09-_."
_nasty = st.binary(max_size=12) | st.lists(st.sampled_from(list(NASTY)), max_size=12).map(bytes)
_tokens = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH",
                           b"CONNECT", b"get", b"X-CUSTOM"])
_paths = st.builds(lambda a, b: a + b, st.sampled_from([b"/", b"*", b"", b"http://h/", b"x"]),
                   _nasty)
_authorities = st.sampled_from([b"example.com", b"a:1", b"[::1]:8", b"", b"a b", b"u@h"]) | _nasty
_names = st.sampled_from([b"x-a", b"accept", b"cookie", b"host", b"content-length", b"te",
                          b"transfer-encoding", b"connection", b"via", b"X-Up", b""]) | _nasty
_values = st.sampled_from([b"1", b"chunked", b"trailers", b"5", b" x", b"a\r\nb", b""]) | _nasty
_fields = st.lists(st.tuples(_names, _values), max_size=6)
POLICY = Policy(headers=HeaderPolicy(), tls=False)


@st.composite
def raw_heads(draw):
    """Raw request events of any family, with hostile bytes anywhere."""
    kind = draw(st.sampled_from(["h2", "spdy", "h1"]))
    method, path, fields = draw(_tokens | _nasty), draw(_paths), draw(_fields)
    end_stream = draw(st.booleans())
    if kind == "h1":
        fields = [(n.title() if draw(st.booleans()) else n, v) for n, v in fields]
        if draw(st.booleans()):
            fields.insert(0, (b"Host", draw(_authorities)))
        return h1(path, fields, method, end_stream, draw(st.sampled_from([b"1.1", b"1.0"])))
    pseudo = [(b":method", method), (b":scheme", draw(st.sampled_from([b"http", b"https", b""]))),
              (b":authority", draw(_authorities)), (b":path", path)]
    pseudo = draw(st.permutations(pseudo))[:draw(st.integers(2, 4))]
    event = h2 if kind == "h2" else spdy
    return event(pseudo + fields, end_stream)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_heads())
@example(ev.RequestReceived(stream_id=1, headers=[(b":method", b"GET"), (b":path", b"/."),
                                                  (b"Host", b"example.com")],
                            end_stream=False, http_version=b"1.1"))
def test_accepted_heads_are_written_as_exactly_one_equal_request(event):
    """For any head: the gate refuses it, or the writer's bytes are exactly one request to h11,
    with the gate's method, target (normalised as routing saw it: ``/a/../b`` is ``/b``), Host
    and fields (after the translation rules), and nothing more (no second request, no leftover
    bytes)."""
    try:
        request = gate.check_request(event, family(event))
    except Refused:
        return
    breq = backend_request(request, client_ip=b"192.0.2.1", policy=POLICY)
    codec = H1FastClientCodec()
    codec.send_request(1, breq, b"backend.internal:8080")
    if breq.has_body:
        if breq.content_length:
            codec.send_data(b"x" * breq.content_length)
        codec.end_request(())
    wire = codec.data_to_send()
    events = parse_h11_requests(wire)
    heads = [e for e in events if type(e) is h11.Request]
    assert len(heads) == 1 and type(events[-1]) is h11.EndOfMessage
    head = heads[0]
    assert head.method == request.method and head.target == normalize_target(request.path)
    host = [v for n, v in head.headers if n == b"host"]
    assert host == [request.authority or b"backend.internal:8080"]
    fields = [(n, v) for n, v in head.headers.raw_items()
              if n not in (b"host", b"content-length", b"transfer-encoding")]
    # RFC 9110 §9.3.1/2/5/7/8: content on these has no (defined) semantics; it travels alone
    # (a body of unknown length, which ends empty here, is none: the request goes bodiless).
    alone = (request.method in (b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS") and breq.has_body
             and bool(breq.content_length))
    assert fields == breq.headers + ([(b"connection", b"close")] if alone else [])


@settings(max_examples=1000, deadline=None)
@given(_tokens | _nasty, _paths, _authorities, _fields, st.booleans(),
       st.none() | st.integers(0, 50))
@example(b"GET", b"/", b"example.com", [], True, 1)
def test_writer_refuses_or_writes_exactly_one_request(method, target, authority, fields, body,
                                                      length):
    """Defence in depth, without the gate: for any neutral request at all, the HTTP/1.1 writer
    either raises Refused("unsafe_request") and queues nothing, or writes exactly one request
    that h11 reads back with the same method, target, Host and fields (and ``connection: close``
    when a GET, HEAD, DELETE or TRACE carries content)."""
    from proxyd.bridge import BackendRequest

    breq = BackendRequest(method, target, authority, [(n.lower(), v) for n, v in fields], length,
                          body)
    codec = H1FastClientCodec()
    try:
        codec.send_request(1, breq, b"backend.internal")
    except Refused as refused:
        assert refused.reason == "unsafe_request"
        assert codec.data_to_send() == b""
        return
    if body:
        if length:
            codec.send_data(b"y" * length)
        codec.end_request(())
    events = parse_h11_requests(codec.data_to_send())
    heads = [e for e in events if type(e) is h11.Request]
    assert len(heads) == 1 and type(events[-1]) is h11.EndOfMessage
    assert heads[0].method == method and heads[0].target == target
    assert [v for n, v in heads[0].headers if n == b"host"] == [authority or b"backend.internal"]
    # RFC 9112 §5: a field value has no leading or trailing whitespace (the gate refuses such
    # values; the writer alone need not, as they cannot change framing).
    # RFC 9110 §9.3.1/2/5/7/8: content on these travels alone (a body of unknown length that
    # ends empty, as here, is no content).
    alone = (method in (b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS") and body and bool(length)
             and not any(n == b"connection" and v.lower() == b"close" for n, v in breq.headers))
    assert [(n, v) for n, v in heads[0].headers.raw_items()
            if n not in (b"host", b"content-length", b"transfer-encoding")] == \
        [(n, v.strip(b" \t")) for n, v in breq.headers] + \
        ([(b"connection", b"close")] if alone else [])


def _request_outcome(event):
    """What the gate makes of ``event``: its refusal reason, or every attribute of the Request."""
    try:
        r = gate.check_request(event, family(event))
    except Refused as refused:
        return ("refused", refused.reason)
    return ("ok", r.stream_id, r.method, r.scheme, r.authority, r.path, r.headers,
            r.content_length, r.end_stream, r.http_version, r.te_trailers, r.expect_continue,
            r.upgrade)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_heads(), st.integers(1, 2**31 - 1))
def test_a_head_seen_again_gets_what_a_fresh_check_gives(event, other_id):
    """The memo of accepted heads: the same head on another stream (answered from the memo when
    it was accepted) gets the same outcome as the first, fresh check, with its own stream id and
    a field list of its own; a refused head is refused again with the same reason (refusals are
    not remembered)."""
    gate._accepted_requests.clear()
    first = _request_outcome(event)
    second = _request_outcome(dataclasses.replace(event, stream_id=other_id))
    if first[0] == "ok":
        assert second == first[:1] + (other_id,) + first[2:]
        assert second[6] is not first[6]
    else:
        assert second == first and not gate._accepted_requests


@settings(max_examples=500, deadline=None)
@given(st.integers(100, 700), st.lists(st.tuples(
    st.sampled_from([b"content-length", b"transfer-encoding", b"x-a", b"X-Up", b"", b":s"]),
    st.sampled_from([b"5", b"5, 5", b"6", b"chunked", b"a\r\nb", b" v", b"v", b""])),
    max_size=4))
def test_a_response_head_seen_again_gets_what_a_fresh_check_gives(status, headers):
    """The memo of accepted response heads answers exactly what the check computed afresh (a
    list of its own each time); refusals are not remembered."""
    def outcome():
        try:
            fields, length = gate.check_response(status, headers)
        except Refused as refused:
            return ("refused", refused.reason)
        return ("ok", fields, length)

    gate._accepted_responses.clear()
    first = outcome()
    second = outcome()
    assert second == first
    if first[0] == "refused":
        assert not gate._accepted_responses
    else:
        assert second[1] is not first[1]


def test_the_memos_are_bounded():
    """However many different heads pass, each memo holds at most ``max_entries`` of them."""
    for i in range(3 * gate._accepted_requests.max_entries):
        gate.check_request(h2([(b":method", b"GET"), (b":scheme", b"https"),
                               (b":authority", b"a"), (b":path", b"/%d" % i)], True), gate.H2)
        gate.check_response(200, [(b"etag", b"%d" % i)])
    assert 0 < len(gate._accepted_requests) <= gate._accepted_requests.max_entries
    assert 0 < len(gate._accepted_responses) <= gate._accepted_responses.max_entries


@settings(max_examples=500, deadline=None)
@given(_tokens | _nasty, _paths, _authorities, _fields, st.booleans(),
       st.none() | st.integers(0, 50))
def test_writer_memo_writes_what_a_fresh_writer_writes(method, target, authority, fields, body,
                                                       length):
    """The writer's memo of heads: a request written again (its head from the memo) queues the
    bytes the first, fully checked write queued; a refused request is refused again and never
    remembered."""
    from proxyd.bridge import BackendRequest
    from proxyd.codec import h1client

    breq = BackendRequest(method, target, authority, [(n.lower(), v) for n, v in fields], length,
                          body)
    h1client._written.clear()
    outputs = []
    for _ in range(2):
        codec = H1FastClientCodec()
        try:
            codec.send_request(1, breq, b"backend.internal")
        except Refused as refused:
            outputs.append(refused.reason)
            continue
        outputs.append(codec.data_to_send())
    assert outputs[0] == outputs[1]
    if outputs[0] == "unsafe_request":
        assert not h1client._written


def test_large_heads_are_not_remembered():
    """A head over the memos' ``max_bytes`` is checked every time and never kept (a peer cannot make
    the memos hold more than their bound of small heads)."""
    from proxyd.bridge import backend_request
    from proxyd.codec import h1client

    gate._accepted_requests.clear()
    gate._accepted_responses.clear()
    h1client._written.clear()
    size = gate._accepted_requests.max_bytes
    big = [(b"x-big", b"v" * size)]
    event = h2([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"),
                (b":path", b"/")] + big, True)
    request = gate.check_request(event, gate.H2)
    gate.check_response(200, big)
    codec = H1FastClientCodec()
    codec.send_request(1, backend_request(request, client_ip=b"192.0.2.1", policy=POLICY),
                       b"backend")
    assert b"x-big: " + b"v" * size + b"\r\n" in codec.data_to_send()
    assert not gate._accepted_requests and not gate._accepted_responses and not h1client._written
