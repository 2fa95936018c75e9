"""Limits end to end (issue 6): the real daemon, the demo backend, real and raw-frame clients.

Covered here: ``rate_limits.requests_per_ip`` (429 + Retry-After for h2, HTTP/1.1 and SPDY/3.1,
never forwarded), ``limits.max_connections`` / ``max_connections_per_ip`` (excess connections
closed at accept, a rate-limited log line), ``max_concurrent_streams`` (REFUSED_STREAM),
``max_header_list_size`` (431 / RST_STREAM or GOAWAY), ``max_request_body`` (413 when declared,
reset + aborted backend request mid-stream), ``timeouts.frontend_header`` (slowloris on
HTTP/1.1) and ``frontend_idle``, and the bandwidth buckets ``read`` / ``write`` /
``worker_read`` / ``worker_write`` (only lower bounds on transfer times are asserted here; the
accuracy figures live in ``bench/ratelimit_accuracy.py``).

The attacks (rapid reset, floods, bombs, slowloris on h2, idle connections) are in
``test_e2e_attacks.py``. Everything runs on 127.0.0.1, every wait has a deadline, every process
is stopped by a fixture.
"""

import json
import os
import re
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from .harness import (HOST, REPO, H2Client, curl, demo, free_port, header_value, raw_http1,
                      run, sha256_file, wait_until)
from .rawh2 import (MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, REFUSED_STREAM, RawH2,
                    header_block_frames, headers_frame)
from .rawspdy import RawSpdy

KiB = 1024
MiB = 1024 * 1024
PEER_DIR = Path(os.environ.get("PROXYD_SPDY_PEER", str(REPO / ".cache" / "spdy-peer")))


# -- helpers -------------------------------------------------------------------------------

class H1Conn:
    """A blocking HTTP/1.1 keep-alive connection (optionally from another loopback source
    address, i.e. another "client IP")."""

    def __init__(self, port, source=None, timeout=5):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.port = port
        self.timeout = timeout
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def request(self, path, method="GET", headers=(), body=b""):
        """Send one request and read its response: (status, {name: value}, body)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        self.send(head.encode() + b"\r\n" + body)
        return self.response()

    def response(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        self.buf = rest
        while len(self.buf) < n:
            self._fill(deadline)
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no complete response within {self.timeout}s: {self.buf[:300]!r}")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed by the daemon (buffer {self.buf[:300]!r})")
        self.buf += chunk

    def closed_by_peer(self, timeout):
        """True when the daemon closes (EOF or reset) within ``timeout`` (data is discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not chunk:
                return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def excess_connection_closed(port, timeout=3, source=None):
    """Connect (and send a request); True when the daemon closes the connection without an
    answer: reset during connect, or EOF / reset within ``timeout``."""
    try:
        x = H1Conn(port, source=source)
    except ConnectionResetError:
        return True
    try:
        try:
            x.send(b"GET /bytes/10?excess HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            x.sock.settimeout(left)
            try:
                chunk = x.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            if chunk.startswith(b"HTTP/"):
                return False
    finally:
        x.close()


def metrics(port):
    """The daemon's metrics text (GET /metrics on its metrics endpoint)."""
    data = raw_http1(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", until_close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return body.decode()


def metric_sum(text, name):
    """Sum of every sample of metric ``name`` (all label sets)."""
    return sum(float(m.group(1)) for m in
               re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def count_lines(text, needle):
    return sum(1 for line in text.splitlines() if needle in line)


def with_metrics(config):
    port = free_port()
    config["metrics"] = f"tcp:{port}:interface={HOST}"
    return config, port


def wait_no_clients(mport):
    """Wait until the daemon counts no client connection (the harness's readiness probes
    connect and close at once; until the daemon saw them close they count against limits)."""
    wait_until(lambda: metric_sum(metrics(mport), "proxyd_client_connections") == 0, 5,
               interval=0.05, what="the readiness-probe connections to be released")


def node_peer(*args, timeout=40):
    """``spdy-client.js --json ARGS``; a missing node or peer FAILS (never skips)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: the SPDY peer (PROXYD_SPDY_PEER) needs it",
                    pytrace=False)
    if not (PEER_DIR / "spdy-client.js").exists():
        pytest.fail(f"SPDY peer not found at {PEER_DIR} (set PROXYD_SPDY_PEER)", pytrace=False)
    cmd = [node, str(PEER_DIR / "spdy-client.js"), "--json", "--timeout",
           str((timeout - 5) * 1000), *args]
    rc, out, err = run(cmd, timeout=timeout, cwd=str(PEER_DIR))
    try:
        return rc, json.loads(out), err
    except ValueError:
        raise AssertionError(f"spdy peer printed no JSON (rc {rc}): {out[-1500:]} {err[-1500:]}")


# -- requests_per_ip -------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["h2", "http/1.1", "spdy/3.1"])
def test_requests_per_ip_429_with_retry_after(backend, start_proxyd, make_config, protocol):
    """requests_per_ip {rate: 1, burst: 3}: of six back-to-back requests from 127.0.0.1 the
    first three (a fourth if a token refilled meanwhile) get 200 and the others 429 with an
    integer Retry-After >= 1 and a short text body, for h2, HTTP/1.1 and SPDY/3.1 (the
    independent Node peer) alike; only the 200s reached the backend (its /_count), and the
    metrics counter proxyd_rate_limited_total counts the 429s."""
    cfg, mport = with_metrics(make_config(
        backend, rate_limits={"requests_per_ip": {"rate": 1, "burst": 3}}))
    for lst in cfg["listen"]:
        lst["protocols"] = ["h2", "spdy/3.1", "http/1.1"]
    proxy = start_proxyd(cfg)
    port = proxy.port()
    results = []  # (status, retry-after, body)
    if protocol == "h2":
        c = H2Client(port)
        try:
            for i in range(6):
                st = c.get(f"/bytes/100?n={i}")
                results.append((int(header_value(st["headers"], ":status")),
                                header_value(st["headers"], "retry-after"), bytes(st["data"])))
        finally:
            c.close()
    elif protocol == "http/1.1":
        c = H1Conn(port)
        try:
            for i in range(6):
                status, hdrs, body = c.request(f"/bytes/100?n={i}")
                results.append((status, hdrs.get("retry-after"), body))
        finally:
            c.close()
    else:
        rc, report, err = node_peer("--plain", "--protocol", "spdy/3.1", "-n", "6",
                                    f"{HOST}:{port}", "/bytes/100")
        assert report["connections"][0]["protocol"] == "spdy/3.1", report
        for r in report["requests"]:
            results.append((r["status"], r["headers"].get("retry-after"),
                            (r.get("body_text") or "").encode()))
    statuses = [s for s, _, _ in results]
    ok = statuses.count(200)
    assert len(results) == 6, results
    assert 3 <= ok <= 4 and statuses == [200] * ok + [429] * (6 - ok), statuses
    for status, retry_after, body in results[ok:]:
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, \
            results
        assert 0 < len(body) < 200, body
    counts = backend.count()
    assert counts["requests"] == ok, counts
    assert metric_sum(metrics(mport), "proxyd_rate_limited_total") == 6 - ok


def test_requests_per_ip_recovers_after_retry_after(backend, start_proxyd, make_config):
    """After a 429, waiting the announced Retry-After gives 200 again (the bucket refills);
    the limiter keys on the client IP, so a second connection from the same IP is limited
    too."""
    proxy = start_proxyd(make_config(backend,
                                     rate_limits={"requests_per_ip": {"rate": 2, "burst": 2}}))
    c1, c2 = H1Conn(proxy.port()), H1Conn(proxy.port())
    try:
        assert c1.request("/bytes/10")[0] == 200
        assert c1.request("/bytes/10")[0] == 200
        status, hdrs, _ = c2.request("/bytes/10")
        assert status == 429, status
        time.sleep(int(hdrs["retry-after"]) + 0.05)
        assert c2.request("/bytes/10")[0] == 200
    finally:
        c1.close()
        c2.close()
    assert backend.count()["requests"] == 3


# -- max_connections, max_connections_per_ip ---------------------------------------------------

def test_max_connections_excess_closed_existing_fine(backend, start_proxyd, make_config):
    """limits.max_connections: 3: three keep-alive clients are served; further connections
    are closed at accept (EOF or reset, no response) while the three keep working; the refusal
    is logged, rate-limited (20 refusals in a burst -> at most 2 lines); once one client
    leaves, a new connection is accepted again."""
    cfg, mport = with_metrics(make_config(backend, limits={"max_connections": 3}))
    proxy = start_proxyd(cfg)
    wait_no_clients(mport)
    port = proxy.port()
    conns = [H1Conn(port) for _ in range(3)]
    try:
        for c in conns:
            assert c.request("/bytes/10")[0] == 200
        for i in range(20):
            assert excess_connection_closed(port), f"excess connection {i} was served"
        for c in conns:
            assert c.request("/bytes/10")[0] == 200
        log = wait_until(lambda: (t := proxy.log_text()) and "refusing connections" in t and t,
                         5, what="the refusal log line")
        assert 1 <= count_lines(log, "refusing connections") <= 2, log
        assert "max_connections" in log
        conns.pop().close()

        def accepted():
            x = H1Conn(port)
            try:
                return x.request("/bytes/10")[0] == 200
            except (ConnectionError, OSError):
                return False
            finally:
                x.close()
        wait_until(accepted, 5, interval=0.1, what="a new connection after one client left")
    finally:
        for c in conns:
            c.close()
    counts = backend.count()
    assert counts["requests"] == 3 + 3 + 1, counts
    assert not [t for t in counts["targets"] if "excess" in t], counts


def test_max_connections_per_ip(backend, start_proxyd, make_config):
    """limits.max_connections_per_ip: 2: a third connection from 127.0.0.1 is closed at accept
    (and logged), the two existing ones keep working, and another address (127.0.0.2, also
    loopback) still gets its own two."""
    cfg, mport = with_metrics(make_config(backend, limits={"max_connections_per_ip": 2}))
    proxy = start_proxyd(cfg)
    wait_no_clients(mport)
    port = proxy.port()
    conns = [H1Conn(port), H1Conn(port)]
    others = []
    try:
        for c in conns:
            assert c.request("/bytes/10")[0] == 200
        assert excess_connection_closed(port), "a third connection from 127.0.0.1 was served"
        for i in range(2):
            o = H1Conn(port, source="127.0.0.2")
            others.append(o)
            assert o.request("/bytes/10")[0] == 200, "127.0.0.2 limited by 127.0.0.1's count"
        for c in conns:
            assert c.request("/bytes/10")[0] == 200
        wait_until(lambda: "refusing connections" in proxy.log_text(), 5,
                   what="the refusal log line")
        assert "127.0.0.1" in [line for line in proxy.log_text().splitlines()
                               if "refusing connections" in line][0]
    finally:
        for c in conns + others:
            c.close()


# -- max_concurrent_streams --------------------------------------------------------------------

def test_refused_stream_above_max_concurrent_streams(backend, start_proxyd, make_config):
    """max_concurrent_streams: 4 is advertised in SETTINGS; a raw client opening six slow
    streams at once gets RST_STREAM REFUSED_STREAM on the two above the limit (they never reach
    the backend), the four others complete with 200 and their bodies, and the connection stays
    usable for a new stream afterwards."""
    proxy = start_proxyd(make_config(backend, limits={"max_concurrent_streams": 4}))
    path = "/slow?chunks=4&interval=150&size=100"
    with RawH2(proxy.port()) as c:
        for i in range(6):
            c.request(1 + 2 * i, path)
        c.pump(lambda: all(c.done(1 + 2 * i) for i in range(6)), 10, what="six streams")
        assert c.server_settings.get(MAX_CONCURRENT_STREAMS) == 4, c.server_settings
        assert c.rsts == {9: REFUSED_STREAM, 11: REFUSED_STREAM}, c.rsts
        for sid in (1, 3, 5, 7):
            assert c.status(sid) == 200 and c.data.get(sid) == 400, (sid, c.log)
        c.request(13, "/bytes/10")
        c.pump(lambda: c.done(13), 5, what="a stream after the refused ones")
        assert c.status(13) == 200 and c.goaway is None
    assert backend.count()["requests"] == 5


# -- max_header_list_size ----------------------------------------------------------------------

def test_oversized_http1_head_431(backend, start_proxyd, make_config):
    """max_header_list_size: 16KiB on HTTP/1.1: a complete 20 KiB head and an endless 100 KiB
    head (no blank line) are answered 431 and the connection closed; an 8 KiB head is fine;
    nothing oversized reaches the backend."""
    proxy = start_proxyd(make_config(backend, limits={"max_header_list_size": "16KiB"}))
    port = proxy.port()
    out = raw_http1(port, b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 +
                    b"\r\n\r\n", until_close=True, timeout=5)
    assert out.startswith(b"HTTP/1.1 431"), out[:200]
    out = raw_http1(port, b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n" +
                    b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(100)),
                    until_close=True, timeout=5)
    assert out.startswith(b"HTTP/1.1 431"), out[:200]
    assert backend.count()["requests"] == 0
    out = raw_http1(port, b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"c" * 8000 +
                    b"\r\n\r\n", timeout=5)
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert backend.count()["requests"] == 1


@pytest.mark.parametrize("limit,size", [(None, 100 * KiB), ("16KiB", 40 * KiB)],
                         ids=["default-64KiB", "configured-16KiB"])
def test_oversized_h2_header_list_refused(backend, start_proxyd, make_config, limit, size):
    """An h2 header list over max_header_list_size (the default 64 KiB, and a configured
    16 KiB) is refused with RST_STREAM or GOAWAY (or a 431) and never reaches the backend; the
    advertised SETTINGS_MAX_HEADER_LIST_SIZE is the configured value; a list well under the
    limit on a fresh connection is served."""
    cfg = make_config(backend, limits={"max_header_list_size": limit}) if limit else \
        make_config(backend)
    proxy = start_proxyd(cfg)
    expected = 16 * KiB if limit else 64 * KiB
    with RawH2(proxy.port()) as c:
        block = c.encode(c.request_headers("/bytes/10?oversized") + [("x-big", "a" * size)])
        c.send(header_block_frames(1, block))
        c.pump(lambda: c.done(1) or c.goaway, 5, what="a refusal of the oversized list")
        assert c.server_settings.get(MAX_HEADER_LIST_SIZE) == expected, c.server_settings
        refused = 1 in c.rsts or c.goaway is not None or c.status(1) == 431
        assert refused, (f"a {size}-byte header list over the {expected}-byte limit was "
                         f"answered {c.status(1)}; frames {c.log}")
    assert not [t for t in backend.count()["targets"] if "oversized" in t], backend.count()
    with RawH2(proxy.port()) as c:
        c.request(1, "/bytes/10", extra=[("x-ok", "c" * (expected // 4))])
        c.pump(lambda: c.done(1), 5, what="a request under the limit")
        assert c.status(1) == 200, c.log


# -- max_request_body --------------------------------------------------------------------------

def test_declared_body_over_limit_413_never_forwarded(backend, start_proxyd, make_config):
    """max_request_body: 64KiB: a request declaring content-length 100000 gets 413 over h2 and
    HTTP/1.1 and the backend never sees it; a 60000-byte body passes."""
    proxy = start_proxyd(make_config(backend, limits={"max_request_body": "64KiB"}))
    c = H2Client(proxy.port())
    try:
        sid = c.open_stream("/echo?declared-h2", headers=[("content-length", "100000")])
        c.send_body(sid, b"x" * 100000)
        st = c.response(sid)
        assert header_value(st["headers"] or [], ":status") == "413", st
        st = c.get("/echo?ok-h2", method="POST", body=b"y" * 60000)
        assert header_value(st["headers"], ":status") == "200", st
    finally:
        c.close()
    out = raw_http1(proxy.port(), b"POST /echo?declared-h1 HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"x" * 100000, timeout=5)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    targets = backend.count()["targets"]
    assert not [t for t in targets if "declared" in t], targets
    assert [t for t in targets if "ok-h2" in t], targets


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
def test_body_over_limit_mid_stream_resets_and_aborts_backend(backend, start_proxyd,
                                                              make_config, protocol):
    """max_request_body: 64KiB with no declared length (h2 without content-length, HTTP/1.1
    chunked): once 200 KiB are on the way the stream is reset (h2: RST_STREAM) or answered 413
    and closed (HTTP/1.1), and the backend request already started is aborted: the backend's
    connection is closed (its active count drops to 0) and no echo is ever produced."""
    proxy = start_proxyd(make_config(backend, limits={"max_request_body": "64KiB"}))
    if protocol == "h2":
        c = H2Client(proxy.port())
        try:
            sid = c.open_stream("/echo?midstream")
            c.send_body(sid, b"z" * 16384, end=False)
            wait_until(lambda: backend.count()["requests"] == 1, 5,
                       what="the request head at the backend")
            c.send_body(sid, b"z" * (200 * KiB), end=False)
            st = c.response(sid, timeout=5)
            assert st["reset"] is not None or \
                header_value(st["headers"] or [], ":status") == "413", st
            assert not st["ended"] or header_value(st["headers"] or [], ":status") == "413", st
        finally:
            c.close()
    else:
        c = H1Conn(proxy.port())
        try:
            c.send(b"POST /echo?midstream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"\r\n" + b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
            wait_until(lambda: backend.count()["requests"] == 1, 5,
                       what="the request head at the backend")
            try:
                for _ in range(13):
                    c.send(b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
            except OSError:
                pass
            status, _, _ = c.response()
            assert status == 413, status
            assert c.closed_by_peer(3)
        finally:
            c.close()
    wait_until(lambda: backend.count()["active"] == 0, 5,
               what="the backend connection of the over-limit request to be aborted")
    assert backend.count()["requests"] == 1


# -- timeouts ------------------------------------------------------------------------------

def test_slowloris_http1_closed_after_frontend_header(backend, start_proxyd, make_config):
    """timeouts.frontend_header: 1s: a client trickling its HTTP/1.1 head (a header line every
    150 ms, never the blank line) is closed about a second after connecting, although it keeps
    sending; the request never reaches the backend; a normal client is served meanwhile."""
    proxy = start_proxyd(make_config(backend, timeouts={"frontend_header": "1s"}))
    sock = socket.create_connection((HOST, proxy.port()), timeout=5)
    t0 = time.monotonic()
    closed_at = None
    try:
        sock.sendall(b"GET /bytes/10?slowloris HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):  # at most 6 s of trickling
            readable, _, _ = select.select([sock], [], [], 0.15)
            if readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed_at = time.monotonic() - t0
                    break
            try:
                sock.sendall(b"X-Trickle-%d: x\r\n" % i)
            except OSError:
                closed_at = time.monotonic() - t0
                break
            if i == 3:
                assert raw_http1(proxy.port(), b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n",
                                 timeout=3).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
    assert closed_at is not None, "the trickling client was never closed"
    assert 0.8 <= closed_at <= 2.5, closed_at
    assert not [t for t in backend.count()["targets"] if "slowloris" in t]


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
def test_frontend_idle_closes_idle_connections(backend, start_proxyd, make_config, protocol):
    """timeouts.frontend_idle: 1s: after its response a connection with no stream is closed
    (h2: GOAWAY first) about a second later, while a connection that sends a request every
    0.4 s stays open past that."""
    proxy = start_proxyd(make_config(backend, timeouts={"frontend_idle": "1s",
                                                        "frontend_header": "10s"}))
    port = proxy.port()
    if protocol == "h2":
        idle, busy = H2Client(port), H2Client(port)
        get = lambda c, p: int(header_value(c.get(p)["headers"], ":status"))  # noqa: E731
    else:
        idle, busy = H1Conn(port), H1Conn(port)
        get = lambda c, p: c.request(p)[0]  # noqa: E731
    try:
        assert get(idle, "/bytes/10") == 200
        t0 = time.monotonic()
        for _ in range(5):  # 2 s of activity on the busy connection
            assert get(busy, "/bytes/10") == 200
            time.sleep(0.4)
        if protocol == "h2":
            try:
                idle.pump(lambda: False, timeout=max(0.1, 3 - (time.monotonic() - t0)))
            except AssertionError:  # the deadline passed with the connection still open
                pass
            closed = idle.closed
            assert idle.goaway is not None, "no GOAWAY before the idle close"
        else:
            closed = idle.closed_by_peer(max(0.1, 3 - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        assert closed, f"idle connection still open after {elapsed:.1f}s"
        assert get(busy, "/bytes/10") == 200, "the busy connection was closed"
    finally:
        idle.close()
        busy.close()


@pytest.mark.parametrize("protocol", ["h2", "spdy/3.1"])
def test_frontend_idle_closes_a_connection_whose_only_request_was_refused(
        backend, start_proxyd, make_config, protocol):
    """A request head stops a connection's idle timeout until its stream ends. One the gate
    refuses (an upper-case field name) gets a reset and no stream: the idle timeout must run
    again, else a client holds the connection open for ever with one bad request and silence.
    With ``frontend_idle: 1s`` the daemon closes it (bounded wait on the close itself)."""
    config = make_config(backend, timeouts={"frontend_idle": "1s", "frontend_header": "30s"})
    for listen in config["listen"]:
        listen["protocols"] = ["h2", "spdy/3.1", "http/1.1"]
    proxy = start_proxyd(config)
    bad = [("X-Upper", "1")]
    if protocol == "h2":
        c = RawH2(proxy.port(), timeout=10)
        try:
            c.send(headers_frame(1, c.encode(c.request_headers("/bytes/1", extra=bad)),
                                 end_stream=True))
            c.pump(lambda: 1 in c.rsts, what="the reset of the refused request")
            assert c.wait_closed(10), "the connection outlived frontend_idle"
        finally:
            c.close()
    else:
        c = RawSpdy(proxy.port(), protocol, False, timeout=10)
        try:
            c.syn_stream(1, c.request_pairs("/bytes/1", extra=bad))
            c.pump(lambda: 1 in c.rsts, what="the reset of the refused request")
            c.wait_closed(10)
        finally:
            c.close()
    assert not [t for t in backend.count()["targets"] if t.startswith("/bytes/1")]


# -- bandwidth ---------------------------------------------------------------------------------

def _timed_curl(url, tmpdir, mode, *args, name="body"):
    t0 = time.monotonic()
    r = curl(url, *args, mode=mode, tmpdir=tmpdir, timeout=30, body_name=name)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("mode", ["h2c", "h1"])
def test_write_rate_limits_download(backend, start_proxyd, make_config, tmp_path, mode):
    """rate_limits.write {rate: 1MiB, burst: 1MiB}: a 3 MiB download takes at least 1.5 s
    (2 s in theory: 1 MiB of burst, then 2 MiB at 1 MiB/s) and arrives complete."""
    proxy = start_proxyd(make_config(backend, rate_limits={"write": {"rate": "1MiB",
                                                                     "burst": "1MiB"}}))
    n = 3 * MiB
    r, elapsed = _timed_curl(proxy.url(f"/bytes/{n}"), tmp_path, mode)
    assert r.status == 200 and r.rc == 0, r
    assert sha256_file(r.body_path) == demo.body_sha256(n)
    assert elapsed >= 1.5, f"3 MiB in {elapsed:.2f}s: faster than 1 MiB/s after a 1 MiB burst"


@pytest.mark.parametrize("mode", ["h2c", "h1"])
def test_read_rate_limits_upload(backend, start_proxyd, make_config, tmp_path, mode):
    """rate_limits.read {rate: 1MiB, burst: 1MiB}: a 3 MiB upload to /echo takes at least
    1.5 s and the backend receives every byte."""
    proxy = start_proxyd(make_config(backend, rate_limits={"read": {"rate": "1MiB",
                                                                    "burst": "1MiB"}}))
    n = 3 * MiB
    src = tmp_path / "upload.bin"
    src.write_bytes(demo.body_bytes(0, n))
    r, elapsed = _timed_curl(proxy.url("/echo"), tmp_path, mode, "--data-binary", f"@{src}",
                             "-H", "content-type: application/octet-stream")
    assert r.status == 200 and r.rc == 0, r
    assert r.header("x-request-body-length") == str(n), r
    assert r.header("x-request-body-sha256") == demo.body_sha256(n), r
    assert elapsed >= 1.5, f"3 MiB uploaded in {elapsed:.2f}s: faster than the read rate"


def _parallel(fn, count):
    results = [None] * count
    errors = []

    def run_one(i):
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
    threads = [threading.Thread(target=run_one, args=(i,), daemon=True) for i in range(count)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    assert all(r is not None for r in results), "a parallel transfer did not finish"
    return results, time.monotonic() - t0


def test_worker_write_shared_by_connections(backend, start_proxyd, make_config, tmp_path):
    """rate_limits.worker_write {rate: 1MiB, burst: 1MiB} (per-connection write unlimited) is
    one bucket for the whole process: two concurrent 2 MiB downloads on two connections need
    at least 2.25 s together (3 s in theory: 4 MiB minus the 1 MiB burst at 1 MiB/s), where
    two per-connection buckets would let both finish in about 1 s."""
    proxy = start_proxyd(make_config(backend, workers=1, rate_limits={
        "worker_write": {"rate": "1MiB", "burst": "1MiB"}}))
    n = 2 * MiB
    results, elapsed = _parallel(lambda i: curl(proxy.url(f"/bytes/{n}?c={i}"), mode="h2c",
                                                tmpdir=tmp_path, timeout=30,
                                                body_name=f"dl{i}"), 2)
    for r in results:
        assert r.status == 200 and sha256_file(r.body_path) == demo.body_sha256(n), r
    assert elapsed >= 2.25, f"2 x 2 MiB in {elapsed:.2f}s: worker_write not shared"


def test_worker_read_shared_by_connections(backend, start_proxyd, make_config, tmp_path):
    """rate_limits.worker_read {rate: 1MiB, burst: 1MiB}: two concurrent 2 MiB uploads on two
    connections need at least 2.25 s together (one process-wide bucket)."""
    proxy = start_proxyd(make_config(backend, workers=1, rate_limits={
        "worker_read": {"rate": "1MiB", "burst": "1MiB"}}))
    n = 2 * MiB
    src = tmp_path / "upload.bin"
    src.write_bytes(demo.body_bytes(0, n))
    results, elapsed = _parallel(lambda i: curl(proxy.url(f"/echo?c={i}"), "--data-binary",
                                                f"@{src}", mode="h2c", tmpdir=tmp_path,
                                                timeout=30, body_name=f"up{i}"), 2)
    for r in results:
        assert r.status == 200 and r.header("x-request-body-length") == str(n), r
    assert elapsed >= 2.25, f"2 x 2 MiB uploaded in {elapsed:.2f}s: worker_read not shared"
