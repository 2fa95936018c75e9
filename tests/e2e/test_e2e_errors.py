"""Failures: backend down (502), backend slow (504), backend dies mid-body (that stream only),
malformed requests (answered at the frontend, never forwarded), garbage on a listener."""

import socket
import time

import pytest

from .harness import (HOST, H2Client, curl, header_value, nghttp, raw_http1, wait_until)

TEN_MIB = 10 * 1024 * 1024


# -- 502 / 504 ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode,tls", [("h2", True), ("h2c", False), ("h1", False)])
def test_backend_refused_gives_502(start_proxyd, make_config, free_port, tmp_path, mode, tls):
    """A backend port nobody listens on: h2 and HTTP/1.1 clients get 502 with a short text
    body, the cause is logged, and the daemon keeps serving."""
    dead = f"{HOST}:{free_port()}"
    proxy = start_proxyd(make_config(dead, timeouts={"backend_connect": "2s"}))
    r = curl(proxy.url("/", tls=tls), mode=mode, tmpdir=tmp_path, timeout=20)
    assert r.rc == 0 and r.status == 502, r
    assert 0 < len(r.body) < 1024
    r = curl(proxy.url("/again", tls=tls), mode=mode, tmpdir=tmp_path, timeout=20)
    assert r.status == 502, r
    assert proxy.alive()
    log = proxy.log_text().lower()
    assert "refused" in log or dead in log, proxy.output()


@pytest.mark.parametrize("mode", ["h2c", "h1"])
def test_close_before_response_gives_502(proxy, tmp_path, mode):
    """The backend accepts the request and closes without answering: 502."""
    r = curl(proxy.url("/close-before-response"), mode=mode, tmpdir=tmp_path, timeout=20)
    assert r.status == 502, r
    r = curl(proxy.url("/status/200"), mode=mode, tmpdir=tmp_path)
    assert r.status == 200, r


def test_backend_read_timeout_gives_504_and_drops_the_connection(backend, start_proxyd,
                                                                 make_config, tmp_path):
    """timeouts.backend_read: 1s with /delay?ms=2500: h2 and HTTP/1.1 clients get 504 after
    about a second; the late answer is never handed to a later request (that backend
    connection is not reused)."""
    proxy = start_proxyd(make_config(backend, timeouts={"backend_read": "1s"}))
    for mode in ("h2c", "h1"):
        t0 = time.monotonic()
        r = curl(proxy.url("/delay?ms=2500"), mode=mode, tmpdir=tmp_path, timeout=20)
        elapsed = time.monotonic() - t0
        assert r.status == 504, r
        assert 0.8 < elapsed < 2.4, elapsed
    # let the backend's late answers go out on their (abandoned) connections
    time.sleep(1.8)
    c = H2Client(proxy.port())
    try:
        for i in range(6):
            st = c.get(f"/echo?n={i}")
            assert header_value(st["headers"], ":status") == "200", st
            assert f'"target": "/echo?n={i}"'.encode() in bytes(st["data"]), bytes(st["data"])
    finally:
        c.close()


# -- mid-body failure ---------------------------------------------------------------------

def test_abort_mid_body_resets_only_that_stream(proxy):
    """The backend dies after 100000 body bytes of a 10 MiB response: that h2 stream gets
    RST_STREAM INTERNAL_ERROR, while a neighbour stream on the SAME connection completes with
    200 and its full body; no GOAWAY."""
    abort, slow = "/abort?after=100000", "/slow?chunks=6&interval=100&size=1000"
    rc, trace, out, err = nghttp("-n", proxy.url(abort, tls=True), proxy.url(slow, tls=True),
                                 timeout=30)
    assert out.count("Connected") == 1
    a, s = trace.stream(abort), trace.stream(slow)
    assert trace.resets.get(a) == "INTERNAL_ERROR", out[-3000:]
    assert a not in trace.ended
    assert trace.status(s) == 200 and trace.data.get(s) == 6000 and s in trace.ended, \
        out[-3000:]
    assert s not in trace.resets and trace.goaway is None


@pytest.mark.parametrize("mode,tls", [("h2", True), ("h2c", False), ("h1", True),
                                      ("h1", False)],
                         ids=["h2-tls", "h2c", "http1.1-tls", "http1.1"])
def test_abort_mid_body_curl(proxy, tmp_path, mode, tls):
    """curl sees the truncated download as an error promptly (h2: stream reset, exit 92;
    HTTP/1.1: connection closed before content-length, exit 18 or 56) instead of hanging, and
    the proxy serves the next request."""
    t0 = time.monotonic()
    r = curl(proxy.url("/abort?after=50000", tls=tls), mode=mode, tmpdir=tmp_path, timeout=10)
    elapsed = time.monotonic() - t0
    assert r.rc != 28, f"curl hung until its --max-time: the proxy kept the client waiting {r}"
    assert r.rc in ((92,) if mode != "h1" else (18, 56)), r
    assert elapsed < 5, elapsed
    assert len(r.body) < TEN_MIB
    r = curl(proxy.url("/status/200", tls=tls), mode=mode, tmpdir=tmp_path)
    assert r.status == 200, r


# -- malformed requests never reach the backend -------------------------------------------

def _assert_backend_never_saw(backend, marker, expected_requests):
    counts = backend.count()
    assert not [t for t in counts["targets"] if marker in t], counts["targets"]
    assert counts["requests"] == expected_requests, counts


@pytest.mark.parametrize("name,head", [pytest.param(*case, id=case[0]) for case in [
    ("cl-and-te", "POST /echo?m=MARK HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad-header-name", "GET /echo?m=MARK HTTP/1.1\r\nHost: h\r\nbad(name): 1\r\n\r\n"),
    ("space-before-colon", "GET /echo?m=MARK HTTP/1.1\r\nHost: h\r\nX-Bad : 1\r\n\r\n"),
    ("two-content-lengths", "POST /echo?m=MARK HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                            "Content-Length: 2\r\n\r\nab"),
]])
def test_malformed_http11_gets_400_and_never_reaches_backend(proxy, backend, tmp_path, name,
                                                             head):
    """Malformed HTTP/1.1 requests are answered 400 by the proxy itself; the backend never sees
    them; the next client is served."""
    marker = f"malformed-{name}"
    out = raw_http1(proxy.port(), head.replace("MARK", marker).encode())
    assert out.startswith(b"HTTP/1.1 400"), out[:300]
    r = curl(proxy.url("/status/200"), mode="h1", tmpdir=tmp_path)
    assert r.status == 200, r
    _assert_backend_never_saw(backend, marker, 1)


@pytest.mark.parametrize("name,bad_header", [pytest.param(*case, id=case[0]) for case in [
    ("uppercase-name", ("X-Upper", "1")),
    ("connection-header", ("connection", "keep-alive")),
    ("te-not-trailers", ("te", "gzip")),
]])
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_malformed_h2_request_reset_and_never_forwarded(proxy, backend, name, bad_header, tls):
    """An h2 request with an uppercase header name or a connection-specific header gets
    RST_STREAM PROTOCOL_ERROR on its stream; the connection stays usable; the backend never
    sees the request."""
    marker = f"malformed-{name}"
    c = H2Client(proxy.port(tls=tls), tls=tls, validate=False)
    try:
        st = c.get(f"/echo?m={marker}", headers=[bad_header], scheme="https" if tls else "http")
        assert st["reset"] == 1, (f"expected RST_STREAM PROTOCOL_ERROR, got reset={st['reset']}"
                                  f" goaway={c.goaway} headers={st['headers']}")
        ok = c.get("/status/200", scheme="https" if tls else "http")
        assert header_value(ok["headers"], ":status") == "200", ok
    finally:
        c.close()
    _assert_backend_never_saw(backend, marker, 1)


# -- garbage on a listener ----------------------------------------------------------------

def _send_garbage(port, data, timeout=10):
    """Send data on a fresh TCP connection; returns (closed_by_peer, bytes received)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return True, got
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return True, got
            except socket.timeout:
                break
            if not chunk:
                return True, got
            got += chunk
        return False, got
    finally:
        s.close()


GARBAGE = bytes(range(256)) * 8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.mark.parametrize("case", ["cleartext-bytes", "cleartext-after-h2-preface",
                                  "tls-bytes", "tls-plain-http"])
def test_garbage_closes_only_that_connection(proxy, tmp_path, case):
    """Garbage on the cleartext or TLS listener closes that connection only: a client that was
    already connected, and a new one, both still get 200, and the daemon lives on."""
    tls = case.startswith("tls")
    other = H2Client(proxy.port(tls=tls), tls=tls)
    try:
        st = other.get("/status/200", scheme="https" if tls else "http")
        assert header_value(st["headers"], ":status") == "200"
        data = {"cleartext-bytes": GARBAGE,
                "cleartext-after-h2-preface": PREFACE + GARBAGE,
                "tls-bytes": GARBAGE,
                "tls-plain-http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}[case]
        closed, got = _send_garbage(proxy.port(tls=tls), data)
        assert closed, f"the proxy kept a garbage connection open (got {got[:200]!r})"
        if case == "cleartext-bytes":
            assert got == b"" or got.startswith(b"HTTP/1.1 4"), got[:200]
        st = other.get("/status/200", scheme="https" if tls else "http")
        assert header_value(st["headers"], ":status") == "200", st
    finally:
        other.close()
    r = curl(proxy.url("/", tls=tls), mode="h2" if tls else "h2c", tmpdir=tmp_path)
    assert r.status == 200, r
    assert proxy.alive()


def test_garbage_connections_are_not_leaked(proxy):
    """100 garbage connections in a row leave the daemon with no more open file descriptors
    than a handful beyond where it started."""
    import os
    fd_dir = f"/proc/{proxy.pid}/fd"
    before = len(os.listdir(fd_dir))
    for i in range(100):
        closed, _ = _send_garbage(proxy.port(tls=i % 2 == 1), GARBAGE[: 64 + i], timeout=10)
        assert closed
    wait_until(lambda: len(os.listdir(fd_dir)) <= before + 5, timeout=10,
               what=f"proxyd's fds to drop back near {before}")
