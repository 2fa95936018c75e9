"""Real clients against the real daemon: curl in its three HTTP modes, nghttp, h2load."""

import re

from .harness import curl, nghttp, parse_h2load, require_tool, run


def test_curl_http2_over_tls_negotiates_h2(proxy, tmp_path):
    """curl --http2 -k over TLS negotiates h2 by ALPN and gets the backend's hello page."""
    r = curl(proxy.url("/", tls=True), mode="h2", tmpdir=tmp_path)
    assert r.rc == 0, r
    assert r.status == 200, r
    assert r.version == "2", r
    assert b"proxyd demo backend" in r.body


def test_curl_http2_prior_knowledge_cleartext(proxy, tmp_path):
    """curl --http2-prior-knowledge on the cleartext listener speaks h2c from the first byte."""
    r = curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path)
    assert (r.rc, r.status, r.version) == (0, 200, "2"), r
    assert b"proxyd demo backend" in r.body


def test_curl_http11_cleartext(proxy, tmp_path):
    """curl --http1.1 on the cleartext listener: the sniffer falls back to HTTP/1.1."""
    r = curl(proxy.url("/"), mode="h1", tmpdir=tmp_path)
    assert (r.rc, r.status, r.version) == (0, 200, "1.1"), r
    assert b"proxyd demo backend" in r.body


def test_curl_http11_over_tls(proxy, tmp_path):
    """curl --http1.1 over TLS offers only http/1.1 by ALPN and gets an HTTP/1.1 answer."""
    r = curl(proxy.url("/", tls=True), mode="h1", tmpdir=tmp_path)
    assert (r.rc, r.status, r.version) == (0, 200, "1.1"), r
    assert b"proxyd demo backend" in r.body


def test_curl_http11_keepalive_reuses_connection(proxy, backend, tmp_path):
    """Three URLs on one curl --http1.1 command line reuse one client connection (keep-alive)."""
    url = proxy.url("/status/200")
    rc, out, err = run([require_tool("curl"), "-sS", "--http1.1", "-v", "-o", "/dev/null",
                        "-o", "/dev/null", "-o", "/dev/null", url, url, url], timeout=30)
    assert rc == 0, err
    assert err.count("Re-using existing connection") == 2, err
    assert backend.count()["requests"] == 3


def test_nghttp_stats_over_tls(proxy):
    """nghttp -nvs over TLS: ALPN h2, SETTINGS exchanged, the statistics show one 200."""
    rc, trace, out, err = nghttp("-ns", proxy.url("/bytes/1000", tls=True))
    assert rc == 0, out + err
    assert "The negotiated protocol: h2" in out
    assert "recv SETTINGS frame" in out
    stats = re.findall(r"^\s*(\d+)\s+\+\S+\s+\+\S+\s+\S+\s+(\d{3})\s+(\S+)\s+(\S+)\s*$", out, re.M)
    assert [(code, path) for _, code, _, path in stats] == [("200", "/bytes/1000")], out[-2000:]
    sid = trace.stream("/bytes/1000")
    assert trace.data.get(sid) == 1000


def test_nghttp_concurrent_streams(proxy, backend):
    """nghttp -m 20 and several URLs: many concurrent streams on one h2c connection, each with
    its own correct answer."""
    base = proxy.url("")
    urls = [base + "/bytes/70000", base + "/status/404", base + "/echo", base + "/chunked/5000"]
    rc, trace, out, err = nghttp("-n", "-m", "5", *urls)
    assert rc == 0, out[-3000:] + err
    assert out.count("Connected") == 1
    by_path = {}
    for sid, path in trace.paths.items():
        by_path.setdefault(path, []).append(sid)
    assert sorted(by_path) == ["/bytes/70000", "/chunked/5000", "/echo", "/status/404"]
    for path, sids in by_path.items():
        assert len(sids) == 5, (path, sids)
        for sid in sids:
            expected = 404 if path == "/status/404" else 200
            assert trace.status(sid) == expected, (path, sid, trace.blocks.get(sid))
            assert sid in trace.ended and sid not in trace.resets
    for sid in by_path["/bytes/70000"]:
        assert trace.data[sid] == 70000
    for sid in by_path["/chunked/5000"]:
        assert trace.data[sid] == 5000
    assert backend.count()["requests"] == 20


def test_h2load_10000_requests_zero_failures(start_proxyd, make_config, backend):
    """h2load -n 10000 -c 50 -m 10 on h2c: every request succeeds with 2xx, the backend saw all
    of them, and never more concurrent connections than max_connections (100; one process:
    with workers the bound is per worker, as nghttpx's is per thread)."""
    proxy = start_proxyd(make_config(backend, workers=1))
    rc, out, err = run([require_tool("h2load"), "-n", "10000", "-c", "50", "-m", "10",
                        proxy.url("/")], timeout=180)
    res = parse_h2load(out)
    assert rc == 0, out[-3000:] + err
    assert res["succeeded"] == 10000 and res["failed"] == 0 and res["errored"] == 0 \
        and res["timeout"] == 0, out[-2000:]
    assert res["2xx"] == 10000, out[-2000:]
    counts = backend.count()
    assert counts["requests"] == 10000
    assert counts["peak_connections"] <= 100, counts["peak_connections"]
    assert proxy.alive()


def test_h2load_over_tls_and_http11(proxy, backend):
    """h2load over TLS (ALPN h2) and with --h1 on the cleartext listener: zero failures."""
    rc, out, err = run([require_tool("h2load"), "-n", "2000", "-c", "10", "-m", "10",
                        proxy.url("/bytes/4096", tls=True)], timeout=120)
    res = parse_h2load(out)
    assert rc == 0 and res["succeeded"] == 2000 and res["failed"] == 0 \
        and res["errored"] == 0, out[-2000:] + err
    assert "Application protocol: h2" in out
    rc, out, err = run([require_tool("h2load"), "--h1", "-n", "2000", "-c", "20",
                        proxy.url("/bytes/4096")], timeout=120)
    res = parse_h2load(out)
    assert rc == 0 and res["succeeded"] == 2000 and res["failed"] == 0 \
        and res["errored"] == 0, out[-2000:] + err
    assert "Application protocol: http/1.1" in out
    assert backend.count()["requests"] == 4000


def test_pool_reuses_backend_connections(proxy, backend):
    """50 sequential requests over one h2 connection reuse pooled keep-alive backend
    connections: the backend sees at most 2 TCP connections."""
    rc, out, err = run([require_tool("h2load"), "-n", "50", "-c", "1", "-m", "1",
                        proxy.url("/status/200")], timeout=60)
    res = parse_h2load(out)
    assert rc == 0 and res["succeeded"] == 50, out[-2000:] + err
    counts = backend.count()
    assert counts["requests"] == 50
    assert counts["connections"] <= 2, counts


def test_pool_bounded_by_max_connections(backend, start_proxyd, make_config):
    """max_connections: 4 with 40 concurrent slow streams: all 40 complete (they wait in the
    pool's queue) and the backend never sees more than 4 connections at once."""
    config = make_config(backend)
    config["backends"][0]["max_connections"] = 4
    proxy = start_proxyd(config)
    rc, out, err = run([require_tool("h2load"), "-n", "40", "-c", "1", "-m", "40",
                        proxy.url("/delay?ms=100")], timeout=60)
    res = parse_h2load(out)
    assert rc == 0 and res["succeeded"] == 40 and res["2xx"] == 40, out[-2000:] + err
    counts = backend.count()
    assert counts["requests"] == 40
    assert counts["peak_connections"] <= 4, counts
