"""Interop of our SPDY codec with an independent implementation: the Node.js spdy-peer tool.

Strategy: the peer (spdy-transport, cross-checked against libspdylay) runs as a subprocess in plain
mode, one per protocol version. Our *client* codec drives ``spdy-server.js`` over a blocking socket
and must decode its SYN_REPLY header blocks and bodies (checked with ``x-body-sha256``) while the
server decodes ours (its ``/echo`` route reports what it saw). Then ``spdy-client.js`` talks to a
tiny threaded server built on our *server* codec (version sniffed from the first bytes, as the
network layer will do) and checks our responses itself (exit status, JSON report). zlib checks the
dictionary id of every header block, so passing both directions proves the dictionaries byte-exact.

The peer is found through ``PROXYD_SPDY_PEER`` (default ``<repo>/.cache/spdy-peer``); if it or
``node`` is missing the tests fail with a message rather than skip. Every subprocess is killed in a
``finally`` and every wait has a deadline.
"""

import contextlib
import hashlib
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from proxyd import events as ev
from tests.support import gated
from proxyd.codec.spdy import SpdyConnection, sniff_version

REPO = Path(__file__).resolve().parents[2]
PEER_DIR = Path(os.environ.get("PROXYD_SPDY_PEER", REPO / ".cache" / "spdy-peer"))
VERSIONS = ["spdy/3.1", "spdy/3", "spdy/2"]


@pytest.fixture(scope="module")
def node():
    """Path of ``node``; fails (never skips) when it or the peer tool is missing."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("`node` (Node.js 20) is not on PATH; the SPDY interop tests need it "
                    "(see tests/tools/spdy-peer/README.md)")
    for name in ("spdy-server.js", "spdy-client.js", "node_modules/spdy-transport"):
        if not (PEER_DIR / name).exists():
            pytest.fail(f"SPDY peer not found: {PEER_DIR / name} is missing; install the "
                        f"spdy-peer tool there (npm ci) or set PROXYD_SPDY_PEER to its directory")
    return path


def _read_first_line(stream, timeout):
    """The first line of a pipe, read in a helper thread so the wait has a deadline."""
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return b""


@contextlib.contextmanager
def node_server(node, protocol, tmp_path):
    """Run ``spdy-server.js --plain`` on a free port; yields the port; always killed."""
    errlog = open(tmp_path / f"server-{protocol.replace('/', '')}.err", "w+b")
    proc = subprocess.Popen([node, str(PEER_DIR / "spdy-server.js"), "--plain", "--port", "0",
                             "-q", "--protocol", protocol], cwd=PEER_DIR,
                            stdout=subprocess.PIPE, stderr=errlog)
    try:
        line = _read_first_line(proc.stdout, timeout=20)
        if not line:
            errlog.seek(0)
            pytest.fail(f"spdy-server.js did not report its port: {errlog.read()[-2000:]!r}")
        yield json.loads(line)["listening"]["port"]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        errlog.close()


def pattern(n):
    """Deterministic test body of ``n`` bytes."""
    return (b"0123456789abcdef" * (n // 16 + 1))[:n]


def run_client(version, port, requests, *, initial_window=65536, timeout=30):
    """Drive our client codec over a socket; ``requests`` are (method, path, headers, body).

    Returns ``(codec, results)``, results keyed by stream id with status, headers, body, reset
    code and whether the stream ended; fails on a session error or the deadline.
    """
    conn = SpdyConnection(version, client_side=True, initial_window=initial_window)
    conn.initiate()
    results, uploads = {}, {}
    for method, path, headers, body in requests:
        sid = conn.send_request(method, b"http", b"127.0.0.1:%d" % port, path, headers,
                                end_stream=body is None)
        results[sid] = {"path": path, "status": None, "headers": {}, "body": bytearray(),
                        "reset": None, "ended": False, "sent": body}
        if body is not None:
            uploads[sid] = memoryview(body)
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.5)
        while not all(r["ended"] or r["reset"] is not None for r in results.values()):
            assert time.monotonic() < deadline, f"deadline passed: {results}"
            for sid, rest in list(uploads.items()):
                window = conn.available_window(sid)
                if window and rest:
                    conn.send_data(sid, rest[:window], end_stream=len(rest) <= window)
                    uploads[sid] = rest[window:]
                    if not uploads[sid]:
                        del uploads[sid]
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            assert data, "the peer closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, ev.ResponseReceived):
                    res = results[event.stream_id]
                    res["status"] = event.status
                    for name, value in event.headers:
                        res["headers"].setdefault(name, []).append(value)
                elif isinstance(event, ev.DataReceived):
                    results[event.stream_id]["body"] += event.data
                    conn.acknowledge(event.stream_id, event.flow_length)
                elif isinstance(event, ev.StreamEnded):
                    results[event.stream_id]["ended"] = True
                elif isinstance(event, ev.StreamReset):
                    results[event.stream_id]["reset"] = event.error_code
                elif isinstance(event, ev.ConnectionTerminated):
                    assert event.remote, f"our client failed the session: {event}"
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    return conn, results


def check_download(res):
    """The body matches the peer's x-body-sha256 and content-length.

    spdy-server.js sometimes resets a stream right after its whole body went out (a documented
    quirk with 64 KiB windows); a reset is accepted only when the body is complete and correct.
    """
    assert res["status"] == 200, res
    body = bytes(res["body"])
    assert int(res["headers"][b"content-length"][0]) == len(body)
    assert res["headers"][b"x-body-sha256"][0].decode() == hashlib.sha256(body).hexdigest()
    assert res["ended"] or res["reset"] is not None


@pytest.mark.parametrize("client_version, server_protocol", [
    ("spdy/3.1", "spdy/3.1"), ("spdy/3", "spdy/3"), ("spdy/2", "spdy/2"),
    ("spdy/3", "spdy/3.1"),  # our SPDY/3 session upgrades when the peer proves it speaks 3.1
])
def test_our_client_against_node_server(node, tmp_path, client_version, server_protocol):
    """Our client: concurrent downloads across windows, and an upload the peer echoes back."""
    upload = pattern(150_000)
    headers = [(b"x-proxyd-test", b"interop"), (b"x-multi", b"one"), (b"x-multi", b"two"),
               (b"user-agent", b"proxyd-tests")]
    requests = [(b"GET", b"/bytes/300000", [], None), (b"GET", b"/bytes/70000", [], None),
                (b"GET", b"/bytes/70000", [], None),
                (b"POST", b"/echo/sub?q=1", headers + [(b"content-length", b"150000")], upload)]
    with node_server(node, server_protocol, tmp_path) as port:
        conn, results = run_client(client_version, port, requests)
    downloads = [r for r in results.values() if r["path"].startswith(b"/bytes/")]
    for res in downloads:
        check_download(res)
    echo = next(r for r in results.values() if r["path"].startswith(b"/echo"))
    assert echo["status"] == 200 and echo["ended"]
    seen = json.loads(bytes(echo["body"]))
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo/sub?q=1"
    assert seen["authority"] == f"127.0.0.1:{port}"
    assert seen["scheme"] == "http"
    assert seen["headers"]["x-proxyd-test"] == "interop"
    assert seen["headers"]["x-multi"].replace(" ", "") in ("one,two", "one\x00two")
    assert seen["body_length"] == len(upload)
    assert seen["body_sha256"] == hashlib.sha256(upload).hexdigest()
    if client_version == server_protocol:
        assert seen["protocol"] == server_protocol
    else:  # the peer's view when /echo arrived depends on whether our session update was first
        assert seen["protocol"] in (client_version, server_protocol)
    assert conn.version == server_protocol
    assert conn.session_window_overruns == 0 or server_protocol == "spdy/3.1"


class CodecServer:
    """A threaded SPDY server on 127.0.0.1 built on our server codec, for spdy-client.js.

    The version is sniffed from the first bytes and the codec built with ``sniffed=True``, as on
    the proxy's cleartext listeners. ``/bytes/N`` returns N pattern bytes, anything else a short
    text; every response carries the sha256 of its body and of the request body, so the Node
    client verifies both directions itself. ``sent_before_31`` records, per connection that turned
    SPDY/3.1, the DATA bytes sent before the input carrying the peer's session WINDOW_UPDATE.
    """

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads = []
        self.requests = []
        self.failures = []
        self.goaways = []
        self.versions = []
        self.sent_before_31 = []
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.acceptor.start()

    def _accept_loop(self):
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def close(self):
        """Stop accepting, let connection threads end (each polls ``stop``), join with deadline."""
        self.stop.set()
        self.listener.close()
        self.acceptor.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=5)

    def _serve(self, sock):
        try:
            sock.settimeout(0.2)
            first = b""
            deadline = time.monotonic() + 10
            while len(first) < 8 and time.monotonic() < deadline and not self.stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                first += chunk
            version = sniff_version(first, offered=["spdy/3.1", "spdy/3", "spdy/2"])
            assert version, f"not SPDY: {first[:16]!r}"
            conn = SpdyConnection(version, client_side=False, sniffed=True)
            conn.initiate()
            self._run(sock, conn, first)
            self.versions.append(conn.version)
        except Exception as exc:  # reported by the test
            self.failures.append(repr(exc))
        finally:
            sock.close()

    def _run(self, sock, conn, data):
        paths, hashes, sizes, pending = {}, {}, {}, {}
        sent, was_31 = 0, False
        while not self.stop.is_set():
            events = conn.receive_data(data) if data else ()
            if not was_31 and conn.version == "spdy/3.1":
                was_31 = True
                self.sent_before_31.append(sent)
            for event in events:
                if isinstance(event, ev.RequestReceived):
                    event = gated(event)
                    self.requests.append(event)
                    paths[event.stream_id] = event.path
                    hashes[event.stream_id] = hashlib.sha256()
                    sizes[event.stream_id] = 0
                elif isinstance(event, ev.DataReceived):
                    hashes[event.stream_id].update(event.data)
                    sizes[event.stream_id] += len(event.data)
                    conn.acknowledge(event.stream_id, event.flow_length)
                elif isinstance(event, ev.StreamEnded):
                    pending[event.stream_id] = self._respond(conn, event.stream_id,
                                                             paths[event.stream_id],
                                                             hashes[event.stream_id], sizes)
                elif isinstance(event, ev.StreamReset):
                    pending.pop(event.stream_id, None)
                elif isinstance(event, ev.ConnectionTerminated):
                    (self.goaways if event.remote else self.failures).append(event)
            for sid, rest in list(pending.items()):
                window = conn.available_window(sid)
                if window:
                    conn.send_data(sid, rest[:window], end_stream=len(rest) <= window)
                    sent += min(window, len(rest))
                    rest = rest[window:]
                    if rest:
                        pending[sid] = rest
                    else:
                        del pending[sid]
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            if conn.wants_close:
                return
            try:
                data = sock.recv(65536)
            except socket.timeout:
                data = b""
                continue
            except OSError:
                return
            if not data:
                return

    @staticmethod
    def _respond(conn, sid, path, request_hash, sizes):
        if path.startswith(b"/bytes/"):
            body = pattern(int(path[7:]))
        else:
            body = b"hello from proxyd over " + conn.version.encode() + b"\n"
        conn.send_response(sid, 200, [
            (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body)),
            (b"x-body-sha256", hashlib.sha256(body).hexdigest().encode()),
            (b"x-request-body-sha256", request_hash.hexdigest().encode()),
            (b"x-request-body-length", b"%d" % sizes[sid]),
            (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])
        return memoryview(body)


@pytest.fixture
def codec_server():
    """A running :class:`CodecServer`, closed after the test."""
    server = CodecServer()
    try:
        yield server
    finally:
        server.close()


def run_node_client(node, args, timeout=60):
    """Run spdy-client.js with ``--json``; returns (exit status, parsed report, stderr)."""
    proc = subprocess.Popen([node, str(PEER_DIR / "spdy-client.js"), "--json", "--timeout", "30000"]
                            + args, cwd=PEER_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    try:
        report = json.loads(out)
    except ValueError:
        report = {"raw": out.decode(errors="replace")[-2000:]}
    return proc.returncode, report, err.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("version", VERSIONS)
def test_node_client_against_our_server(node, codec_server, version):
    """spdy-client.js gets /x and concurrent /bytes downloads from our server codec, verified."""
    target = f"127.0.0.1:{codec_server.port}"
    code, report, err = run_node_client(node, [
        "--plain", "--protocol", version, "-c", "3", "-H", "x-test: interop", "-H",
        "cookie: a=1", "-H", "cookie: b=2", "--expect-status", "200", target, "/x",
        "/bytes/200000"])
    assert code == 0, (report, err, codec_server.failures)
    assert report["ok"] is True
    requests = report["requests"]
    assert len(requests) == 6 and all(r["status"] == 200 for r in requests)
    small = next(r for r in requests if r["path"] == "/x")
    assert small["body_text"] == f"hello from proxyd over {version}\n"
    assert "set-cookie" in small["headers"]
    wire = report["connections"][0]["wire"]["received"]
    assert wire["control_versions"] == [2 if version == "spdy/2" else 3]
    assert (wire["session_window_updates"] > 0) == (version == "spdy/3.1")
    # what our server decoded from the peer's header blocks
    assert len(codec_server.requests) == 6
    for req in codec_server.requests:
        assert req.method == b"GET" and req.scheme == b"http"
        assert req.authority == target.encode()
        assert (b"x-test", b"interop") in req.headers
        assert [v for n, v in req.headers if n == b"cookie"] in ([b"a=1", b"b=2"], [b"a=1; b=2"])
        assert req.http_version == {"spdy/3.1": b"SPDY/3.1", "spdy/3": b"SPDY/3",
                                    "spdy/2": b"SPDY/2"}[version]
    assert {r.path for r in codec_server.requests} == {b"/x", b"/bytes/200000"}
    deadline = time.monotonic() + 10
    while not codec_server.versions and time.monotonic() < deadline:
        time.sleep(0.05)  # the connection thread notes its version once the client has gone
    assert codec_server.failures == []
    assert codec_server.versions == [version]


@pytest.mark.parametrize("version", VERSIONS)
def test_node_client_uploads_to_our_server(node, codec_server, version):
    """Concurrent 300 KiB uploads cross our receive windows; the peer checks our request hashes."""
    code, report, err = run_node_client(node, [
        "--plain", "--protocol", version, "-X", "POST", "--data-size", "300KiB", "-c", "3",
        "--expect-status", "200", f"127.0.0.1:{codec_server.port}", "/upload"])
    assert code == 0, (report, err, codec_server.failures)
    assert report["ok"] is True
    assert [r["headers"]["x-request-body-length"] for r in report["requests"]] == ["307200"] * 3
    sent = report["connections"][0]["wire"]["received"]
    if version == "spdy/2":
        assert sent["frames"].get("WINDOW_UPDATE", 0) == 0
    else:
        assert sent["stream_window_updates"] > 0
    assert codec_server.failures == []


def test_node_31_client_with_64k_windows_is_never_overrun(node, codec_server):
    """Issue #9, item 12: a SPDY/3.1 client that sends no session WINDOW_UPDATE at the start.

    spdy-client.js with ``--window 65536`` (nothing to add to the 64 KiB session window) asks for
    4 KiB, 1 MiB and 100 B at once over cleartext. Our sniffed server must send at most 64 KiB of
    DATA before the client's first session WINDOW_UPDATE, then run as 3.1; the client checks the
    bodies' sha256.
    """
    code, report, err = run_node_client(node, [
        "--plain", "--protocol", "spdy/3.1", "--window", "65536", "--expect-status", "200",
        f"127.0.0.1:{codec_server.port}", "/bytes/4096", "/bytes/1048576", "/bytes/100"])
    assert code == 0, (report, err, codec_server.failures)
    assert [r["body_length"] for r in report["requests"]] == [4096, 1048576, 100]
    assert report["connections"][0]["wire"]["sent"]["session_window_updates"] > 0
    for thread in codec_server.threads:  # each notes its version once the client has gone
        thread.join(timeout=10)
    assert codec_server.failures == []
    assert codec_server.versions == ["spdy/3.1"]
    assert len(codec_server.sent_before_31) == 1 and codec_server.sent_before_31[0] <= 65536
