"""Table-driven tests of proxyd.headers: hop-by-hop removal, request and response translation."""

from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st

from proxyd.headers import (
    HOP_BY_HOP,
    backend_request_headers,
    client_response_headers,
    TRUSTED,
    forwarded_element,
    request_trailers,
    spellings,
    strip_hop_by_hop,
)

ALL_ON = SimpleNamespace(x_forwarded_for="append", x_forwarded_proto=True, via=True, location_rewrite=True,
                         forwarded="off", client_cert_header=None)
ALL_OFF = SimpleNamespace(x_forwarded_for="off", x_forwarded_proto=False, via=False, location_rewrite=False,
                          forwarded="off", client_cert_header=None)


def policy(**changes):
    """ALL_OFF with some attributes changed, so each test sees only the rule it checks."""
    return SimpleNamespace(**{**vars(ALL_OFF), **changes})


def request(headers, *, pol=ALL_OFF, client_ip=b"192.0.2.7", via_version=b"2", tls=True,
            keep_te_trailers=False, client_subject=None):
    """Call backend_request_headers with the test defaults."""
    return backend_request_headers(
        headers, client_ip=client_ip, via_version=via_version, tls=tls, policy=pol,
        keep_te_trailers=keep_te_trailers, client_subject=client_subject,
    )


def response(headers, *, pol=ALL_OFF, via_version=b"1.1", backend_host=b"app.internal:8081",
             scheme=b"https", authority=b"example.com", keep_te_trailers=False):
    """Call client_response_headers with the test defaults."""
    return client_response_headers(
        headers, via_version=via_version, policy=pol, backend_host=backend_host, scheme=scheme,
        authority=authority, keep_te_trailers=keep_te_trailers,
    )


# --- strip_hop_by_hop ----------------------------------------------------------------------------

def test_hop_by_hop_set():
    """The set is DESIGN §4's list plus http2-settings."""
    assert HOP_BY_HOP == {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
        b"http2-settings",
    }


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_each_hop_by_hop_removed(name):
    """Every hop-by-hop header is removed; neighbours keep their order."""
    headers = [(b"a", b"1"), (name, b"trailers"), (b"b", b"2")]
    assert strip_hop_by_hop(headers) == [(b"a", b"1"), (b"b", b"2")]


@pytest.mark.parametrize(
    "connection_values, expected_names",
    [
        ([b"x-foo"], [b"keep", b"x-bar", b"x-baz"]),
        ([b"x-foo, x-bar"], [b"keep", b"x-baz"]),
        ([b"X-Foo,X-BAR"], [b"keep", b"x-baz"]),
        ([b"  x-foo ,\tx-bar\t, ,, "], [b"keep", b"x-baz"]),
        ([b"x-foo", b"x-baz"], [b"keep", b"x-bar"]),  # several Connection headers
        ([b"close"], [b"keep", b"x-foo", b"x-bar", b"x-foo", b"x-baz"]),
        ([b"keep-alive, Upgrade"], [b"keep", b"x-foo", b"x-bar", b"x-foo", b"x-baz"]),
        ([b"", b","], [b"keep", b"x-foo", b"x-bar", b"x-foo", b"x-baz"]),
        ([b"keep, x-foo, x-bar, x-baz"], []),
    ],
)
def test_connection_nominated(connection_values, expected_names):
    """Headers named in Connection (comma lists, any case, spaces, several headers) are removed."""
    headers = [(b"keep", b"1"), (b"x-foo", b"f"), (b"x-bar", b"b"), (b"x-foo", b"f2"), (b"x-baz", b"z")]
    headers += [(b"connection", v) for v in connection_values]
    assert [n for n, _ in strip_hop_by_hop(headers)] == expected_names


def test_connection_nominated_before_connection_header():
    """A nominated header is removed even when it comes before the Connection header."""
    headers = [(b"x-foo", b"1"), (b"a", b"2"), (b"connection", b"x-foo")]
    assert strip_hop_by_hop(headers) == [(b"a", b"2")]


@pytest.mark.parametrize(
    "te_value, keep, kept",
    [
        (b"trailers", False, False),
        (b"trailers", True, True),
        (b"Trailers", True, True),
        (b" TRAILERS ", True, True),
        (b"trailers, deflate", True, False),
        (b"gzip", True, False),
        (b"", True, False),
    ],
)
def test_te_trailers(te_value, keep, kept):
    """``te: trailers`` survives only with keep_te_trailers, normalised to ``trailers``."""
    out = strip_hop_by_hop([(b"a", b"1"), (b"te", te_value)], keep_te_trailers=keep)
    assert out == ([(b"a", b"1"), (b"te", b"trailers")] if kept else [(b"a", b"1")])


def test_te_trailers_kept_once_even_if_nominated():
    """Duplicate TE headers give one ``te: trailers``; naming te in Connection does not drop it."""
    headers = [(b"te", b"trailers"), (b"connection", b"te"), (b"te", b"trailers")]
    assert strip_hop_by_hop(headers, keep_te_trailers=True) == [(b"te", b"trailers")]


def test_strip_keeps_identity_and_input():
    """Untouched tuples are reused; the input list is not modified."""
    headers = [(b"a", b"1"), (b"connection", b"a"), (b"b", b"2")]
    copy = list(headers)
    out = strip_hop_by_hop(headers)
    assert headers == copy
    assert out == [(b"b", b"2")] and out[0] is headers[2]


NAMES = st.sampled_from(
    sorted(HOP_BY_HOP) + [b"x-a", b"x-b", b"host", b"cookie", b"X-A", b"accept"]
)
CONNECTION_VALUE = st.lists(
    st.sampled_from([b"x-a", b"X-B", b" x-b ", b"close", b"keep-alive", b"", b"te", b"Accept"]),
    max_size=4,
).map(b",".join)


@given(
    headers=st.lists(
        st.one_of(
            st.tuples(NAMES, st.binary(max_size=12)),
            st.tuples(st.just(b"connection"), CONNECTION_VALUE),
        ),
        max_size=12,
    ),
    keep=st.booleans(),
)
def test_strip_never_leaves_hop_by_hop(headers, keep):
    """No output header is hop-by-hop or Connection-nominated (except ``te: trailers`` when kept)."""
    nominated = set()
    for name, value in headers:
        if name == b"connection":
            nominated.update(t.strip(b" \t").lower() for t in value.split(b","))
    out = strip_hop_by_hop(headers, keep_te_trailers=keep)
    for name, value in out:
        if name == b"te":
            assert keep and value == b"trailers"
        else:
            assert name not in HOP_BY_HOP
            assert name not in nominated
    # everything else is kept in order
    expected = [h for h in headers if h[0] not in HOP_BY_HOP and h[0] not in nominated]
    assert [h for h in out if h[0] != b"te"] == expected


# --- backend_request_headers: Host, cookies, hop-by-hop ------------------------------------------

@pytest.mark.parametrize("headers", [
    [(b"accept", b"*/*")],
    [(b"accept", b"*/*"), (b"host", b"other")],
    [(b"host", b"example.com"), (b"host", b"x"), (b"accept", b"*/*")],
])
def test_request_host_is_left_to_the_writers(headers):
    """No Host field is ever forwarded as a field: each backend writer sends the request's
    authority itself (HTTP/1.1 Host first, HTTP/2 :authority)."""
    assert request(headers) == [(b"accept", b"*/*")]


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([(b"cookie", b"a=1")], [(b"cookie", b"a=1")]),
        ([(b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2"), (b"cookie", b"c=3")],
         [(b"cookie", b"a=1; b=2; c=3"), (b"x", b"y")]),
        ([(b"x", b"y"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
         [(b"x", b"y"), (b"cookie", b"a=1; b=2")]),
    ],
)
def test_request_cookie_join(headers, expected):
    """Several cookie headers become one, joined with '; ' in order at the first one's place."""
    assert request(headers) == expected


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_request_hop_by_hop(name):
    """Each hop-by-hop header is dropped from requests."""
    assert request([(name, b"x"), (b"a", b"1")]) == [(b"a", b"1")]


def test_request_connection_nominated_everything():
    """Connection-nominated headers are removed before policy: cookie, host, XFF, XFP, Via."""
    headers = [
        (b"cookie", b"a=1"), (b"x-forwarded-for", b"10.0.0.1"), (b"via", b"1.0 old"),
        (b"x-custom", b"1"), (b"x-forwarded-proto", b"http"), (b"host", b"h"), (b"cookie", b"b=2"),
        (b"connection", b"Cookie, X-Forwarded-For , via,x-custom, x-forwarded-proto, host"),
        (b"accept", b"*/*"),
    ]
    assert request(headers, pol=ALL_OFF) == [(b"accept", b"*/*")]
    assert request(headers, pol=ALL_ON, tls=False, via_version=b"1.1") == [
        (b"accept", b"*/*"), (b"x-forwarded-for", b"192.0.2.7"),
        (b"x-forwarded-proto", b"http"), (b"via", b"1.1 proxyd"),
    ]


@pytest.mark.parametrize(
    "te_value, keep, expected_te",
    [(b"trailers", True, [(b"te", b"trailers")]), (b"trailers", False, []), (b"gzip", True, [])],
)
def test_request_te(te_value, keep, expected_te):
    """``te: trailers`` reaches the backend only with keep_te_trailers (h2 backends)."""
    out = request([(b"te", te_value)], keep_te_trailers=keep)
    assert out == expected_te


# --- backend_request_headers: X-Forwarded-*, Via -------------------------------------------------

@pytest.mark.parametrize(
    "mode, client_xff, expected",
    [
        ("append", [], [(b"x-forwarded-for", b"192.0.2.7")]),
        ("append", [b"10.0.0.1"], [(b"x-forwarded-for", b"10.0.0.1, 192.0.2.7")]),
        ("append", [b"10.0.0.1, 10.0.0.2", b"10.0.0.3"],
         [(b"x-forwarded-for", b"10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7")]),
        ("append", [b""], [(b"x-forwarded-for", b"192.0.2.7")]),
        ("replace", [], [(b"x-forwarded-for", b"192.0.2.7")]),
        ("replace", [b"10.0.0.1"], [(b"x-forwarded-for", b"192.0.2.7")]),
        ("replace", [b"10.0.0.1", b"10.0.0.2"], [(b"x-forwarded-for", b"192.0.2.7")]),
        ("off", [], []),
        ("off", [b"10.0.0.1"], [(b"x-forwarded-for", b"10.0.0.1")]),
        ("off", [b"10.0.0.1", b"10.0.0.2"], [(b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")]),
    ],
)
def test_request_x_forwarded_for(mode, client_xff, expected):
    """XFF: append to all client values, replace them, or leave them alone."""
    headers = [(b"x-forwarded-for", v) for v in client_xff] + [(b"accept", b"*/*")]
    out = request(headers, pol=policy(x_forwarded_for=mode))
    assert [h for h in out if h[0] == b"x-forwarded-for"] == expected
    assert (b"accept", b"*/*") in out and b"host" not in [n for n, _ in out]


@pytest.mark.parametrize(
    "mode, client_xff, expected",
    [("append", [], []), ("append", [b"10.0.0.1"], [(b"x-forwarded-for", b"10.0.0.1")]), ("replace", [b"1"], [])],
)
def test_request_x_forwarded_for_without_client_ip(mode, client_xff, expected):
    """An empty client_ip (e.g. a unix socket listener) adds nothing."""
    headers = [(b"x-forwarded-for", v) for v in client_xff]
    out = request(headers, pol=policy(x_forwarded_for=mode), client_ip=b"")
    assert [h for h in out if h[0] == b"x-forwarded-for"] == expected


@pytest.mark.parametrize(
    "enabled, tls, client_xfp, expected",
    [
        (True, True, [], [b"https"]),
        (True, False, [], [b"http"]),
        (True, True, [b"http"], [b"https"]),
        (True, False, [b"https", b"https"], [b"http"]),
        (False, True, [], []),
        (False, True, [b"http"], [b"http"]),
    ],
)
def test_request_x_forwarded_proto(enabled, tls, client_xfp, expected):
    """XFP is set from the listener's TLS, replacing client values; disabled, client values pass."""
    headers = [(b"x-forwarded-proto", v) for v in client_xfp]
    out = request(headers, pol=policy(x_forwarded_proto=enabled), tls=tls)
    assert [v for n, v in out if n == b"x-forwarded-proto"] == expected


@pytest.mark.parametrize(
    "enabled, via_version, client_via, expected",
    [
        (True, b"2", [], [b"2 proxyd"]),
        (True, b"1.1", [], [b"1.1 proxyd"]),
        (True, b"3.1", [b"1.1 a"], [b"1.1 a, 3.1 proxyd"]),
        (True, b"2", [b"1.0 a", b"1.1 b, 1.1 c"], [b"1.0 a, 1.1 b, 1.1 c, 2 proxyd"]),
        (False, b"2", [b"1.1 a"], [b"1.1 a"]),
        (False, b"2", [], []),
    ],
)
def test_request_via(enabled, via_version, client_via, expected):
    """Via: our hop is appended to existing values as one header."""
    headers = [(b"via", v) for v in client_via]
    out = request(headers, pol=policy(via=enabled), via_version=via_version)
    assert [v for n, v in out if n == b"via"] == expected


def test_request_full_translation():
    """All rules together, with order: others, XFF, XFP, Via (no Host: the writers add it)."""
    headers = [
        (b"user-agent", b"curl"), (b"cookie", b"a=1"), (b"connection", b"keep-alive, x-trace"),
        (b"x-trace", b"1"), (b"upgrade", b"h2c"), (b"http2-settings", b"AAA"), (b"cookie", b"b=2"),
        (b"x-forwarded-for", b"10.0.0.1"), (b"via", b"1.1 edge"), (b"x-forwarded-proto", b"http"),
        (b"host", b"ignored"), (b"accept", b"*/*"),
    ]
    out = request(headers, pol=ALL_ON, via_version=b"1.1", tls=True)
    assert out == [
        (b"user-agent", b"curl"), (b"cookie", b"a=1; b=2"),
        (b"accept", b"*/*"), (b"x-forwarded-for", b"10.0.0.1, 192.0.2.7"),
        (b"x-forwarded-proto", b"https"), (b"via", b"1.1 edge, 1.1 proxyd"),
    ]


@pytest.mark.parametrize(
    "client_ip, tls, expected",
    [
        (b"192.0.2.7", True, b"for=192.0.2.7;proto=https"),
        (b"192.0.2.7", False, b"for=192.0.2.7;proto=http"),
        (b"::1", True, b'for="[::1]";proto=https'),
        (b"2001:db8::7", False, b'for="[2001:db8::7]";proto=http'),
        (b"::ffff:192.0.2.7", True, b'for="[::ffff:192.0.2.7]";proto=https'),
        (b"", True, b"for=unknown;proto=https"),          # a Unix socket client
        (b"fe80::1%eth0", True, b'for="[fe80::1]";proto=https'),  # a link-local peer
        # not an IP literal: never written (it could hold quotes, commas, semicolons)
        (b"some host", False, b"for=unknown;proto=http"),
        (b'a"b\\c', False, b"for=unknown;proto=http"),
        (b'::1%"];proto=https,for=6.6.6.6;x="', False, b'for="[::1]";proto=http'),
        (b'1.2.3.4%x"', False, b"for=unknown;proto=http"),
    ],
)
def test_forwarded_element(client_ip, tls, expected):
    """RFC 7239: IPv4 a bare token, IPv6 bracketed and quoted, unknown clients ``unknown``;
    only an IP literal is written (a scoped IPv6 address without its scope)."""
    assert forwarded_element(client_ip, tls) == expected


@pytest.mark.parametrize(
    "mode, client_ip, client_fwd, expected",
    [
        ("append", b"192.0.2.7", [], [b"for=192.0.2.7;proto=https"]),
        ("append", b"::1", [], [b'for="[::1]";proto=https']),
        ("append", b"192.0.2.7", [b"for=10.0.0.1"],
         [b"for=10.0.0.1, for=192.0.2.7;proto=https"]),
        ("append", b"192.0.2.7", [b'for="[2001:db8::1]";by=x, for=10.0.0.2', b"for=10.0.0.3"],
         [b'for="[2001:db8::1]";by=x, for=10.0.0.2, for=10.0.0.3, for=192.0.2.7;proto=https']),
        ("append", b"192.0.2.7", [b""], [b"for=192.0.2.7;proto=https"]),
        ("append", b"", [b"for=10.0.0.1"], [b"for=10.0.0.1, for=unknown;proto=https"]),
        ("replace", b"192.0.2.7", [], [b"for=192.0.2.7;proto=https"]),
        ("replace", b"::1", [b"for=10.0.0.1", b"for=evil"], [b'for="[::1]";proto=https']),
        ("off", b"192.0.2.7", [], []),
        ("off", b"192.0.2.7", [b"for=10.0.0.1", b"for=10.0.0.2"],
         [b"for=10.0.0.1", b"for=10.0.0.2"]),
    ],
)
def test_request_forwarded(mode, client_ip, client_fwd, expected):
    """Forwarded is handled like XFF: appended to the client's values, replacing them, or off."""
    headers = [(b"forwarded", v) for v in client_fwd] + [(b"accept", b"*/*")]
    out = request(headers, pol=policy(forwarded=mode), client_ip=client_ip)
    assert [v for n, v in out if n == b"forwarded"] == expected
    assert (b"accept", b"*/*") in out


@pytest.mark.parametrize("client_fwd", [
    b'for=6.6.6.6;by="',            # an unterminated quoted-string would swallow proxyd's element
    b"for",                         # a pair without a value
    b"for=a b",                     # a space inside an element
    b'for="a"b',                    # text after a quoted-string
    b"=x",                          # a pair without a name
    b'for=1.2.3.4"',                # a quote in a token
])
def test_request_forwarded_append_drops_a_value_that_is_not_rfc7239(client_fwd):
    """append adds proxyd's element only to client values that parse as RFC 7239; any other
    value is dropped (replace), so proxyd's element is always a separate, parseable element."""
    headers = [(b"forwarded", b"for=10.0.0.1"), (b"forwarded", client_fwd)]
    out = request(headers, pol=policy(forwarded="append"), tls=False)
    assert [v for n, v in out if n == b"forwarded"] == [b"for=192.0.2.7;proto=http"]


@pytest.mark.parametrize("client_fwd", [
    b'for="[2001:db8::1]:80";by=_hidden;proto=https;host="a.example:8443"',
    b"for=10.0.0.1 , for=10.0.0.2,,for=unknown",
    b'for="a\\"b";;by=x',  # an escaped quote; empty pairs and elements are allowed
])
def test_request_forwarded_append_keeps_rfc7239_values(client_fwd):
    """Valid RFC 7239 values (quoted-strings with escapes, OWS around commas) are appended to."""
    out = request([(b"forwarded", client_fwd)], pol=policy(forwarded="append"), tls=False)
    assert [v for n, v in out if n == b"forwarded"] == [
        client_fwd + b", for=192.0.2.7;proto=http"]


@pytest.mark.parametrize("client_ip, xff, fwd", [
    (b"fe80::1%eth0", b"fe80::1", b'for="[fe80::1]";proto=http'),
    (b'::1%"];proto=https,for=6.6.6.6;x="', b"::1", b'for="[::1]";proto=http'),
    (b"6.6.6.6, 7.7.7.7", None, b"for=unknown;proto=http"),
    (b"unix:/run/x", None, b"for=unknown;proto=http"),
])
def test_request_client_address_must_be_an_ip_literal(client_ip, xff, fwd):
    """X-Forwarded-For and Forwarded get the client address only as a plain IP literal (a
    scoped one loses its scope): anything else could add elements to either list."""
    pol = policy(x_forwarded_for="replace", forwarded="replace")
    out = request([], pol=pol, client_ip=client_ip, tls=False)
    assert [v for n, v in out if n == b"x-forwarded-for"] == ([] if xff is None else [xff])
    assert [v for n, v in out if n == b"forwarded"] == [fwd]


def test_request_forwarded_nominated_by_connection():
    """A client's Forwarded named in Connection is dropped; proxyd's own element remains."""
    headers = [(b"connection", b"forwarded"), (b"forwarded", b"for=evil")]
    out = request(headers, pol=policy(forwarded="append"), tls=False)
    assert out == [(b"forwarded", b"for=192.0.2.7;proto=http")]


CERT = policy(client_cert_header=b"x-client-subject")


@pytest.mark.parametrize(
    "pol, client_headers, subject, expected",
    [
        # a verified certificate: its subject, whatever the client sent
        (CERT, [], b"CN=alice", [(b"x-client-subject", b"CN=alice")]),
        (CERT, [(b"x-client-subject", b"CN=admin")], b"CN=alice",
         [(b"x-client-subject", b"CN=alice")]),
        # no certificate: a forged header never passes
        (CERT, [(b"x-client-subject", b"CN=admin"), (b"x-client-subject", b"CN=root")], None,
         []),
        (CERT, [(b"connection", b"x-client-subject"), (b"x-client-subject", b"CN=admin")],
         None, []),
        # the feature off: the header is an ordinary one, and no subject is added
        (ALL_OFF, [(b"x-client-subject", b"CN=admin")], b"CN=alice",
         [(b"x-client-subject", b"CN=admin")]),
    ],
)
def test_request_client_cert_header(pol, client_headers, subject, expected):
    """The client-certificate header comes only from the verified certificate."""
    out = request([*client_headers, (b"accept", b"*/*")], pol=pol, client_subject=subject)
    assert [h for h in out if h[0] == b"x-client-subject"] == expected
    assert (b"accept", b"*/*") in out


def test_spellings():
    """Each ``-`` or ``_`` either way, the name itself left out; no separator, no spelling."""
    assert spellings(b"x-forwarded-for") == {b"x_forwarded_for", b"x-forwarded_for",
                                             b"x_forwarded-for"}
    assert spellings(b"x_a") == {b"x-a"} and spellings(b"forwarded") == frozenset()
    assert len(spellings(b"a-b-c-d-e")) == 2 ** 4 - 1


ALL_TRUSTED = policy(x_forwarded_for="replace", x_forwarded_proto=True, forwarded="replace",
                     client_cert_header=b"x-client-subject")


@pytest.mark.parametrize("pol", [
    ALL_TRUSTED,
    policy(client_cert_header=b"x-client-subject"),  # XFF/XFP/Forwarded off: still dropped
])
@pytest.mark.parametrize("name", [
    b"x_client_subject", b"x-client_subject", b"x_forwarded_for", b"x-forwarded_for",
    b"x_forwarded_proto", b"x_forwarded-proto",
])
def test_request_underscore_spellings_of_trusted_names_dropped(pol, name):
    """CGI/WSGI/PHP backends read ``_`` as ``-`` (HTTP_X_CLIENT_SUBJECT): a client field
    spelled like a trusted name never reaches the backend, whatever the switches say."""
    out = request([(name, b"CN=root"), (b"accept", b"*/*")], pol=pol)
    assert name not in [n for n, _ in out] and (b"accept", b"*/*") in out


def test_request_other_underscore_names_pass():
    """Names proxyd does not own pass with their underscores (as in nghttpx and HAProxy)."""
    headers = [(b"x_custom_id", b"1"), (b"x_forwarded_host", b"h"), (b"x_real_ip", b"9.9.9.9")]
    assert request(headers, pol=ALL_TRUSTED)[:3] == headers


def test_request_cert_header_configured_with_underscores():
    """A client-certificate header configured as ``x_client_subject``: its dash spelling is
    the same CGI variable, so a client's ``x-client-subject`` is dropped too."""
    pol = policy(client_cert_header=b"x_client_subject")
    out = request([(b"x-client-subject", b"CN=root"), (b"x_client_subject", b"CN=root")],
                  pol=pol, client_subject=b"CN=alice")
    assert out == [(b"x_client_subject", b"CN=alice")]


def test_request_long_cert_header_spellings_checked_per_field():
    """A name with too many separators to enumerate still has all its spellings dropped."""
    name = b"x-a-b-c-d-e-f-g-h-i-j"
    pol = policy(client_cert_header=name)
    forged = [(b"x_a_b_c_d_e_f_g_h_i_j", b"f"), (b"x-a-b-c-d-e-f-g-h-i_j", b"f"), (name, b"f"),
              (b"x_other", b"ok")]
    assert request(forged, pol=pol, client_subject=b"CN=a") == [(b"x_other", b"ok"),
                                                                (name, b"CN=a")]


@pytest.mark.parametrize("cert", [None, b"x-client-subject", b"x_client_subject"])
def test_request_trailers_drop_trusted_names(cert):
    """No trusted name, in any spelling, comes from a client's trailers; others pass in order."""
    forged = [(n, b"x") for n in TRUSTED] + [(b"x_forwarded_for", b"x"),
                                             (b"x-forwarded_proto", b"x")]
    if cert is not None:
        forged += [(b"x-client-subject", b"CN=root"), (b"x_client_subject", b"CN=root")]
    kept = [(b"checksum", b"abc"), (b"x_custom", b"1"), (b"x-client-subject-hash", b"1")]
    assert request_trailers([kept[0], *forged, *kept[1:]], cert) == kept


def test_untrusted_clients_trailers_lose_forwarding_fields():
    """The forwarding fields an untrusted client loses from its head (X-Forwarded-Host, X-Real-IP
    ..., any spelling) cannot come in its trailers either; a trusted client's pass."""
    forwarding = [(b"x-forwarded-host", b"evil"), (b"x_real_ip", b"6.6.6.6"),
                  (b"x-forwarded-port", b"1")]
    kept = [(b"checksum", b"abc")]
    assert request_trailers(kept + forwarding, None, untrusted=True) == kept
    assert request_trailers(kept + forwarding, None) == kept + forwarding


@pytest.mark.parametrize("name", [b"transfer_encoding", b"content_length", b"keep_alive",
                                  b"proxy_connection", b"http2_settings"])
def test_request_underscore_spellings_of_framing_names_dropped(name):
    """CGI-style backends (Unicorn, Puma before 5.0.3, Starman) read ``transfer_encoding`` as
    Transfer-Encoding and frame the body by it: a client field spelled like a framing or
    hop-by-hop name never reaches the backend, in the head or in trailers."""
    out = request([(name, b"chunked"), (b"accept", b"*/*")], pol=ALL_TRUSTED)
    assert name not in [n for n, _ in out] and (b"accept", b"*/*") in out
    assert request_trailers([(name, b"chunked"), (b"checksum", b"abc")], None) == [
        (b"checksum", b"abc")]


def test_request_all_new_headers_order():
    """Forwarded and the client-certificate header come after XFF, XFP and Via."""
    pol = policy(x_forwarded_for="append", x_forwarded_proto=True, via=True, forwarded="append",
                 client_cert_header=b"x-client-subject")
    out = request([(b"x-client-subject", b"forged"), (b"accept", b"*/*")], pol=pol,
                  client_ip=b"::1", client_subject=b"CN=alice,O=Example")
    assert out == [
        (b"accept", b"*/*"), (b"x-forwarded-for", b"::1"), (b"x-forwarded-proto", b"https"),
        (b"via", b"2 proxyd"), (b"forwarded", b'for="[::1]";proto=https'),
        (b"x-client-subject", b"CN=alice,O=Example"),
    ]


def test_request_input_untouched():
    """The caller's list is not modified."""
    headers = [(b"cookie", b"a"), (b"cookie", b"b"), (b"host", b"h"), (b"connection", b"x")]
    copy = list(headers)
    request(headers, pol=ALL_ON)
    assert headers == copy


# --- client_response_headers ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_response_hop_by_hop(name):
    """Each hop-by-hop header is dropped from responses."""
    assert response([(b"server", b"x"), (name, b"v")]) == [(b"server", b"x")]


def test_response_connection_nominated():
    """Headers named in the backend's Connection header are dropped, before or after it."""
    headers = [(b"x-a", b"1"), (b"connection", b"X-A, close"), (b"set-cookie", b"s=1"), (b"x-b", b"2")]
    assert response(headers) == [(b"set-cookie", b"s=1"), (b"x-b", b"2")]


@pytest.mark.parametrize(
    "enabled, via_version, backend_via, expected",
    [
        (True, b"1.1", [], [b"1.1 proxyd"]),
        (True, b"2", [], [b"2 proxyd"]),
        (True, b"1.1", [b"1.1 cache"], [b"1.1 cache, 1.1 proxyd"]),
        (True, b"1.1", [b"1.0 a", b"1.1 b"], [b"1.0 a, 1.1 b, 1.1 proxyd"]),
        (False, b"1.1", [b"1.1 cache"], [b"1.1 cache"]),
        (False, b"1.1", [], []),
    ],
)
def test_response_via(enabled, via_version, backend_via, expected):
    """Via on responses names the backend's protocol version, appended as one header."""
    out = response([(b"via", v) for v in backend_via], pol=policy(via=enabled), via_version=via_version)
    assert [v for n, v in out if n == b"via"] == expected


@pytest.mark.parametrize(
    "enabled, name, value, expected",
    [
        (True, b"location", b"http://app.internal:8081/login?x=1", b"https://example.com/login?x=1"),
        (True, b"location", b"http://APP.internal/", b"https://example.com/"),
        (True, b"location", b"/relative", b"/relative"),
        (True, b"location", b"http://other.example/", b"http://other.example/"),
        (True, b"content-location", b"http://app.internal/doc.en", b"https://example.com/doc.en"),
        (False, b"location", b"http://app.internal:8081/login", b"http://app.internal:8081/login"),
        (True, b"refresh", b"0; url=http://app.internal/", b"0; url=http://app.internal/"),
    ],
)
def test_response_location_rewrite(enabled, name, value, expected):
    """Location and Content-Location pointing at the backend are rewritten when enabled."""
    headers = [(b"server", b"s"), (name, value), (b"x", b"y")]
    out = response(headers, pol=policy(location_rewrite=enabled))
    assert out == [(b"server", b"s"), (name, expected), (b"x", b"y")]
    if expected == value:
        assert out[1] is headers[1]


def test_response_te_trailers():
    """The TE rule is the same as for requests."""
    assert response([(b"te", b"trailers")]) == []
    assert response([(b"te", b"trailers")], keep_te_trailers=True) == [(b"te", b"trailers")]


def test_response_full_translation():
    """All response rules together; set-cookie stays several headers."""
    headers = [
        (b"content-type", b"text/html"), (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"), (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"), (b"location", b"http://app.internal:8081/next"), (b"via", b"1.0 old"),
    ]
    out = response(headers, pol=ALL_ON, authority=b"example.com:8443")
    assert out == [
        (b"content-type", b"text/html"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
        (b"location", b"https://example.com:8443/next"), (b"via", b"1.0 old, 1.1 proxyd"),
    ]



def test_response_memo_follows_every_input():
    """The same backend head translated again comes from a memo: it must still follow each input
    the translation reads (the request's authority and scheme when Location is rewritten, the
    backend's version for Via, the Via switch), and each caller gets a list of its own."""
    headers = [(b"server", b"s"), (b"location", b"http://app.internal:8081/next")]
    on = policy(location_rewrite=True)
    for _ in range(2):  # the second round is answered from the memo
        assert response(headers, pol=on, authority=b"a.example")[1] == (
            b"location", b"https://a.example/next")
        assert response(headers, pol=on, authority=b"b.example", scheme=b"http")[1] == (
            b"location", b"http://b.example/next")
        assert response(headers, pol=policy(via=True), via_version=b"2")[-1] == (
            b"via", b"2 proxyd")
        assert response(headers, pol=policy(via=True))[-1] == (b"via", b"1.1 proxyd")
        assert response(headers)[1] == (b"location", b"http://app.internal:8081/next")
    first = response(headers)
    first.append((b"x-mine", b"1"))
    assert response(headers) == headers


@given(st.lists(st.tuples(st.sampled_from([b"connection", b"keep-alive", b"via", b"location",
                                           b"x-a", b"x-b", b"te", b"server"]),
                          st.sampled_from([b"x-a", b"close", b"trailers", b"1.0 p",
                                           b"http://app.internal:8081/p", b"v"])),
                max_size=6),
       st.booleans(), st.booleans(), st.sampled_from([b"a.example", b"b.example"]))
def test_response_memo_answers_what_the_rules_answer(headers, via, rewrite, authority):
    """Asked twice (the second time from the memo), the translation is the same as the rules
    computed afresh (:func:`proxyd.headers._response`, the memo's pure function)."""
    from proxyd.headers import _response

    pol = policy(via=via, location_rewrite=rewrite)
    fresh = _response(headers, b"1.1", pol, b"app.internal:8081", b"https", authority, False,
                      None, b"")
    assert response(headers, pol=pol, authority=authority) == fresh
    assert response(headers, pol=pol, authority=authority) == fresh


# --- helpers -------------------------------------------------------------------------------------
