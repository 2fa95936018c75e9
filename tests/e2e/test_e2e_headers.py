"""DESIGN §4 header rules, seen from both ends: /echo shows what the backend received (in
order), the clients show what the proxy answered."""

import json
from urllib.parse import quote

import pytest

from .harness import (H2Client, base_config, curl, header_value, nghttp, raw_http1,
                      require_tool, run, running)


def echo_values(echo, name):
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def h2_echo(proxy, tls=False, headers=(), authority=None, path="/echo"):
    """GET path over the raw h2 client; returns (response headers, backend's echo JSON)."""
    c = H2Client(proxy.port(tls=tls), tls=tls)
    try:
        st = c.get(path, headers=list(headers), authority=authority,
                   scheme="https" if tls else "http")
    finally:
        c.close()
    assert st["reset"] is None and st["headers"], st
    assert header_value(st["headers"], ":status") == "200", st["headers"]
    return st["headers"], json.loads(bytes(st["data"]))


def h1_echo(proxy, tmp_path, *args, tls=False, path="/echo"):
    r = curl(proxy.url(path, tls=tls), *args, mode="h1", tmpdir=tmp_path)
    assert r.rc == 0 and r.status == 200, r
    return r, r.json()


def joined(values):
    return ", ".join(values)


@pytest.fixture(scope="module")
def switched_off_proxy(shared_backend, tls_cert, tmp_path_factory):
    """proxyd with x_forwarded_for: replace and via, x_forwarded_proto, location_rewrite off."""
    cert, key = tls_cert
    config = base_config(shared_backend, cert, key,
                         headers={"x_forwarded_for": "replace", "x_forwarded_proto": False,
                                  "via": False, "location_rewrite": False})
    with running(config, tmp_path_factory.mktemp("proxyd-off")) as p:
        yield p


@pytest.fixture(scope="module")
def forwarded_proxy(shared_backend, tls_cert, tmp_path_factory):
    """proxyd with headers.forwarded: append."""
    cert, key = tls_cert
    config = base_config(shared_backend, cert, key, headers={"forwarded": "append"})
    with running(config, tmp_path_factory.mktemp("proxyd-forwarded")) as p:
        yield p


# -- X-Forwarded-For / -Proto, Via ----------------------------------------------------------

def test_x_forwarded_for_appended_h2(shared_proxy):
    """X-Forwarded-For from an h2 client gets the client IP appended."""
    _, echo = h2_echo(shared_proxy, headers=[("x-forwarded-for", "10.0.0.1")])
    assert joined(echo_values(echo, "x-forwarded-for")) == "10.0.0.1, 127.0.0.1"


def test_x_forwarded_for_added_http11(shared_proxy, tmp_path):
    """Without an incoming X-Forwarded-For the backend gets exactly the client IP; with one,
    the IP is appended (HTTP/1.1 client)."""
    _, echo = h1_echo(shared_proxy, tmp_path)
    assert echo_values(echo, "x-forwarded-for") == ["127.0.0.1"]
    _, echo = h1_echo(shared_proxy, tmp_path, "-H", "X-Forwarded-For: 192.0.2.7, 10.1.1.1")
    assert joined(echo_values(echo, "x-forwarded-for")) == "192.0.2.7, 10.1.1.1, 127.0.0.1"


def test_x_forwarded_for_replace(switched_off_proxy, tmp_path):
    """x_forwarded_for: replace drops what the client sent and sends only the client IP."""
    _, echo = h2_echo(switched_off_proxy, headers=[("x-forwarded-for", "10.0.0.1")])
    assert echo_values(echo, "x-forwarded-for") == ["127.0.0.1"]
    _, echo = h1_echo(switched_off_proxy, tmp_path, "-H", "X-Forwarded-For: 10.9.9.9")
    assert echo_values(echo, "x-forwarded-for") == ["127.0.0.1"]


def test_forwarded_appended(forwarded_proxy, tmp_path):
    """forwarded: append adds 'for=<client>;proto=<scheme>' (RFC 7239) after what the client
    sent, over h2 and HTTP/1.1, on the TLS and the cleartext listener."""
    _, echo = h2_echo(forwarded_proxy, tls=True)
    assert echo_values(echo, "forwarded") == ["for=127.0.0.1;proto=https"]
    _, echo = h2_echo(forwarded_proxy, headers=[("forwarded", 'for="[2001:db8::1]";by=x')])
    assert echo_values(echo, "forwarded") == ['for="[2001:db8::1]";by=x, for=127.0.0.1;proto=http']
    _, echo = h1_echo(forwarded_proxy, tmp_path, "-H", "Forwarded: for=192.0.2.7",
                      "-H", "Forwarded: for=10.0.0.1", tls=True)
    assert echo_values(echo, "forwarded") == [
        "for=192.0.2.7, for=10.0.0.1, for=127.0.0.1;proto=https"]


def test_forwarded_off_by_default(shared_proxy, tmp_path):
    """By default proxyd adds no Forwarded and passes the client's untouched."""
    _, echo = h1_echo(shared_proxy, tmp_path)
    assert echo_values(echo, "forwarded") == []
    _, echo = h1_echo(shared_proxy, tmp_path, "-H", "Forwarded: for=192.0.2.7")
    assert echo_values(echo, "forwarded") == ["for=192.0.2.7"]


def test_x_forwarded_proto(shared_proxy, tmp_path):
    """X-Forwarded-Proto is https on the TLS listener and http on the cleartext one, for h2 and
    HTTP/1.1 clients alike."""
    _, echo = h2_echo(shared_proxy, tls=True)
    assert echo_values(echo, "x-forwarded-proto") == ["https"]
    _, echo = h2_echo(shared_proxy, tls=False)
    assert echo_values(echo, "x-forwarded-proto") == ["http"]
    _, echo = h1_echo(shared_proxy, tmp_path, tls=True)
    assert echo_values(echo, "x-forwarded-proto") == ["https"]
    _, echo = h1_echo(shared_proxy, tmp_path, tls=False)
    assert echo_values(echo, "x-forwarded-proto") == ["http"]


def test_via_on_requests(shared_proxy, tmp_path):
    """Via toward the backend: '2 proxyd' for h2, '1.1 proxyd' for HTTP/1.1, appended to an
    existing Via."""
    _, echo = h2_echo(shared_proxy)
    assert echo_values(echo, "via") == ["2 proxyd"]
    _, echo = h2_echo(shared_proxy, tls=True, headers=[("via", "1.0 edge")])
    assert joined(echo_values(echo, "via")) == "1.0 edge, 2 proxyd"
    _, echo = h1_echo(shared_proxy, tmp_path)
    assert echo_values(echo, "via") == ["1.1 proxyd"]
    _, echo = h1_echo(shared_proxy, tmp_path, "-H", "Via: 1.1 cdn")
    assert joined(echo_values(echo, "via")) == "1.1 cdn, 1.1 proxyd"


def test_via_on_responses(shared_proxy, tmp_path):
    """Responses get '1.1 proxyd' in Via, appended to the backend's own Via."""
    headers, _ = h2_echo(shared_proxy)
    assert header_value(headers, "via") == "1.1 proxyd"
    r = curl(shared_proxy.url("/set-headers?via=1.0%20app"), mode="h2c", tmpdir=tmp_path)
    assert r.status == 200, r
    assert joined(r.header_all("via")) == "1.0 app, 1.1 proxyd"
    r = curl(shared_proxy.url("/"), mode="h1", tmpdir=tmp_path)
    assert joined(r.header_all("via")) == "1.1 proxyd"


def test_switches_off(switched_off_proxy, tmp_path):
    """via: false and x_forwarded_proto: false add neither header, in either direction."""
    headers, echo = h2_echo(switched_off_proxy, tls=True)
    assert echo_values(echo, "via") == [] and echo_values(echo, "x-forwarded-proto") == []
    assert header_value(headers, "via") is None


# -- hop-by-hop ---------------------------------------------------------------------------

HOP_REQUEST_ARGS = ["-H", "Connection: keep-alive, X-Secret, x-other", "-H", "X-Secret: 1",
                    "-H", "X-Other: 2", "-H", "Keep-Alive: timeout=5",
                    "-H", "Proxy-Connection: keep-alive", "-H", "Upgrade: foo/1",
                    "-H", "TE: gzip", "-H", "X-Kept: yes"]


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_hop_by_hop_request_headers_removed_http11(shared_proxy, tmp_path, tls):
    """Connection, Keep-Alive, Proxy-Connection, Upgrade, TE and every header named in the
    client's Connection header never reach the backend; other headers do."""
    _, echo = h1_echo(shared_proxy, tmp_path, *HOP_REQUEST_ARGS, tls=tls)
    names = [k.lower() for k, _ in echo["headers"]]
    for gone in ("x-secret", "x-other", "keep-alive", "proxy-connection", "upgrade", "te"):
        assert gone not in names, (gone, echo["headers"])
    # the proxy may send its own "Connection: keep-alive" to the backend, nothing nominated
    for value in echo_values(echo, "connection"):
        assert "secret" not in value.lower() and "other" not in value.lower(), value
    assert echo_values(echo, "x-kept") == ["yes"]


def test_te_trailers_from_h2_not_sent_to_http11_backend(shared_proxy):
    """'te: trailers' (the one TE an h2 client may send) is not forwarded to the HTTP/1.1
    backend; ordinary headers are, in order."""
    _, echo = h2_echo(shared_proxy, headers=[("te", "trailers"), ("x-a", "1"), ("x-b", "2")])
    names = [k.lower() for k, _ in echo["headers"]]
    assert "te" not in names
    assert names.index("x-a") < names.index("x-b")


SET_HOP = ("/set-headers?connection=x-secret&x-secret=1&keep-alive=timeout%3D5"
           "&proxy-connection=keep-alive&upgrade=foo&x-kept=1")


def test_hop_by_hop_response_headers_removed_http11(shared_proxy, tmp_path):
    """Hop-by-hop response headers and those the backend named in Connection are removed before
    an HTTP/1.1 client sees the response."""
    r = curl(shared_proxy.url(SET_HOP), mode="h1", tmpdir=tmp_path)
    assert r.status == 200, r
    names = [k for k, _ in r.headers]
    assert "x-secret" not in names and "proxy-connection" not in names \
        and "upgrade" not in names, r.headers
    assert "timeout=5" not in r.header_all("keep-alive"), r.headers
    for value in r.header_all("connection"):
        assert "x-secret" not in value.lower(), r.headers
    assert r.header_all("x-kept") == ["1"]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_hop_by_hop_response_headers_removed_h2(shared_proxy, tls):
    """An h2 client gets no connection-specific header (the h2 library would reject the
    response) and no Connection-nominated header."""
    import h2.exceptions
    c = H2Client(shared_proxy.port(tls=tls), tls=tls)
    try:
        st = c.get(SET_HOP)
    except h2.exceptions.ProtocolError as exc:
        pytest.fail(f"proxy sent an invalid h2 response (connection-specific header?): {exc}")
    finally:
        c.close()
    names = [k for k, _ in st["headers"]]
    for gone in ("connection", "keep-alive", "proxy-connection", "upgrade", "x-secret",
                 "transfer-encoding"):
        assert gone not in names, st["headers"]
    assert header_value(st["headers"], "x-kept") == "1"


# -- cookies, authority -------------------------------------------------------------------

def test_h2_cookie_headers_joined(shared_proxy):
    """Several h2 cookie headers (nghttp sends them separately) reach the HTTP/1.1 backend as
    one Cookie header joined with '; '."""
    rc, out, err = run([require_tool("nghttp"), "-H", "cookie: a=1", "-H", "cookie: b=2",
                        "-H", "cookie: c=3", shared_proxy.url("/echo")], timeout=30)
    assert rc == 0, err
    echo = json.loads(out)
    assert echo_values(echo, "cookie") == ["a=1; b=2; c=3"]


def test_authority_becomes_host(shared_proxy):
    """:authority becomes Host; no pseudo-header reaches the backend; the request target is the
    :path."""
    _, echo = h2_echo(shared_proxy, authority="app.example:8443", path="/echo?x=1&y=%2F")
    assert echo_values(echo, "host") == ["app.example:8443"]
    assert not [k for k, _ in echo["headers"] if k.startswith(":")]
    assert echo["target"] == "/echo?x=1&y=%2F"
    assert echo["method"] == "GET" and echo["http_version"] == "1.1"


def test_http11_host_kept(shared_proxy, tmp_path):
    """An HTTP/1.1 client's Host header reaches the backend unchanged."""
    _, echo = h1_echo(shared_proxy, tmp_path, "-H", "Host: app.example:99")
    assert echo_values(echo, "host") == ["app.example:99"]


# -- Location -----------------------------------------------------------------------------

def redirect_path(to, code=302):
    return f"/redirect?to={quote(to, safe='')}&code={code}"


def h2_location(proxy, path, tls=True, authority=None):
    c = H2Client(proxy.port(tls=tls), tls=tls)
    try:
        st = c.get(path, authority=authority, scheme="https" if tls else "http")
    finally:
        c.close()
    assert st["headers"], st
    return header_value(st["headers"], ":status"), header_value(st["headers"], "location")


def test_location_rewritten_to_client_scheme_and_authority(shared_proxy, tmp_path):
    """/location-self through https://127.0.0.1:PORT: the backend's
    http://127.0.0.1:PORT/landing?q=1#frag reaches curl as https://127.0.0.1:PORT/... ."""
    r = curl(shared_proxy.url("/location-self", tls=True), mode="h2", tmpdir=tmp_path)
    assert r.status == 302, r
    auth = shared_proxy.authority(tls=True)
    assert r.header("location") == f"https://{auth}/landing?q=1#frag"


def test_location_rewritten_cleartext_and_http11(shared_proxy, tmp_path):
    """The rewrite uses the client's scheme and authority: http on the cleartext listener, and
    the Host an HTTP/1.1 client sent over TLS."""
    auth = shared_proxy.authority(tls=False)
    status, loc = h2_location(shared_proxy, "/location-self", tls=False)
    assert (status, loc) == ("302", f"http://{auth}/landing?q=1#frag")
    port = shared_proxy.port(tls=True)
    r = curl(f"https://localhost:{port}/location-self", mode="h1", tmpdir=tmp_path)
    assert r.status == 302, r
    assert r.header("location") == f"https://localhost:{port}/landing?q=1#frag"


def test_location_rewrite_ignores_port_and_case(shared_proxy):
    """Same host with another port, or in other letter case, is still rewritten (port ignored,
    case-insensitive); path, query and fragment are kept."""
    auth = shared_proxy.authority(tls=True)
    status, loc = h2_location(shared_proxy, redirect_path("http://127.0.0.1:1/p/q?x=1&z#y"))
    assert (status, loc) == ("302", f"https://{auth}/p/q?x=1&z#y")
    port = shared_proxy.port(tls=True)
    status, loc = h2_location(shared_proxy, redirect_path("http://LOCALHOST/up", 301),
                              authority=f"localhost:{port}")
    assert (status, loc) == ("301", f"https://localhost:{port}/up")


def test_location_without_client_host_never_names_the_backend(shared_proxy):
    """An HTTP/1.0 request without Host (the one kind of request with no authority): the
    backend's redirect to itself reaches the client as the path alone, not with the backend's
    own address (which it leaked before)."""
    out = raw_http1(shared_proxy.port(tls=False),
                    b"GET /location-self HTTP/1.0\r\n\r\n", until_close=True)
    head = out.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 302") or head.startswith("http/1.0 302"), head
    assert "\r\nlocation: /landing?q=1#frag" in head, head


@pytest.mark.parametrize("to", ["http://other.example/x?y=1", "https://example.org:8443/",
                                "/relative/path?a=b#c", "landing"])
def test_location_other_host_or_relative_left_alone(shared_proxy, to):
    """A Location naming another host, or a relative one, reaches the client verbatim."""
    status, loc = h2_location(shared_proxy, redirect_path(to))
    assert (status, loc) == ("302", to)


def test_location_rewrite_off(switched_off_proxy):
    """headers.location_rewrite: false forwards the backend's Location unchanged."""
    auth = switched_off_proxy.authority(tls=True)
    status, loc = h2_location(switched_off_proxy, "/location-self")
    assert (status, loc) == ("302", f"http://{auth}/landing?q=1#frag")


# -- trailers, 1xx ------------------------------------------------------------------------

def test_trailers_reach_h2_client(shared_proxy):
    """Chunked trailers from the backend arrive as an h2 trailer HEADERS frame (nghttp -v)."""
    rc, trace, out, err = nghttp(shared_proxy.url("/trailers", tls=True))
    assert rc == 0, out[-2000:] + err
    sid = trace.stream("/trailers")
    assert trace.status(sid) == 200
    assert trace.trailers(sid) == [[("x-trailer", "yes")]], trace.blocks.get(sid)
    assert "body before trailers" in out


def test_early_hints_forwarded_to_h2(shared_proxy):
    """A 103 Early Hints from the backend reaches the h2 client before the 200 (nghttp -v)."""
    rc, trace, out, err = nghttp("-n", shared_proxy.url("/early-hints"))
    assert rc == 0, out[-2000:] + err
    sid = trace.stream("/early-hints")
    info = trace.informational(sid)
    assert len(info) == 1, trace.blocks.get(sid)
    assert (":status", "103") in info[0]
    assert ("link", "</style.css>; rel=preload") in info[0]
    assert trace.status(sid) == 200


def test_early_hints_forwarded_to_http11(shared_proxy, tmp_path):
    """HTTP/1.1 allows 1xx too: curl sees the 103 block, then the 200."""
    r = curl(shared_proxy.url("/early-hints"), mode="h1", tmpdir=tmp_path)
    assert r.rc == 0, r
    assert [status for status, _ in r.blocks] == [103, 200], r.blocks
    assert ("link", "</style.css>; rel=preload") in r.blocks[0][1]
