"""The h2c upgrade (RFC 7540 §3.2; issue 13 item 3) through the real daemon, with real clients.

``curl --http2 http://...`` and ``nghttp -u`` send an HTTP/1.1 request with ``Upgrade: h2c`` and
``HTTP2-Settings``; proxyd answers 101 and the response to that request on HTTP/2 stream 1, then
serves later requests of the connection as HTTP/2 streams. With ``h2c_upgrade: false`` (and for
requests with a body, which proxyd does not upgrade but serves whole) the answer is plain
HTTP/1.1.
"""

import hashlib

import pytest

from .harness import base_config, raw_http1, run


@pytest.fixture
def proxy(backend, tls_cert, start_proxyd):
    """proxyd in front of the demo backend, cleartext [h2, http/1.1] with the default h2c."""
    cert, key = tls_cert
    return start_proxyd(base_config(backend, cert, key, tls=False, workers=1))


def test_curl_http2_upgrades_and_gets_its_answer_over_h2(proxy):
    """curl's upgrade: 101, then ``HTTP/2 200`` with the backend's body; Via says the request
    itself came as HTTP/1.1."""
    rc, out, err = run(["curl", "-sv", "--http2", proxy.url("/")], timeout=30)
    assert rc == 0, err
    assert "< HTTP/1.1 101 Switching Protocols" in err and "< upgrade: h2c" in err
    assert "< HTTP/2 200" in err and "< via: 1.1 proxyd" in err
    assert "served by demo/backend.py" in out


def test_nghttp_upgrade_response_is_on_stream_1(proxy):
    """nghttp -u: the upgrade succeeds and the response arrives on stream 1, with our
    SETTINGS (RFC 8441's ENABLE_CONNECT_PROTOCOL included) as the first HTTP/2 frame."""
    rc, out, err = run(["nghttp", "-uv", proxy.url("/")], timeout=30)
    assert rc == 0, err
    assert "HTTP Upgrade success" in out
    assert "recv (stream_id=1) :status: 200" in out
    first_frame = out.split("HTTP Upgrade success", 1)[1].split("recv ", 2)[1]
    assert first_frame.startswith("SETTINGS frame") and "ENABLE_CONNECT_PROTOCOL(0x08):1" in out


def test_later_requests_of_the_connection_are_h2_streams(proxy):
    """Two URLs on one curl connection: the first is the upgrade (stream 1), the second an
    ordinary HTTP/2 stream on the same connection."""
    rc, out, err = run(["curl", "-sv", "--http2", proxy.url("/"), proxy.url("/")], timeout=30)
    assert rc == 0, err
    assert err.count("< HTTP/2 200") == 2 and err.count("101 Switching Protocols") == 1
    assert "Re-using existing connection" in err or "Reusing existing connection" in err


def test_h2c_upgrade_can_be_turned_off(backend, tls_cert, start_proxyd):
    """``h2c_upgrade: false``: the same request is answered over HTTP/1.1."""
    cert, key = tls_cert
    config = base_config(backend, cert, key, tls=False, workers=1)
    config["listen"][0]["h2c_upgrade"] = False
    proxy = start_proxyd(config)
    rc, out, err = run(["curl", "-sv", "--http2", proxy.url("/")], timeout=30)
    assert rc == 0, err
    assert "101" not in err and "< HTTP/1.1 200" in err


def test_request_with_a_body_is_not_upgraded(proxy, backend):
    """A POST with a body and Upgrade: h2c is not upgraded (the server may decline, RFC 9110
    §7.8): it is served over HTTP/1.1 and its body reaches the backend intact."""
    out = raw_http1(proxy.port(), b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, "
                                  b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: "
                                  b"AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello")
    assert out.startswith(b"HTTP/1.1 200 ") and b" 101 " not in out
    assert b"x-request-body-sha256: " + hashlib.sha256(b"hello").hexdigest().encode() in out


def test_bad_http2_settings_is_not_upgraded(proxy):
    """An HTTP2-Settings that is not a SETTINGS payload: no upgrade, a plain HTTP/1.1 answer."""
    out = raw_http1(proxy.port(), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, "
                                  b"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
