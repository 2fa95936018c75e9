"""Unit tests of proxyd.bridge: the backend request head for a client stream and error responses."""

import pytest

from proxyd import events as ev
from proxyd.bridge import Policy, backend_request, client_response, declared_length, error_response
from proxyd.config import HeaderPolicy

POLICY = Policy(headers=HeaderPolicy(), tls=True)
PLAIN = Policy(headers=HeaderPolicy(x_forwarded_for="off", x_forwarded_proto=False, via=False),
               tls=False)


def request(method=b"GET", headers=(), end_stream=True, authority=b"example.com", path=b"/p?q=1",
            http_version=b"2"):
    """A RequestReceived with test defaults."""
    return ev.RequestReceived(stream_id=1, method=method, scheme=b"https", authority=authority,
                              path=path, headers=list(headers), end_stream=end_stream,
                              http_version=http_version)


def names(headers):
    """The header names of a list, in order."""
    return [n for n, _ in headers]


def test_get_without_body():
    """A bodiless GET keeps its method and target, gets Host first and no body framing headers."""
    breq = backend_request(request(), client_ip=b"192.0.2.1", policy=POLICY)
    assert (breq.method, breq.target, breq.end_stream) == (b"GET", b"/p?q=1", True)
    assert breq.headers[0] == (b"host", b"example.com")
    assert breq.host == b"example.com"
    assert b"transfer-encoding" not in names(breq.headers)
    assert b"content-length" not in names(breq.headers)
    assert breq.content_length is None
    assert (b"x-forwarded-for", b"192.0.2.1") in breq.headers
    assert (b"x-forwarded-proto", b"https") in breq.headers
    assert (b"via", b"2 proxyd") in breq.headers


def test_body_without_length_is_chunked():
    """A body of unknown length (h2 without content-length) goes to the backend chunked."""
    breq = backend_request(request(b"POST", end_stream=False), client_ip=b"", policy=PLAIN)
    assert names(breq.headers).count(b"transfer-encoding") == 1
    assert (b"transfer-encoding", b"chunked") in breq.headers
    assert b"content-length" not in names(breq.headers)
    assert breq.end_stream is False and breq.content_length is None


def test_content_length_is_kept():
    """A declared content-length travels unchanged and no chunked framing is added."""
    breq = backend_request(request(b"PUT", [(b"content-length", b"42")], end_stream=False),
                           client_ip=b"", policy=PLAIN)
    assert (b"content-length", b"42") in breq.headers
    assert b"transfer-encoding" not in names(breq.headers)
    assert breq.content_length == 42


def test_http11_chunked_request_is_rechunked_once():
    """An HTTP/1.1 client's own Transfer-Encoding is hop-by-hop; exactly one chunked header goes out."""
    breq = backend_request(
        request(b"POST", [(b"host", b"h"), (b"transfer-encoding", b"chunked")], end_stream=False,
                authority=b"h", http_version=b"1.1"),
        client_ip=b"", policy=PLAIN)
    assert [v for n, v in breq.headers if n == b"transfer-encoding"] == [b"chunked"]
    assert names(breq.headers).count(b"host") == 1


@pytest.mark.parametrize("method, expected", [
    (b"POST", [b"0"]), (b"PUT", [b"0"]), (b"PATCH", [b"0"]), (b"GET", []), (b"DELETE", []),
    (b"HEAD", []),
])
def test_end_stream_without_body(method, expected):
    """A request ended with its head has no chunked framing; POST/PUT/PATCH say content-length: 0."""
    breq = backend_request(request(method, end_stream=True), client_ip=b"", policy=PLAIN)
    assert [v for n, v in breq.headers if n == b"content-length"] == expected
    assert b"transfer-encoding" not in names(breq.headers)
    assert breq.end_stream is True


def test_expect_is_dropped():
    """Expect: 100-continue is answered by the frontend; the backend never sees it."""
    breq = backend_request(
        request(b"POST", [(b"expect", b"100-continue"), (b"content-length", b"3")], end_stream=False),
        client_ip=b"", policy=PLAIN)
    assert b"expect" not in names(breq.headers)
    assert (b"content-length", b"3") in breq.headers


def test_hop_by_hop_removed_and_cookies_joined():
    """Hop-by-hop headers never reach the backend; h2 cookie crumbs are joined with '; '."""
    breq = backend_request(
        request(headers=[(b"cookie", b"a=1"), (b"te", b"trailers"), (b"keep-alive", b"5"),
                         (b"cookie", b"b=2"), (b"accept", b"*/*")]),
        client_ip=b"", policy=PLAIN)
    assert breq.headers == [(b"host", b"example.com"), (b"cookie", b"a=1; b=2"), (b"accept", b"*/*")]


def test_declared_length():
    """declared_length parses the first content-length and tolerates garbage."""
    assert declared_length([(b"content-length", b"12")]) == 12
    assert declared_length([(b"x", b"1")]) is None
    assert declared_length([(b"content-length", b"zz")]) is None


@pytest.mark.parametrize("status, reason", [
    (502, b"Bad Gateway"), (503, b"Service Unavailable"), (504, b"Gateway Timeout"), (400, b"Bad Request"),
])
def test_error_response_shape(status, reason):
    """An error response is short text with a matching content-length and no caching."""
    got_status, headers, body = error_response(status, b"backend timeout")
    assert got_status == status
    assert body == reason + b": backend timeout\n"
    assert dict(headers) == {
        b"content-type": b"text/plain; charset=utf-8",
        b"content-length": b"%d" % len(body),
        b"cache-control": b"no-store",
    }


def test_error_response_without_cause():
    """Without a cause the body is just the reason phrase."""
    _, headers, body = error_response(502)
    assert body == b"Bad Gateway\n"
    assert (b"content-length", b"12") in headers


def test_client_response_rewrites_location_and_appends_via():
    """The client's response head: hop-by-hop removed, Location of the backend host rewritten, Via."""
    headers = client_response(
        302, [(b"location", b"http://app.internal:8081/next?x=1"), (b"connection", b"close"),
              (b"keep-alive", b"timeout=5")],
        policy=POLICY, backend_host=b"app.internal", scheme=b"https", authority=b"example.com")
    assert headers == [(b"location", b"https://example.com/next?x=1"), (b"via", b"1.1 proxyd")]
