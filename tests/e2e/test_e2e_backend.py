"""The demo backend on its own (no proxy): the oracle of the other tests must be right."""

import socket
import time

from .harness import HOST, curl, demo, raw_http1, sha256_file


def test_backend_routes_directly(backend, tmp_path):
    """/bytes, /chunked, /echo (chunked upload decoded), HEAD, /status/204, /location-self and
    /set-headers behave as documented when spoken to directly."""
    r = curl(backend.url("/bytes/300000"), mode="h1", tmpdir=tmp_path)
    assert r.status == 200 and r.header("x-body-sha256") == sha256_file(r.body_path) \
        == demo.body_sha256(300000)
    r = curl(backend.url("/chunked/300000"), mode="h1", tmpdir=tmp_path)
    assert r.header("transfer-encoding") == "chunked" and r.body == demo.body_bytes(0, 300000)
    r = curl(backend.url("/echo?a=1"), "--data-binary", "hello", "-H",
             "Transfer-Encoding: chunked", "-H", "X-One: 1", "-H", "x-two: 2", mode="h1",
             tmpdir=tmp_path)
    echo = r.json()
    assert echo["body_length"] == 5 and echo["target"] == "/echo?a=1"
    names = [k for k, _ in echo["headers"]]
    assert names.index("X-One") < names.index("x-two")
    assert r.header("x-request-body-length") == "5"
    out = raw_http1(backend.port, b"HEAD /bytes/10 HTTP/1.1\r\nHost: h\r\n\r\n"
                                  b"GET /status/204 HTTP/1.1\r\nHost: h\r\n\r\n"
                                  b"GET /location-self HTTP/1.1\r\nHost: app.test:81\r\n"
                                  b"Connection: close\r\n\r\n", until_close=True)
    parts = out.split(b"\r\n\r\n")
    assert parts[0].startswith(b"HTTP/1.1 200") and b"Content-Length: 10" in parts[0]
    assert parts[1].startswith(b"HTTP/1.1 204")
    assert b"Location: http://app.test:81/landing?q=1#frag" in parts[2]
    r = curl(backend.url("/set-headers?x-a=1&x-a=2&connection=x-a"), mode="h1", tmpdir=tmp_path)
    assert r.header_all("x-a") == ["1", "2"] and r.header("connection") == "x-a"


def test_backend_counters_exclude_control_connections(backend, tmp_path):
    """/_count counts traffic connections and requests, not the tests' own /_count queries."""
    before = backend.count()
    assert (before["connections"], before["requests"]) == (0, 0)
    for _ in range(3):
        curl(backend.url("/"), mode="h1", tmpdir=tmp_path)
    after = backend.count()
    assert (after["connections"], after["requests"]) == (3, 3)
    assert after["targets"] == ["GET /"] * 3


def test_backend_abort_and_close(backend):
    """/abort sends part of a 10 MiB body then closes; /close-before-response answers nothing."""
    out = raw_http1(backend.port, b"GET /abort?after=1000 HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 10485760" in head and len(body) == 1000
    t0 = time.monotonic()
    out = raw_http1(backend.port, b"GET /close-before-response HTTP/1.1\r\nHost: h\r\n\r\n")
    assert out == b"" and time.monotonic() - t0 < 5
    with socket.create_connection((HOST, backend.port), timeout=5) as s:
        s.sendall(b"GET /early-hints HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                           b"HTTP/1.1 200")
    assert backend.count()["requests"] == 3
