"""Unit tests of proxyd.bridge: the neutral backend request of a gated request, and the client's
response head (Translator). Framing is not the bridge's: these requests carry no Host,
Content-Length or Transfer-Encoding field (the writers' tests check what goes on the wire)."""

import pytest

from proxyd import events as ev
from proxyd.bridge import Policy, Translator, backend_request
from proxyd.config import HeaderPolicy
from tests.support import gated

POLICY = Policy(headers=HeaderPolicy(), tls=True)
PLAIN = Policy(headers=HeaderPolicy(x_forwarded_for="off", x_forwarded_proto=False, via=False),
               tls=False)


def request(method=b"GET", headers=(), end_stream=True, authority=b"example.com", path=b"/p?q=1"):
    """A gated HTTP/2 request with test defaults."""
    head = [(b":method", method), (b":scheme", b"https"), (b":authority", authority),
            (b":path", path), *headers]
    return gated(ev.RequestReceived(stream_id=1, headers=head, end_stream=end_stream))


def h1_request(head, body=False, path=b"/"):
    """A gated HTTP/1.1 request from ``head`` lines (after the request line)."""
    raw = [(b":method", b"POST" if body else b"GET"), (b":path", path), *head]
    return gated(ev.RequestReceived(stream_id=1, headers=raw, end_stream=not body,
                                    http_version=b"1.1"))


def names(headers):
    """The header names of a list, in order."""
    return [n for n, _ in headers]


def test_get_without_body():
    """A bodiless GET keeps method, target and authority; the policy adds XFF, XFP and Via."""
    breq = backend_request(request(), client_ip=b"192.0.2.1", policy=POLICY)
    assert (breq.method, breq.target, breq.authority) == (b"GET", b"/p?q=1", b"example.com")
    assert (breq.has_body, breq.content_length) == (False, None)
    assert breq.headers == [(b"x-forwarded-for", b"192.0.2.1"), (b"x-forwarded-proto", b"https"),
                            (b"via", b"2 proxyd")]


def test_body_with_and_without_length():
    """A declared length travels as a number; a body without one is just ``has_body``."""
    breq = backend_request(request(b"PUT", [(b"content-length", b"42")], end_stream=False),
                           client_ip=b"", policy=PLAIN)
    assert (breq.content_length, breq.has_body, breq.headers) == (42, True, [])
    breq = backend_request(request(b"POST", end_stream=False), client_ip=b"", policy=PLAIN)
    assert (breq.content_length, breq.has_body) == (None, True)


def test_http11_framing_fields_never_travel_as_fields():
    """An HTTP/1.1 client's Transfer-Encoding, Host, Expect and TE are the gate's attributes,
    never forwarded fields; exactly the end-to-end ones remain."""
    req = h1_request([(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"Expect", b"100-continue"),
                      (b"TE", b"trailers"), (b"Accept", b"*/*")], body=True)
    breq = backend_request(req, client_ip=b"", policy=PLAIN)
    assert breq.headers == [(b"accept", b"*/*")]
    assert (breq.authority, breq.has_body, breq.te_trailers) == (b"h", True, True)


def test_hop_by_hop_removed_and_cookies_joined():
    """Hop-by-hop fields never reach the backend; h2 cookie crumbs are joined with '; '; a client's
    ``te: trailers`` becomes ``te_trailers`` (for HTTP/2 backends)."""
    breq = backend_request(
        request(headers=[(b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2"),
                         (b"accept", b"*/*")]),
        client_ip=b"", policy=PLAIN)
    assert breq.headers == [(b"cookie", b"a=1; b=2"), (b"accept", b"*/*")]
    assert breq.te_trailers


def test_http11_connection_nominated_fields_are_removed():
    """Fields an HTTP/1.1 client names in Connection are hop-by-hop too (DESIGN §4)."""
    breq = backend_request(h1_request([(b"Host", b"h"), (b"Connection", b"x-secret, close"),
                                       (b"X-Secret", b"1"), (b"X-Ok", b"2")]),
                           client_ip=b"", policy=PLAIN)
    assert breq.headers == [(b"x-ok", b"2")]


def test_translator_rewrites_location_and_appends_via():
    """The client's response head: hop-by-hop removed, a Location naming the Host sent to the
    backend rewritten to the client's scheme and authority, Via appended."""
    translator = Translator(POLICY, b"example.com")
    headers = translator.response_headers(
        302, [(b"location", b"http://example.com:8081/next?x=1"), (b"connection", b"close"),
              (b"keep-alive", b"timeout=5")], b"1.1", b"127.0.0.1:8081")
    assert headers == [(b"location", b"https://example.com/next?x=1"), (b"via", b"1.1 proxyd")]


@pytest.mark.parametrize("location, expected", [
    (b"http://127.0.0.1:9300/new/page.html", b"https://proxy.test:9443/new/page.html"),
    (b"http://127.0.0.1:9301/x", b"http://127.0.0.1:9301/x"),
    (b"http://127.0.0.1/x", b"http://127.0.0.1/x"),
    (b"/relative", b"/relative"),
])
def test_translator_rewrites_the_address_that_answered(location, expected):
    """Issue item 13 (nginx's ``proxy_redirect default``): a legacy app that redirects to its own
    address (host and port of the backend that answered) is rewritten too; other ports and
    relative references stay."""
    translator = Translator(POLICY, b"proxy.test:9443")
    headers = translator.response_headers(301, [(b"location", location)], b"1.1", b"127.0.0.1:9300")
    assert headers[0] == (b"location", expected)


def test_client_subject_reaches_the_backend_request():
    """A connection's policy with a verified subject sends it in the configured header; a
    client's own header of that name never passes."""
    headers = HeaderPolicy(client_cert_header=b"x-client-subject")
    listener = Policy(headers=headers, tls=True)
    forged = request(headers=[(b"x-client-subject", b"CN=admin")])
    assert b"x-client-subject" not in names(
        backend_request(forged, client_ip=b"192.0.2.1", policy=listener).headers)
    connection = listener.with_client_subject(b"CN=alice")
    breq = backend_request(forged, client_ip=b"192.0.2.1", policy=connection)
    assert [v for n, v in breq.headers if n == b"x-client-subject"] == [b"CN=alice"]


def test_with_client_subject():
    """No subject keeps the policy itself; a subject gives a copy differing only in it."""
    assert POLICY.with_client_subject(None) is POLICY
    verified = POLICY.with_client_subject(b"CN=alice")
    assert verified.client_subject == b"CN=alice" and POLICY.client_subject is None
    assert (verified.headers, verified.tls) == (POLICY.headers, POLICY.tls)
    assert verified.with_client_subject(b"CN=alice") is verified


@pytest.mark.parametrize("path, target", [
    (b"/p?q=1", b"/p?q=1"),
    (b"/admin/../public?x=/../y", b"/public?x=/../y"),
    (b"/a/%2e%2e/b/%7e", b"/b/~"),
    (b"/a%2F..%2Fb", b"/a%2F..%2Fb"),
])
def test_backend_target_is_the_normalised_path(path, target):
    """The backend gets the path routing chose the route for (as nghttpx), the query as sent."""
    assert backend_request(request(path=path), client_ip=b"192.0.2.1", policy=POLICY).target \
        == target


def test_tunnel_target_is_the_normalised_path():
    """A WebSocket handshake goes to the normalised path too."""
    head = [(b"host", b"example.com"), (b"connection", b"upgrade"), (b"upgrade", b"websocket"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13")]
    breq = backend_request(h1_request(head, path=b"/ws/../chat/./room"), client_ip=b"192.0.2.1",
                           policy=POLICY)
    assert breq.upgrade == b"websocket" and breq.target == b"/chat/room"


def test_translator_request_trailers_drop_trusted_names():
    """Request trailers lose every trusted name (the certificate header of the policy too),
    in any spelling; other fields pass."""
    translator = Translator(Policy(headers=HeaderPolicy(client_cert_header=b"x-client-subject"),
                                   tls=True), b"example.com")
    trailers = [(b"x-client-subject", b"CN=root"), (b"x_forwarded_for", b"6.6.6.6"),
                (b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-proto", b"https"),
                (b"grpc-status", b"0")]
    assert translator.request_trailers(trailers) == [(b"grpc-status", b"0")]
