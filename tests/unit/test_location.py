"""Table-driven tests of proxyd.location.rewrite_location (DESIGN §4, Location rewrite)."""

import pytest
from hypothesis import given, strategies as st

from proxyd.location import rewrite_location

BACKEND = b"app.internal:8081"
SCHEME = b"https"
AUTHORITY = b"example.com"


def rw(value, backend_host=BACKEND, scheme=SCHEME, authority=AUTHORITY):
    """Call rewrite_location with the test defaults."""
    return rewrite_location(value, backend_host=backend_host, scheme=scheme, authority=authority)


@pytest.mark.parametrize(
    "value, expected",
    [
        # same host, with and without port, any port
        (b"http://app.internal:8081/login", b"https://example.com/login"),
        (b"http://app.internal/login", b"https://example.com/login"),
        (b"http://app.internal:9999/login", b"https://example.com/login"),
        (b"https://app.internal/login", b"https://example.com/login"),
        (b"http://app.internal:/x", b"https://example.com/x"),
        # no path: nothing appended; query / fragment directly after the authority
        (b"http://app.internal:8081", b"https://example.com"),
        (b"http://app.internal?x=1", b"https://example.com?x=1"),
        (b"http://app.internal#frag", b"https://example.com#frag"),
        # path, query and fragment kept exactly
        (b"http://app.internal/a/b?x=1&y=%2F#top", b"https://example.com/a/b?x=1&y=%2F#top"),
        (b"http://app.internal/p?next=http://app.internal/q", b"https://example.com/p?next=http://app.internal/q"),
        # case-insensitive scheme and host
        (b"HTTP://APP.INTERNAL/X", b"https://example.com/X"),
        (b"Https://App.Internal:8081/", b"https://example.com/"),
        # userinfo ignored for comparison and dropped
        (b"http://user:pw@app.internal/x", b"https://example.com/x"),
        (b"http://user@app.internal:8081/x", b"https://example.com/x"),
        # '@' in the path is not userinfo
        (b"http://app.internal/@other", b"https://example.com/@other"),
    ],
)
def test_rewritten(value, expected):
    """Absolute http(s) URIs on the backend host get the client's scheme and authority."""
    assert rw(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"/login",  # relative
        b"login?x=1",
        b"",
        b"?q",
        b"#f",
        b"//app.internal/x",  # scheme-relative: not an absolute URI, left alone
        b"http://other.example/x",  # other host
        b"http://app.internal.evil/x",  # prefix of another host
        b"http://app/x",
        b"http://evil@other.example/x",
        b"http://app.internal@other.example/x",  # host is other.example
        b"ftp://app.internal/x",  # other scheme
        b"ws://app.internal/x",
        b"httpx://app.internal/x",
        b"http:/app.internal/x",
        b"http:app.internal",
        b"http://",  # garbage
        b"http:///x",
        b"http://:8081/x",
        b"http://app.internal:80a/x",  # bad port
        b"http://app.internal:8081:1/x",
        b"http://[::1/x",  # unclosed IPv6
        b"http://[]/x",
        b"http://\xff\x00/x",
        b"h",
        b"https:",
    ],
)
def test_unchanged(value):
    """Relative references, other hosts and schemes and garbage come back as the same object."""
    assert rw(value) is value


@pytest.mark.parametrize(
    "backend_host, value, expected",
    [
        (b"[::1]:8081", b"http://[::1]:8081/x", b"https://example.com/x"),
        (b"[::1]:8081", b"http://[::1]/x", b"https://example.com/x"),
        (b"[::1]", b"http://[::1]:9/x", b"https://example.com/x"),
        (b"::1", b"http://[::1]/x", b"https://example.com/x"),  # bare IPv6 in config
        (b"[2001:DB8::1]:80", b"http://[2001:db8::1]/x", b"https://example.com/x"),
        (b"[::1]:8081", b"http://[::2]/x", b"http://[::2]/x"),
        (b"[::1]:8081", b"http://::1/x", b"http://::1/x"),  # unbracketed in a URI: garbage
        (b"[::1]:8081", b"http://[::1]x/x", b"http://[::1]x/x"),
        (b"127.0.0.1:8081", b"http://127.0.0.1/x", b"https://example.com/x"),
        (b"127.0.0.1:8081", b"http://127.0.0.2/x", b"http://127.0.0.2/x"),
        (b"APP.internal", b"http://app.INTERNAL:1/", b"https://example.com/"),
        (b"", b"http://app/x", b"http://app/x"),  # no backend host: nothing matches
        (b"garbage:port", b"http://garbage/x", b"http://garbage/x"),
    ],
)
def test_backend_host_forms(backend_host, value, expected):
    """backend_host may carry a port, an IPv6 literal (bracketed or not) or upper case."""
    assert rw(value, backend_host=backend_host) == expected


@pytest.mark.parametrize(
    "scheme, authority, expected",
    [
        (b"http", b"example.com:8080", b"http://example.com:8080/x"),
        (b"https", b"[::1]:8443", b"https://[::1]:8443/x"),
        (b"https", b"", b"/x"),  # no client authority (HTTP/1.0 without Host): the path only
        (b"", b"example.com", b"http://app.internal/x"),
    ],
)
def test_client_side(scheme, authority, expected):
    """The client's scheme and authority are used verbatim; without a client authority (an
    HTTP/1.0 request without Host) a URI at the backend becomes a path-absolute reference, so
    the backend's own address never reaches the client; an empty scheme disables the rewrite."""
    assert rw(b"http://app.internal/x", scheme=scheme, authority=authority) == expected


@pytest.mark.parametrize("value, expected", [
    (b"http://app.internal", b"/"),
    (b"http://app.internal?q=1", b"/?q=1"),
    (b"http://app.internal#top", b"/#top"),
    (b"HTTP://127.0.0.1:9300/login?next=/", b"/login?next=/"),
    (b"http://other.example/x", b"http://other.example/x"),
    (b"/already/relative", b"/already/relative"),
])
def test_without_client_authority_the_backend_address_never_leaks(value, expected):
    """No client authority: what points at the backend (its Host or its address) keeps only
    its path, query and fragment (a path-absolute reference, RFC 9110 §10.2.2); other URIs
    stay as they were."""
    out = rewrite_location(value, backend_host=b"app.internal", scheme=b"http", authority=b"",
                           backend_address=b"127.0.0.1:9300")
    assert out == expected


@given(value=st.binary(max_size=64), backend_host=st.binary(max_size=24), authority=st.binary(max_size=24))
def test_never_raises(value, backend_host, authority):
    """Arbitrary bytes never raise; the result is the input or starts with scheme://authority
    (without an authority: a path-absolute reference)."""
    out = rewrite_location(value, backend_host=backend_host, scheme=b"https", authority=authority)
    assert isinstance(out, bytes)
    assert out is value or out.startswith(b"https://" + authority if authority else b"/")


@given(
    value=st.from_regex(rb"\A(?i:https?)://([a-z]+@)?[a-zA-Z0-9.]{1,12}(:[0-9]{0,5})?([/?#][ -~]*)?\Z")
)
def test_generated_uris(value):
    """Generated absolute URIs never raise and, when rewritten, keep everything after the authority."""
    out = rewrite_location(value, backend_host=b"app.internal", scheme=b"https", authority=b"example.com")
    if out is not value:
        assert out.startswith(b"https://example.com")
        tail = out[len(b"https://example.com"):]
        assert value.endswith(tail)
