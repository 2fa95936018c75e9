"""The trust boundary through the in-memory proxy (memproxy, no sockets): what a backend is told
about the client and where a request goes. Spellings of trusted names (``X_Client_Subject``,
read by CGI/WSGI/PHP backends as the trusted header) and trusted names in request trailers never
reach a backend, from any frontend; the backend receives the path its route was chosen for; a
PROXY v1 address cannot carry text into X-Forwarded-For or Forwarded; a client's malformed
Forwarded cannot swallow proxyd's element; and a path's route does not depend on how many other
routes the host has. Each test failed before its fix (a security review's findings)."""

import h11
import pytest

from memproxy import Proxy, base_config
from proxyd.route import normalize_path
from test_proxy_and_shared import connect, proxied

CERT = "x-client-subject"
# Names proxyd owns toward the backend (it sets them, or strips what clients send).
TRUSTED = {b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", CERT.encode()}


def head_fields(raw):
    """(name, value) pairs of the head and, for a chunked body, of the trailer section."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    fields = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:]]
    trailers = []
    if b"\r\n0\r\n" in b"\r\n" + rest:
        section = (b"\r\n" + rest).split(b"\r\n0\r\n", 1)[1]
        trailers = [tuple(line.split(b": ", 1)) for line in section.split(b"\r\n") if line]
    return fields, trailers


def spelled_like_trusted(fields):
    """Fields a CGI/WSGI/PHP-style backend reads as a trusted header (``_`` == ``-``) but that
    proxyd did not write under the trusted name itself."""
    return [(n, v) for n, v in fields if n not in TRUSTED and n.replace(b"_", b"-") in TRUSTED]


# -- 1. underscore spellings of trusted headers ---------------------------------------------

def _all_frontends_proxy(tmp_path):
    """A proxy setting every trusted header (X-Forwarded-*, Forwarded, the certificate's)."""
    data = base_config(headers={"client_cert_header": CERT, "x_forwarded_for": "replace",
                                "forwarded": "replace"})
    data["listen"][0]["protocols"] = ["h2", "http/1.1"]
    return Proxy(tmp_path, data)


FORGED = [(b"x_client_subject", b"CN=root"), (b"x_forwarded_for", b"6.6.6.6"),
          (b"x_forwarded_proto", b"https"), (b"x_forwarded_for", b"7.7.7.7")]


def test_h1_underscore_spellings_of_trusted_headers_are_not_forwarded(tmp_path):
    """wsgiref, Django-on-ASGI, uWSGI, PHP's built-in server... map X_Client_Subject and
    X-Client-Subject to the same HTTP_X_CLIENT_SUBJECT: both spellings are dropped."""
    proxy = _all_frontends_proxy(tmp_path)
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: a\r\n"
                 + b"".join(n.upper() + b": " + v + b"\r\n" for n, v in FORGED) + b"\r\n")
    fields, _ = head_fields(proxy.backend().received())
    assert spelled_like_trusted(fields) == []
    assert (b"x-client-subject", b"CN=root") not in fields


def test_h2_underscore_spellings_of_trusted_headers_are_not_forwarded(tmp_path):
    """The same from an HTTP/2 client (lower-case names with underscores are valid in h2)."""
    proxy = _all_frontends_proxy(tmp_path)
    client = proxy.h2_client()
    client.request(headers=FORGED)
    fields, _ = head_fields(proxy.backend().received())
    assert spelled_like_trusted(fields) == []


def test_spdy_underscore_spellings_of_trusted_headers_are_not_forwarded(tmp_path):
    """The same from a SPDY/3 client."""
    data = base_config(headers={"client_cert_header": CERT})
    data["listen"][0]["protocols"] = ["spdy/3.1", "spdy/3", "spdy/2"]
    proxy = Proxy(tmp_path, data)
    client = proxy.spdy_client(3)
    client.send_syn(1, [(b":method", b"GET"), (b":path", b"/"), (b":version", b"HTTP/1.1"),
                        (b":host", b"a"), (b":scheme", b"http"), *FORGED[:3]])
    fields, _ = head_fields(proxy.backend().received())
    assert spelled_like_trusted(fields) == []


def test_other_underscore_names_are_forwarded(tmp_path):
    """Names proxyd does not own keep their underscores (nginx would drop them; see README)."""
    proxy = _all_frontends_proxy(tmp_path)
    client = proxy.h1_client()
    client.write(b"GET / HTTP/1.1\r\nHost: a\r\nX_Request_Id: 42\r\n\r\n")
    fields, _ = head_fields(proxy.backend().received())
    assert (b"x_request_id", b"42") in fields


# -- 2. trusted headers in request trailers ---------------------------------------------------

def test_h1_trailers_cannot_carry_trusted_headers(tmp_path):
    """proxyd removes the trusted headers from every client request: from its trailer section
    too (HTTP/1.1 chunked trailers), in any spelling; other trailer fields pass."""
    proxy = _all_frontends_proxy(tmp_path)
    client = proxy.h1_client()
    client.write(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"1\r\na\r\n0\r\nX-Client-Subject: CN=root\r\nX-Forwarded-For: 6.6.6.6\r\n"
                 b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
                 b"X_Client_Subject: CN=root\r\nChecksum: abc\r\n\r\n")
    _, trailers = head_fields(proxy.backend().received())
    assert [n for n, _ in trailers if n.replace(b"_", b"-") in TRUSTED] == []
    assert (b"checksum", b"abc") in trailers


def test_h2_trailers_cannot_carry_trusted_headers(tmp_path):
    """The same for HTTP/2 trailers (forwarded as chunked trailers to an HTTP/1.1 backend)."""
    proxy = _all_frontends_proxy(tmp_path)
    client = proxy.h2_client()
    sid = client.request(method=b"POST", path=b"/y", body=b"abc", end_stream=False)
    client.h2.send_headers(sid, [(b"x-client-subject", b"CN=root"),
                                 (b"x-forwarded-for", b"6.6.6.6"),
                                 (b"x_forwarded_proto", b"https")], end_stream=True)
    client.flush()
    _, trailers = head_fields(proxy.backend().received())
    assert [n for n, _ in trailers if n.replace(b"_", b"-") in TRUSTED] == []


# -- 3. routing decides on one path, the backend gets another ---------------------------------

ROUTES = [{"match": {"path": "/admin"}, "backends": [{"address": "127.0.0.1:9001"}]}]


@pytest.mark.parametrize("target", [b"/admin/../public", b"/admin/%2e%2e/public",
                                    b"/admin/./../x", b"/public/../admin"])
def test_backend_gets_the_path_the_route_was_chosen_for(tmp_path, target):
    """The route of /admin/../public is chosen for "/public" (the default backend): that
    backend must not be sent "/admin/../public", or an app that routes on the raw path
    (Express app.use('/admin'), startswith checks) serves its /admin handlers behind a route
    meant to keep /admin elsewhere. As nghttpx does, the normalised path is forwarded."""
    proxy = Proxy(tmp_path, base_config(routes=ROUTES))
    client = proxy.h1_client()
    client.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
    sent = proxy.backend().received().split(b" ")[1]
    assert sent == normalize_path(target)


def test_normalised_path_keeps_the_query_and_reserved_escapes(tmp_path):
    """Only the path is normalised: the query is forwarded as sent, and reserved escapes such
    as ``%2F`` stay encoded (they are data, not separators)."""
    proxy = Proxy(tmp_path, base_config(routes=ROUTES))
    client = proxy.h1_client()
    client.write(b"GET /a/../files/x%2Fy?next=/a/../b HTTP/1.1\r\nHost: a\r\n\r\n")
    [request, _end] = proxy.backend().requests()
    assert isinstance(request, h11.Request)
    assert request.target == b"/files/x%2Fy?next=/a/../b"


# -- 4. PROXY v1: an "address" that is not one ------------------------------------------------

def test_proxy_v1_scope_id_cannot_inject_forwarded_elements(tmp_path):
    """``ipaddress`` accepts ``::1%<anything but % and space>`` (a scope id): such a PROXY v1
    source is refused rather than written into X-Forwarded-For and Forwarded."""
    proxy = proxied(tmp_path, headers={"forwarded": "append"})
    protocol, transport = connect(proxy)
    source = b'::1%"];proto=https,for=6.6.6.6;x="'
    protocol.dataReceived(b"PROXY TCP6 " + source + b" ::1 1 2\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.disconnecting and proxy.connects == 0


# -- 5. Forwarded append: a client's open quote swallows proxyd's element -------------------

def test_forwarded_append_keeps_proxyd_element_parseable(tmp_path):
    """append joined the client's value as is: ``by="`` opens a quoted string that runs to the
    end, so proxyd's own (the only trustworthy) element ended up inside the client's string. A
    value that is not RFC 7239 syntax is now dropped, as with ``replace``."""
    proxy = Proxy(tmp_path, base_config(headers={"forwarded": "append"}))
    client = proxy.h1_client()
    client.write(b'GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=6.6.6.6;by="\r\n\r\n')
    value = dict(head_fields(proxy.backend().received())[0])[b"forwarded"]
    tail = value.rsplit(b", ", 1)[-1]
    assert tail == b"for=203.0.113.5;proto=http"
    before = value[: len(value) - len(tail)]
    assert before.count(b'"') % 2 == 0  # proxyd's element is not inside a quoted string


# -- 6. the route of a path depends on how many other routes exist ---------------------------

def test_route_choice_does_not_depend_on_unrelated_routes():
    """``/x`` and ``/x/`` both match "/x": with <= 4 routes of a host the ``/x/`` route won,
    with more (the lookups of route.py) the ``/x`` route; now the exact ``/x`` always wins."""
    from proxyd.route import RouteTable

    base = [(None, "/x", "exact"), (None, "/x/", "slash")]
    small = RouteTable(base)
    big = RouteTable(base + [(None, f"/other{i}", "o") for i in range(3)])
    assert small.match(b"a", b"/x") == big.match(b"a", b"/x") == "exact"


# -- a reload that changes trusted_proxies ------------------------------------------------

def test_a_reload_that_stops_trusting_a_client_applies_to_its_open_connection(make_service,
                                                                            tmp_path):
    """Without trusted_proxies every client is trusted: its X-Forwarded-For is extended. The
    operator adds ``trusted_proxies`` (the client's address not in it) and reloads to stop
    that: the next request of a connection opened before the reload must have its
    X-Forwarded-For replaced like any new connection's, not extended on the strength of a
    verdict taken when the connection was accepted (new streams of open connections follow
    the new configuration, as the reload promises)."""
    from memproxy import CLIENT_IP, base_config
    from proxyd.config import parse_config

    proxy = make_service()
    client = proxy.h2_client()
    client.request(headers=[(b"x-forwarded-for", b"6.6.6.6")])
    backend = proxy.backend()
    [request, _end] = backend.requests()
    assert dict(request.headers)[b"x-forwarded-for"] == b"6.6.6.6, " + CLIENT_IP.encode()
    backend.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    client.pump()
    assert proxy.service.reload(parse_config(base_config(trusted_proxies=["10.0.0.0/8"]),
                                             str(tmp_path)))
    for conn in (client, proxy.h2_client()):  # the open connection, and a new one
        conn.request(headers=[(b"x-forwarded-for", b"6.6.6.6")])
        [request, _end] = proxy.backend().requests()
        assert dict(request.headers)[b"x-forwarded-for"] == CLIENT_IP.encode()
        proxy.backend().respond(b"HTTP/1.1 204 No Content\r\n\r\n")
        conn.pump()
