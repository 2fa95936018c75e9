"""Bodies through the proxy: large downloads and uploads with checksums, chunked both ways,
HEAD/204/304 without a body, and a slow reader that must not make the proxy buffer."""

import hashlib
import json
import subprocess
import time

import pytest

from .harness import (H2Client, curl, demo, header_value, raw_http1, require_tool, rss_kib,
                      sha256_file)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    """20 MiB of deterministic, non-repeating bytes and their sha256."""
    path = tmp_path_factory.mktemp("upload") / "upload.bin"
    with open(path, "wb") as f:
        for mv in demo.iter_body(20 * MIB, offset=12345):
            f.write(mv)
    return path, sha256_file(path)


def _check_download(r, n):
    assert r.rc == 0 and r.status == 200, r
    assert r.body_path.stat().st_size == n
    got = sha256_file(r.body_path)
    assert r.header("x-body-sha256") == got, (r.header("x-body-sha256"), got)
    assert got == demo.body_sha256(n)


@pytest.mark.parametrize("mode,tls", [("h2", True), ("h1", False)], ids=["h2-tls", "http1.1"])
def test_download_100mib(shared_proxy, tmp_path, mode, tls):
    """A 100 MiB response arrives complete and unaltered (sha256 compared with the backend's
    x-body-sha256 and with a local computation of the same bytes)."""
    n = 100 * MIB
    r = curl(shared_proxy.url(f"/bytes/{n}", tls=tls), mode=mode, tmpdir=tmp_path, timeout=120)
    _check_download(r, n)
    assert r.version == ("2" if mode == "h2" else "1.1")


@pytest.mark.parametrize("mode", ["h2c", "h1"])
def test_chunked_download(shared_proxy, tmp_path, mode):
    """A chunked backend response (5 MiB) arrives complete; an h2 client sees no
    transfer-encoding header."""
    n = 5 * MIB + 17
    r = curl(shared_proxy.url(f"/chunked/{n}"), mode=mode, tmpdir=tmp_path)
    _check_download(r, n)
    if mode == "h2c":
        assert r.header("transfer-encoding") is None, r.headers


@pytest.mark.parametrize("mode,tls", [("h2", True), ("h2c", False), ("h1", False)],
                         ids=["h2-tls", "h2c", "http1.1"])
def test_upload_20mib(shared_proxy, tmp_path, upload_file, mode, tls):
    """A 20 MiB upload (curl --data-binary) reaches the backend intact: its
    x-request-body-sha256 equals the local hash."""
    path, digest = upload_file
    r = curl(shared_proxy.url("/echo", tls=tls), "--data-binary", f"@{path}", mode=mode,
             tmpdir=tmp_path, timeout=120)
    assert r.rc == 0 and r.status == 200, r
    assert r.header("x-request-body-length") == str(20 * MIB)
    assert r.header("x-request-body-sha256") == digest
    echo = r.json()
    names = [k.lower() for k, _ in echo["headers"]]
    assert names.count("content-length") == 1 and "transfer-encoding" not in names, names


def test_upload_chunked_http11(shared_proxy, tmp_path, upload_file):
    """A chunked HTTP/1.1 upload (no content-length) of 20 MiB arrives intact, decoded."""
    path, digest = upload_file
    r = curl(shared_proxy.url("/echo"), "--data-binary", f"@{path}", "-H",
             "Transfer-Encoding: chunked", mode="h1", tmpdir=tmp_path, timeout=120)
    assert r.rc == 0 and r.status == 200, r
    assert r.header("x-request-body-sha256") == digest
    assert r.header("x-request-body-length") == str(20 * MIB)


def test_upload_h2_without_content_length_goes_chunked(shared_proxy):
    """An h2 request body without content-length (3 MiB in many DATA frames, flow-controlled)
    is sent to the HTTP/1.1 backend chunked and arrives intact."""
    body = demo.body_bytes(777, 3 * MIB)
    c = H2Client(shared_proxy.port(tls=False), timeout=60)
    try:
        sid = c.open_stream("/echo", method="PUT")
        assert c.send_body(sid, body, timeout=60)
        st = c.response(sid, timeout=60)
    finally:
        c.close()
    assert st["reset"] is None and st["headers"] is not None, st
    assert header_value(st["headers"], ":status") == "200"
    digest = hashlib.sha256(body).hexdigest()
    assert header_value(st["headers"], "x-request-body-sha256") == digest
    echo = json.loads(bytes(st["data"]))
    names = [k.lower() for k, _ in echo["headers"]]
    assert "content-length" not in names
    assert [v for k, v in echo["headers"] if k.lower() == "transfer-encoding"] == ["chunked"]


@pytest.mark.parametrize("path,status", [("/bytes/1000", 200), ("/status/204", 204),
                                         ("/status/304", 304)])
def test_no_body_h2(shared_proxy, path, status):
    """HEAD, 204 and 304 responses end the h2 stream without any DATA payload."""
    method = "HEAD" if status == 200 else "GET"
    c = H2Client(shared_proxy.port(tls=True), tls=True)
    try:
        st = c.get(path, method=method)
        # the connection still works afterwards
        st2 = c.get("/status/200")
    finally:
        c.close()
    assert st["reset"] is None and st["ended"], st
    assert header_value(st["headers"], ":status") == str(status)
    assert bytes(st["data"]) == b""
    assert header_value(st2["headers"], ":status") == "200"
    if method == "HEAD":
        assert header_value(st["headers"], "content-length") in ("1000", None)


@pytest.mark.parametrize("path,status", [("/bytes/1000", 200), ("/status/204", 204),
                                         ("/status/304", 304)])
def test_no_body_http11(shared_proxy, path, status):
    """HEAD, 204 and 304 over HTTP/1.1: the next response on the same connection follows the
    header block immediately (no stray body bytes in between)."""
    method = "HEAD" if status == 200 else "GET"
    host = shared_proxy.authority()
    data = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            f"GET /status/201 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode()
    out = raw_http1(shared_proxy.port(), data, until_close=True)
    first, sep, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(f"HTTP/1.1 {status}".encode()), out[:300]
    assert rest.startswith(b"HTTP/1.1 201"), out[:600]


def test_slow_reader_does_not_make_proxy_buffer(shared_proxy, tmp_path):
    """A client reading a 64 MiB response at 16 MB/s: the proxy's RSS grows by less than
    32 MiB (flow control pauses the backend instead of buffering the body)."""
    n = 64 * MIB
    out = tmp_path / "slow.bin"
    pid = shared_proxy.pid
    base = rss_kib(pid)
    proc = subprocess.Popen([require_tool("curl"), "-sS", "-k", "--http2", "--limit-rate", "16M",
                             "-o", str(out), "--max-time", "60",
                             shared_proxy.url(f"/bytes/{n}", tls=True)],
                            stderr=subprocess.PIPE)
    peak = base
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.05)
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read()
    assert sha256_file(out) == demo.body_sha256(n)
    growth_mib = (peak - base) / 1024
    assert growth_mib < 32, f"proxyd RSS grew by {growth_mib:.1f} MiB ({base} -> {peak} KiB)"
