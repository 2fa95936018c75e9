"""Client and bridge modes end to end: the real daemon in front of nghttpd as a TLS HTTP/2 backend.

A test CA and a server certificate for ``app.internal`` (+ 127.0.0.1) are made with openssl; nghttpd
(Debian ``nghttp2-server``) serves generated files (small, 1 MiB, 20 MiB) and, with
``--echo-upload``, echoes POST bodies, so what the backend received is checked by checksums.
Clients: curl (``--http1.1`` and ``--http2``), the SPDY/3.1 peer (node, ``PROXYD_SPDY_PEER``,
default ``<repo>/.cache/spdy-peer``), h2load. Failure cases: wrong CA, wrong server_name, a
cleartext backend where TLS is configured, a TLS backend without h2 in ALPN -> 502 with the failed
check in the daemon's log; ``verify: false`` works and warns. Load: h2load ``-n 20000 -c 50 -m 10``
through bridge mode on a handful of backend connections (counted from the metrics endpoint and
from /proc), and the backend killed and restarted during such a run. A missing tool FAILS.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from . import harness
from .harness import (
    HOST, REPO, curl, free_port, require_tool, run, running, sha256_file, wait_until,
)
from .nghttpd import Nghttpd, make_pki
from .rawh2 import RawH2, ping_frame, rst_stream_frame, window_update_frame

PEER_DIR = Path(os.environ.get("PROXYD_SPDY_PEER", str(REPO / ".cache" / "spdy-peer")))
MiB = 1024 * 1024
FILES = {"small.txt": 100, "1m.bin": MiB, "20m.bin": 20 * MiB}
VIA = "2 proxyd"


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Test CA, server cert/key for app.internal + 127.0.0.1, and an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def docroot(tmp_path_factory):
    """(directory, {name: sha256}) of the files nghttpd serves (deterministic random bytes)."""
    root = tmp_path_factory.mktemp("htdocs")
    rng = random.Random(5)
    sums = {}
    for name, size in FILES.items():
        data = (b"proxyd bridge test\n" * (size // 19 + 1))[:size] if name.endswith(".txt") \
            else rng.randbytes(size)
        (root / name).write_bytes(data)
        sums[name] = sha256_file(root / name)
    return root, sums


@pytest.fixture(scope="module")
def nghttpd_tls(pki, docroot, tmp_path_factory):
    """nghttpd over TLS (certificate for app.internal by the test CA), --echo-upload."""
    server = Nghttpd(docroot[0], tmp_path_factory.mktemp("nghttpd-tls"), key=pki.server_key,
                     cert=pki.server_cert)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nghttpd_h2c(docroot, tmp_path_factory):
    """nghttpd without TLS (h2c by prior knowledge), --echo-upload."""
    server = Nghttpd(docroot[0], tmp_path_factory.mktemp("nghttpd-h2c"), tls=False)
    try:
        yield server
    finally:
        server.stop()


def backend_tls(pki, **over):
    """The backend ``tls:`` mapping trusting the test CA and checking app.internal."""
    return {"ca": str(pki.ca), "server_name": pki.hostname, **over}


def bridge_config(cert, key, address, tls, metrics_port=None, max_connections=100, **sections):
    """Bridge mode: a TLS listener (h2, spdy/3.1, http/1.1) and a cleartext one (h2, http/1.1)."""
    config = {
        "mode": "bridge",
        "listen": [
            {"endpoint": f"tcp:{free_port()}:interface={HOST}",
             "tls": {"cert": str(cert), "key": str(key)},
             "protocols": ["h2", "spdy/3.1", "http/1.1"]},
            {"endpoint": f"tcp:{free_port()}:interface={HOST}", "protocols": ["h2", "http/1.1"]},
        ],
        "backends": [{"address": address, "protocol": "h2", "tls": tls,
                      "max_connections": max_connections}],
        "rate_limits": {"read": {"rate": 0, "burst": 0}},
        "timeouts": {"backend_connect": "2s", "backend_read": "10s", "graceful_shutdown": "5s"},
        "workers": 1,  # the tests count the backend connections of one process's pool
    }
    if metrics_port:
        config["metrics"] = f"tcp:{metrics_port}:interface={HOST}"
    config.update(sections)
    return config


def client_config(address, tls):
    """Client mode: one cleartext HTTP/1.1 listener."""
    return {
        "mode": "client",
        "listen": [{"endpoint": f"tcp:{free_port()}:interface={HOST}", "protocols": ["http/1.1"]}],
        "backends": [{"address": address, "protocol": "h2", "tls": tls, "max_connections": 4}],
        "rate_limits": {"read": {"rate": 0, "burst": 0}},
        "timeouts": {"backend_connect": "2s", "backend_read": "10s", "graceful_shutdown": "5s"},
        "workers": 1,  # one process's pool of (at most 4) backend connections
    }


@pytest.fixture(scope="module")
def bridge(tls_cert, pki, nghttpd_tls, tmp_path_factory):
    """proxyd in bridge mode in front of nghttpd over verified TLS, with a metrics endpoint."""
    cert, key = tls_cert
    metrics_port = free_port()
    with running(bridge_config(cert, key, nghttpd_tls.address, backend_tls(pki), metrics_port),
                 tmp_path_factory.mktemp("proxyd-bridge")) as proxy:
        proxy.metrics_port = metrics_port
        yield proxy


@pytest.fixture(scope="module")
def client_mode(pki, nghttpd_tls, tmp_path_factory):
    """proxyd in client mode (HTTP/1.1 cleartext listener) in front of nghttpd over TLS."""
    with running(client_config(nghttpd_tls.address, backend_tls(pki)),
                 tmp_path_factory.mktemp("proxyd-client")) as proxy:
        yield proxy


# -- helpers -------------------------------------------------------------------------------

def metrics(port):
    """The metrics text of the daemon (GET /metrics on its metrics endpoint)."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        s.settimeout(5)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), head
    return body.decode()


def metric(text, name, **labels):
    """The value of one sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    raise AssertionError(f"no {name} {labels} in metrics:\n{text}")


def backend_sockets(pid, port):
    """ESTABLISHED TCP connections of process ``pid`` to 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


class Sampler:
    """Samples a function in a thread until stopped; keeps the maximum."""

    def __init__(self, fn, interval=0.05):
        self.fn = fn
        self.interval = interval
        self.max = 0
        self.samples = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.max = max(self.max, self.fn())
                self.samples += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        return self.max


def check_get(result, sums, name):
    assert result.rc == 0 and result.status == 200, result
    assert sha256_file(result.body_path) == sums[name], f"{name}: body differs"
    assert result.header("via") == VIA, result


def node_peer(*args, timeout=60):
    """Run the SPDY peer ``spdy-client.js --json ARGS``; returns (rc, report, stderr)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not installed; the SPDY peer needs it (the suite never skips)",
                    pytrace=False)
    script = PEER_DIR / "spdy-client.js"
    if not script.exists() or not (PEER_DIR / "node_modules" / "spdy-transport").exists():
        pytest.fail(f"SPDY peer missing at {PEER_DIR} (set PROXYD_SPDY_PEER; npm ci)",
                    pytrace=False)
    cmd = [node, str(script), "--json", "--timeout", str((timeout - 5) * 1000), *args]
    rc, out, err = run(cmd, timeout=timeout, cwd=str(PEER_DIR))
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    return rc, report, err + ("" if report is not None else out[-2000:])


def log_lines(proxy, pattern):
    return [line for line in proxy.log_text().splitlines() if re.search(pattern, line)]


# -- client mode ---------------------------------------------------------------------------

def test_client_mode_http11_get_over_verified_tls(client_mode, docroot, tmp_path):
    """Client mode: curl --http1.1 on a cleartext listener downloads small, 1 MiB and 20 MiB files
    from nghttpd over verified TLS + h2, byte-exact, with Via: 2 proxyd."""
    _, sums = docroot
    for name in FILES:
        res = curl(client_mode.url(f"/{name}"), mode="h1", tmpdir=tmp_path, body_name=name)
        check_get(res, sums, name)
        assert res.version == "1.1"
        assert int(res.header("content-length")) == FILES[name]


def test_client_mode_http11_post_echo(client_mode, docroot, tmp_path):
    """Client mode: POST bodies (1 MiB with content-length, 20 MiB chunked) reach the h2 backend
    intact: nghttpd --echo-upload sends back exactly what it received."""
    root, sums = docroot
    res = curl(client_mode.url("/echo"), "--data-binary", f"@{root / '1m.bin'}",
               "-H", "Content-Type: application/octet-stream", mode="h1", tmpdir=tmp_path,
               body_name="echo1")
    check_get(res, sums, "1m.bin")
    res = curl(client_mode.url("/echo"), "--data-binary", f"@{root / '20m.bin'}",
               "-H", "Transfer-Encoding: chunked", mode="h1", tmpdir=tmp_path, body_name="echo20")
    check_get(res, sums, "20m.bin")


def test_client_mode_h2c_backend(start_proxyd, nghttpd_h2c, docroot, tmp_path):
    """Client mode with ``tls: false`` speaks h2c by prior knowledge: GET and POST echo work."""
    root, sums = docroot
    proxy = start_proxyd(client_config(nghttpd_h2c.address, False))
    res = curl(proxy.url("/1m.bin"), mode="h1", tmpdir=tmp_path, body_name="get")
    check_get(res, sums, "1m.bin")
    res = curl(proxy.url("/echo"), "--data-binary", f"@{root / '1m.bin'}", mode="h1",
               tmpdir=tmp_path, body_name="post")
    check_get(res, sums, "1m.bin")


# -- bridge mode ---------------------------------------------------------------------------

def test_bridge_curl_http2(bridge, docroot, tmp_path):
    """Bridge mode: curl --http2 over the TLS listener downloads every file byte-exact and a
    1 MiB POST is echoed intact; responses carry Via: 2 proxyd."""
    root, sums = docroot
    for name in FILES:
        res = curl(bridge.url(f"/{name}", tls=True), mode="h2", tmpdir=tmp_path, body_name=name)
        check_get(res, sums, name)
        assert res.version == "2"
    res = curl(bridge.url("/echo", tls=True), "--data-binary", f"@{root / '1m.bin'}",
               mode="h2", tmpdir=tmp_path, body_name="echo")
    check_get(res, sums, "1m.bin")


def test_bridge_curl_parallel_streams_share_one_backend_connection(bridge, nghttpd_tls, docroot,
                                                                   tmp_path):
    """Eight parallel curl --http2 downloads (streams of one client connection) all succeed
    byte-exact while proxyd holds a single backend connection (sampled from its metrics)."""
    _, sums = docroot
    urls = []
    for i in range(8):
        urls += [bridge.url("/1m.bin", tls=True), "-o", str(tmp_path / f"p{i}")]
    sampler = Sampler(lambda: metric(metrics(bridge.metrics_port), "proxyd_backend_connections",
                                     backend=nghttpd_tls.address, state="total"))
    try:
        rc, out, err = run([require_tool("curl"), "-sS", "-k", "--http2", "--parallel",
                            "--parallel-max", "8", "-w", "%{http_code}\n", *urls], timeout=60)
    finally:
        most = sampler.stop()
    assert rc == 0, err
    assert out.split() == ["200"] * 8
    for i in range(8):
        assert sha256_file(tmp_path / f"p{i}") == sums["1m.bin"]
    assert sampler.samples >= 1, sampler.errors
    assert most == 1, f"{most} backend connections for 8 streams"


def test_bridge_spdy31_peer(bridge, docroot):
    """Bridge mode: the SPDY/3.1 peer (node-spdy) downloads the 1 MiB file and gets a 1 MiB POST
    echoed, checked by sha256, with status 200 and Via: 2 proxyd."""
    _, sums = docroot
    target = f"{HOST}:{bridge.port(tls=True)}"
    rc, report, err = node_peer("--protocol", "spdy/3.1", "--tls", "--expect-status", "200",
                                "-c", "2", target, "/1m.bin")
    assert rc == 0 and report, (rc, err)
    conn = report["connections"][0]
    assert conn["protocol"] == "spdy/3.1" and conn.get("alpn") == "spdy/3.1", conn
    assert len(report["requests"]) == 2
    for req in report["requests"]:
        assert req["status"] == 200 and req["body_sha256"] == sums["1m.bin"], req.get("error")
        headers = {k.lower(): v for k, v in _peer_headers(req)}
        assert headers.get("via") == VIA, headers
    rc, report, err = node_peer("--protocol", "spdy/3.1", "--tls", "--expect-status", "200",
                                "-X", "POST", "--data-size", "1MiB", target, "/echo")
    assert rc == 0 and report, (rc, err)
    [req] = report["requests"]
    assert req["body_length"] == MiB
    assert req["body_sha256"] == report["request_body"]["sha256"]


def _peer_headers(req):
    headers = req.get("headers") or {}
    if isinstance(headers, dict):
        return [(k, v if isinstance(v, str) else ", ".join(v)) for k, v in headers.items()]
    return [tuple(h) for h in headers]


def test_bridge_http11_clients(bridge, docroot, tmp_path):
    """Bridge mode: HTTP/1.1 clients (TLS with ALPN http/1.1, and cleartext) get the files and the
    echo, with Via: 2 proxyd."""
    root, sums = docroot
    for tls in (True, False):
        res = curl(bridge.url("/1m.bin", tls=tls), mode="h1", tmpdir=tmp_path, body_name=f"g{tls}")
        check_get(res, sums, "1m.bin")
        assert res.version == "1.1"
        res = curl(bridge.url("/echo", tls=tls), "--data-binary", f"@{root / '1m.bin'}",
                   mode="h1", tmpdir=tmp_path, body_name=f"p{tls}")
        check_get(res, sums, "1m.bin")


# -- backend TLS failures ------------------------------------------------------------------

def start_s_server(pki, tmp_path, alpn):
    """openssl s_server on 127.0.0.1 with the app.internal certificate; ``alpn`` is the list it
    accepts (None: it ignores ALPN). Returns (address, stop function)."""
    port = free_port()
    log = open(tmp_path / "s_server.log", "wb")
    cmd = [require_tool("openssl"), "s_server", "-accept", f"{HOST}:{port}",
           "-cert", str(pki.server_cert), "-key", str(pki.server_key), "-www", "-quiet"]
    if alpn:
        cmd += ["-alpn", alpn]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop():
        harness.stop_process(proc, signal.SIGTERM, timeout=5)
        log.close()

    try:
        wait_until(lambda: proc.poll() is not None or harness.port_accepts(port), 15,
                   what="openssl s_server to listen")
        assert proc.poll() is None, "openssl s_server exited"
    except BaseException:
        stop()
        raise
    return f"{HOST}:{port}", stop


@pytest.fixture
def s_server(pki, tmp_path):
    """start(alpn) -> address of an openssl s_server TLS backend that does not speak h2; every
    server started is stopped after the test."""
    stops = []

    def start(alpn):
        address, stop = start_s_server(pki, tmp_path, alpn)
        stops.append(stop)
        return address

    yield start
    for stop in stops:
        stop()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_hostname", "cleartext_backend",
                                  "alpn_http11_only", "alpn_ignored"])
def test_backend_tls_failures_are_502_with_the_cause_logged(
        case, request, s_server, start_proxyd, tls_cert, pki, nghttpd_tls, tmp_path):
    """Wrong CA, wrong server_name, a cleartext backend where TLS is configured, and TLS backends
    that do not select h2 by ALPN (one refusing it with an alert, one ignoring ALPN) each answer
    502, and the daemon's log names the check that failed."""
    cert, key = tls_cert
    address, tls, pattern = {
        "wrong_ca": (nghttpd_tls.address, {"ca": str(pki.other_ca), "server_name": pki.hostname},
                     r"certificate verify failed"),
        "wrong_hostname": (nghttpd_tls.address, backend_tls(pki, server_name="wrong.internal"),
                           r"(?i)(hostname|DNS).?mismatch.*wrong\.internal|wrong\.internal.*mismatch"),
        "cleartext_backend": ("demo", backend_tls(pki),
                              r"(?i)no TLS handshake|not speaking TLS|wrong version number"),
        "alpn_http11_only": ("http/1.1", backend_tls(pki), r"(?i)no application protocol"),
        "alpn_ignored": (None, backend_tls(pki), r"did not select h2 by ALPN"),
    }[case]
    if case.startswith("alpn_"):
        address = s_server(address)
    elif address == "demo":  # the demo HTTP/1.1 backend: cleartext
        address = request.getfixturevalue("backend").address
    proxy = start_proxyd(bridge_config(cert, key, address, tls))
    started = time.monotonic()
    res = curl(proxy.url("/small.txt", tls=True), mode="h2", tmpdir=tmp_path, timeout=20)
    assert res.status == 502, res
    assert time.monotonic() - started < 10, "the failure must be reported within the connect timeout"
    wait_until(lambda: log_lines(proxy, pattern), 5, what=f"log line matching {pattern!r}")
    assert proxy.alive()


def test_verify_false_works_and_warns(start_proxyd, tls_cert, nghttpd_tls, docroot, tmp_path):
    """``tls: {verify: false}`` (server_name defaulting to 127.0.0.1, which the certificate's
    issuer is not trusted for anyway) connects, and the daemon logs a loud warning at start."""
    cert, key = tls_cert
    _, sums = docroot
    proxy = start_proxyd(bridge_config(cert, key, nghttpd_tls.address, {"verify": False}))
    res = curl(proxy.url("/1m.bin", tls=True), mode="h2", tmpdir=tmp_path)
    check_get(res, sums, "1m.bin")
    warnings = log_lines(proxy, r"(?i)verif\w* (is )?(off|disabled)|verify: false")
    assert warnings, proxy.output()
    assert any(nghttpd_tls.address in line for line in warnings)


# -- load ----------------------------------------------------------------------------------

def test_h2load_through_bridge_on_few_backend_connections(bridge, nghttpd_tls):
    """h2load -n 20000 -c 50 -m 10 (500 concurrent streams) through bridge mode: zero failures,
    while proxyd keeps at most a handful of backend connections (nghttpd allows 100 streams per
    connection): sampled from proxyd_backend_connections{state="total"} and from /proc."""
    port = bridge.metrics_port
    by_metrics = Sampler(lambda: metric(metrics(port), "proxyd_backend_connections",
                                        backend=nghttpd_tls.address, state="total"))
    by_proc = Sampler(lambda: backend_sockets(bridge.pid, nghttpd_tls.port), interval=0.02)
    try:
        rc, out, err = run([require_tool("h2load"), "-n", "20000", "-c", "50", "-m", "10",
                            bridge.url("/small.txt", tls=True)], timeout=60)
    finally:
        most_metrics, most_proc = by_metrics.stop(), by_proc.stop()
    stats = harness.parse_h2load(out)
    assert rc == 0, out[-2000:] + err
    assert stats["succeeded"] == 20000 and stats["failed"] == 0 and stats["errored"] == 0, stats
    assert stats["2xx"] == 20000
    assert by_metrics.samples > 3 and by_proc.samples > 3, (by_metrics.errors, by_proc.errors)
    assert 1 <= most_metrics <= 8, f"{most_metrics} backend connections (metrics)"
    assert 1 <= most_proc <= 8, f"{most_proc} backend connections (/proc)"
    print(f"\nh2load bridge: {stats.get('req_per_s')} req/s; backend connections at most "
          f"{most_metrics:.0f} (metrics) / {most_proc} (/proc)")


def test_backend_restart_during_load(start_proxyd, tls_cert, pki, docroot, tmp_path):
    """nghttpd is killed (SIGKILL) while h2load -n 20000 -c 50 -m 10 runs and started again on the
    same port: h2load finishes (nothing hangs), every request either succeeded or failed cleanly
    (a 5xx or a stream reset: no connection errors, no timeouts), and afterwards a fresh request
    succeeds."""
    cert, key = tls_cert
    server = Nghttpd(docroot[0], tmp_path / "nghttpd", key=pki.server_key, cert=pki.server_cert)
    h2load = None
    try:
        metrics_port = free_port()
        proxy = start_proxyd(bridge_config(cert, key, server.address, backend_tls(pki),
                                           metrics_port))
        url = proxy.url("/small.txt", tls=True)
        out_path = tmp_path / "h2load.out"
        with open(out_path, "wb") as out:
            h2load = subprocess.Popen([require_tool("h2load"), "-n", "20000", "-c", "50", "-m",
                                       "10", url], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        requests = lambda: sum(float(v) for v in re.findall(  # noqa: E731
            r"^proxyd_requests_total\{[^}]*\} (\S+)$", metrics(metrics_port), re.M))
        wait_until(lambda: requests() >= 2000 or h2load.poll() is not None, 30,
                   what="2000 requests through the proxy")
        assert h2load.poll() is None, "h2load finished before the backend could be restarted"
        server.kill()
        time.sleep(0.3)  # let requests hit the dead backend (connection refused -> 502)
        server.start()
        try:
            h2load.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("h2load hung after the backend restart")
        text = out_path.read_text(errors="replace")
        stats = harness.parse_h2load(text)
        assert stats["done"] == 20000, stats
        assert stats["errored"] == 0 and stats["timeout"] == 0, stats
        assert stats["4xx"] == 0 and stats["3xx"] == 0, stats
        assert stats["failed"] > 0, "the restart did not affect the run"
        assert stats["succeeded"] + stats["failed"] == 20000, stats
        res = curl(url, mode="h2", tmpdir=tmp_path, body_name="after")
        check_get(res, docroot[1], "small.txt")
        assert proxy.alive()
        print(f"\nbackend restart under load: {stats}")
    finally:
        if h2load is not None and h2load.poll() is None:
            harness.stop_process(h2load, signal.SIGKILL)
        server.stop()


# -- one client's resets and the shared backend connection ----------------------------------

def innocent_batches(port, stop, tally):
    """Batches of 10 GET /small.txt on one h2c connection until ``stop``: ``tally["ok"]``
    counts the complete 200s, ``tally["failed"]`` the rest (5xx, resets, a lost connection)."""
    c = RawH2(port, timeout=10)
    sid = 1
    try:
        while not stop.is_set() and not c.closed:
            batch = list(range(sid, sid + 20, 2))
            sid += 20
            c.send(b"".join(c.request(s, "/small.txt", send=False) for s in batch))
            c.pump(lambda: all(c.done(s) for s in batch), 10, what="a batch of GETs")
            for s in batch:
                good = c.status(s) == 200 and s in c.ended and s not in c.rsts
                tally["ok" if good else "failed"] += 1
    except Exception as exc:  # noqa: BLE001 - reported by the test
        tally["errors"].append(repr(exc))
    finally:
        c.close()


def reset_downloads(port, streams, go_away):
    """One client opens ``streams`` downloads of /20m.bin, waits for their response heads (the
    streams are open on the backend, held by flow control), then resets them all and waits
    for a PING's answer, or (``go_away``) closes its connection with them open."""
    c = RawH2(port, timeout=10, auto_window=False)
    try:
        sids = [1 + 2 * i for i in range(streams)]
        c.send(b"".join(c.request(s, "/20m.bin", send=False) for s in sids))
        c.pump(lambda: all(c.status(s) for s in sids), 10, what="the response heads")
        if not go_away:
            c.send(b"".join(rst_stream_frame(s) for s in sids) + ping_frame(b"resetall"))
            c.pump(lambda: c.pings, 10, what="the PING after the resets")
            assert c.goaway is None, f"proxyd's own reset bound was hit: {c.goaway}"
    finally:
        c.close()


def test_clients_resetting_streams_do_not_get_the_shared_backend_connection_goawayed(
        start_proxyd, tls_cert, nghttpd_h2c):
    """nghttpd (nghttp2's rapid-reset defence: a burst of 1000 RST_STREAMs received per
    connection, 33/s after) behind bridge mode. 34 clients each open 90 downloads, get their
    heads, then reset them all (within proxyd's bound of 200 per connection) or go away with
    them open (no bound at all): 3060 backend streams cancelled. Meanwhile a 20 MiB download
    is in flight and three clients fetch small files in batches of 10. Before, every cancel
    went to the one shared connection: nghttpd answered GOAWAY INTERNAL_ERROR after ~1000
    and closed it (at once when it had no stream of its own left, resetting the TCP
    connection under proxyd's requests in flight): 70-270 of 20,000 h2load requests failed
    with 502 in three runs. Now no backend connection gets that far (nghttpd never sends
    GOAWAY), no small request fails and the download completes."""
    cert, key = tls_cert
    proxy = start_proxyd(bridge_config(cert, key, nghttpd_h2c.address, False))
    port = proxy.port()
    victim = RawH2(port, timeout=10, auto_window=False)
    stop, tallies, threads = threading.Event(), [], []
    try:
        victim.request(1, "/20m.bin")
        victim.pump(lambda: victim.status(1), 10, what="the download's head")
        for _ in range(3):
            tally = {"ok": 0, "failed": 0, "errors": []}
            tallies.append(tally)
            threads.append(threading.Thread(target=innocent_batches, args=(port, stop, tally),
                                            daemon=True))
            threads[-1].start()
        for n in range(34):
            reset_downloads(port, 90, go_away=n % 2 == 1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not victim.done(1) and not victim.closed and time.monotonic() < deadline:
            victim.send(window_update_frame(0, 1 << 22) + window_update_frame(1, 1 << 22))
            victim.recv_some(time.monotonic() + 1)
        assert 1 in victim.ended and 1 not in victim.rsts, (victim.rsts, victim.goaway)
        assert victim.data[1] == FILES["20m.bin"], victim.data[1]
    finally:
        victim.close()
    ok = sum(t["ok"] for t in tallies)
    failed = sum(t["failed"] for t in tallies)
    errors = [e for t in tallies for e in t["errors"]]
    print(f"\nresets through bridge mode: {ok} small requests served, {failed} failed")
    goaways = log_lines(proxy, r"sent GOAWAY")
    assert not goaways, f"the backend ended shared connections: {goaways[:3]}"
    assert ok > 0 and failed == 0 and not errors, (ok, failed, errors[:3])
    assert not log_lines(proxy, r"backend_failed"), log_lines(proxy, r"backend_failed")[:3]
