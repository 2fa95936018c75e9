#!/usr/bin/env python3
"""proxyd demo backend: a small, real HTTP/1.1 server (stdlib only).

It is both the README's demo application and the backend of the end-to-end tests, so it is meant
to be boring and fast: one thread per connection, blocking sockets, keep-alive, a hand-written
HTTP/1.1 request parser (request line, headers, content-length and chunked bodies, trailers), and
response bodies sliced out of one precomputed pattern buffer (a 100 MiB download is a few hundred
``sendall`` calls on memoryviews, not a Python loop per byte).

    python demo/backend.py --port 8081 [--host 127.0.0.1] [-v]

prints one JSON line ``{"listening": {"host": ..., "port": N}, "pid": ...}`` once it accepts
connections (``--port 0`` picks a free port) and stops on SIGTERM or SIGINT.

Routes (every route answers HEAD like GET without the body):

    /                     a short text hello ("proxyd demo backend")
    /bytes/N              N deterministic bytes, content-length, x-body-sha256
    /chunked/N            the same bytes with chunked transfer-encoding (and x-body-sha256)
    /echo                 JSON: method, target, http_version, headers ([name, value] in received
                          order), body_length, body_sha256, trailers; plus the response headers
                          x-request-body-sha256 and x-request-body-length
    /status/CODE          that status (204 and 304 without a body)
    /redirect?to=URL&code=302   Location: URL verbatim
    /location-self        302 to http://<received Host>/landing?q=1#frag
    /set-headers?n=v&...  adds the given response headers (repeated names allowed)
    /trailers             chunked response with the trailer ``x-trailer: yes``
    /early-hints          103 Early Hints (link: </style.css>; rel=preload), then 200
    /delay?ms=N           answers after N ms
    /slow?chunks=K&interval=MS&size=B   K chunks of B bytes, one every MS ms (content-length K*B)
    /abort?after=N        content-length 10 MiB, N body bytes, then the socket is closed
    /close-before-response   closes the connection without answering
    /_count               JSON counters: connections, requests, peak concurrent connections,
                          recent request targets (requests to /_count and /_reset are not counted,
                          nor are the connections that carry them)
    /_reset               zeroes the counters

The pattern: byte i of every generated body is ``PATTERN[i % PERIOD]``; ``body_sha256(n)`` and
``body_bytes(offset, n)`` are importable for tests that want to compute the same bytes locally.
"""

import argparse
import collections
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import parse_qsl, urlsplit

PERIOD = 1048573  # not a power of two, so shifted or duplicated 64 KiB blocks change the hash
SEND_CHUNK = 256 * 1024


def _make_pattern(period):
    out = bytearray()
    counter = 0
    while len(out) < period:
        out += hashlib.sha256(b"proxyd-demo-%d" % counter).digest()
        counter += 1
    return bytes(out[:period])


PATTERN = _make_pattern(PERIOD)
# PATTERN followed by its own first SEND_CHUNK bytes: any window of up to SEND_CHUNK bytes starting
# anywhere in the period is one contiguous slice.
_WRAPPED = memoryview(PATTERN + PATTERN[:SEND_CHUNK])

_sha_cache = {}
_sha_lock = threading.Lock()


def iter_body(n, offset=0, chunk=SEND_CHUNK):
    """Yield memoryviews covering bytes [offset, offset+n) of the pattern stream."""
    chunk = min(chunk, SEND_CHUNK)
    pos = offset
    end = offset + n
    while pos < end:
        start = pos % PERIOD
        size = min(chunk, end - pos)
        yield _WRAPPED[start:start + size]
        pos += size


def body_bytes(offset, n):
    """Bytes [offset, offset+n) of the deterministic body stream."""
    return b"".join(bytes(v) for v in iter_body(n, offset))


def body_sha256(n):
    """Hex sha256 of the first n bytes of the pattern stream (cached)."""
    with _sha_lock:
        if n in _sha_cache:
            return _sha_cache[n]
    h = hashlib.sha256()
    full, rest = divmod(n, PERIOD)
    whole = memoryview(PATTERN)
    for _ in range(full):
        h.update(whole)
    h.update(whole[:rest])
    digest = h.hexdigest()
    with _sha_lock:
        if len(_sha_cache) > 64:
            _sha_cache.clear()
        _sha_cache[n] = digest
    return digest


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.1; answer 400 and close."""


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.connections = 0
        self.active = getattr(self, "active", 0)
        self.peak = self.active
        self.requests = 0
        self.bad_requests = 0
        self.targets = collections.deque(maxlen=500)

    def conn_open(self):
        with self.lock:
            self.connections += 1
            self.active += 1

    def conn_close(self, counted):
        with self.lock:
            if counted:
                self.active -= 1

    def uncount_connection(self):
        """A connection whose first request is /_count or /_reset is the tests' control
        channel, not traffic: it is taken out of every counter."""
        with self.lock:
            self.connections -= 1
            self.active -= 1

    def request(self, target):
        with self.lock:
            self.requests += 1
            # peak concurrency as seen by arriving requests (control connections excluded)
            self.peak = max(self.peak, self.active)
            self.targets.append(target)

    def snapshot(self):
        with self.lock:
            return {
                "connections": self.connections,
                "active": self.active,
                "peak_connections": self.peak,
                "requests": self.requests,
                "bad_requests": self.bad_requests,
                "targets": list(self.targets),
            }


COUNTERS = Counters()
VERBOSE = False
MAX_HEAD = 64 * 1024
REASONS = {
    100: "Continue", 103: "Early Hints", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large", 418: "I'm a teapot",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


def log(msg):
    if VERBOSE:
        sys.stderr.write("backend: %s\n" % msg)
        sys.stderr.flush()


class Request:
    __slots__ = ("method", "target", "version", "headers", "path", "query", "keep_alive",
                 "conn")

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Connection:
    """One client connection: a small buffered reader plus the request loop."""

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.eof = False
        self.counted = True

    # -- reading -----------------------------------------------------------------------------
    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_head(self):
        """Return the raw head (without the blank line) or None on clean EOF."""
        start = 0
        while True:
            # tolerate (and drop) empty lines before a request line, as RFC 9112 allows
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
            idx = self.buf.find(b"\r\n\r\n", max(0, start - 3))
            if idx >= 0:
                head = bytes(self.buf[:idx])
                del self.buf[:idx + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("request head too large")
            start = len(self.buf)
            if not self._fill():
                if self.buf:
                    raise BadRequest("connection closed inside a request head")
                return None

    def read_line(self, limit=8192):
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[:idx + 2]
                return line
            if len(self.buf) > limit:
                raise BadRequest("line too long")
            if not self._fill():
                raise BadRequest("connection closed inside a chunked body")

    def read_exact_into(self, n, sink):
        """Feed exactly n body bytes to sink(memoryview)."""
        while n > 0:
            if not self.buf:
                if not self._fill():
                    raise BadRequest("connection closed inside a body")
            take = min(n, len(self.buf))
            sink(memoryview(self.buf)[:take])
            del self.buf[:take]
            n -= take

    def read_body(self, req, sink):
        """Read the request body into sink; returns (length, trailers)."""
        te = req.header_all("transfer-encoding")
        cl = req.header_all("content-length")
        if te:
            codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
            if not codings or codings[-1] != "chunked":
                raise BadRequest("unsupported transfer-encoding %r" % te)
            return self._read_chunked(sink)
        if cl:
            values = {c.strip() for v in cl for c in v.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise BadRequest("bad content-length %r" % cl)
            n = int(next(iter(values)))
            self.read_exact_into(n, sink)
            return n, []
        return 0, []

    def _read_chunked(self, sink):
        total = 0
        while True:
            line = self.read_line()
            size_s = line.split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                raise BadRequest("bad chunk size %r" % line[:40])
            if size < 0:
                raise BadRequest("bad chunk size")
            if size == 0:
                break
            self.read_exact_into(size, sink)
            total += size
            if self.read_line() != b"":
                raise BadRequest("missing CRLF after chunk")
        trailers = []
        while True:
            line = self.read_line()
            if line == b"":
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise BadRequest("bad trailer line")
            trailers.append([name.decode("latin-1"), value.strip().decode("latin-1")])
        return total, trailers

    def drain_body(self, req):
        self.read_body(req, lambda mv: None)

    # -- parsing -----------------------------------------------------------------------------
    def parse_head(self, head):
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise BadRequest("bad request line %r" % lines[0][:80])
        method, target, version = parts
        if not method or not all(c in _TOKEN for c in method):
            raise BadRequest("bad method")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadRequest("bad version %r" % version)
        if not target:
            raise BadRequest("empty target")
        headers = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                raise BadRequest("obsolete line folding")
            name, sep, value = line.partition(b":")
            if not sep or not name or not all(c in _TOKEN for c in name):
                raise BadRequest("bad header line %r" % line[:80])
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        req = Request()
        req.conn = self
        req.method = method.decode("ascii")
        req.target = target.decode("latin-1")
        req.version = version.decode("ascii")[5:]
        req.headers = headers
        split = urlsplit(req.target)
        req.path = split.path or "/"
        req.query = parse_qsl(split.query, keep_blank_values=True)
        tokens = {t.strip().lower() for v in req.header_all("connection") for t in v.split(",")}
        if req.version == "1.1":
            req.keep_alive = "close" not in tokens
        else:
            req.keep_alive = "keep-alive" in tokens
        return req

    # -- writing -----------------------------------------------------------------------------
    @staticmethod
    def build_head(req, status, headers):
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
        for name, value in headers:
            lines.append("%s: %s" % (name, value))
        if status >= 200 and not req.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_head(self, req, status, headers):
        self.sock.sendall(self.build_head(req, status, headers))

    # -- main loop ---------------------------------------------------------------------------
    def serve(self):
        first = True
        try:
            while True:
                try:
                    head = self.read_head()
                    if head is None:
                        return
                    req = self.parse_head(head)
                except BadRequest as exc:
                    with COUNTERS.lock:
                        COUNTERS.bad_requests += 1
                        COUNTERS.requests += 1
                        COUNTERS.peak = max(COUNTERS.peak, COUNTERS.active)
                    log("%s: 400 %s" % (self.addr, exc))
                    body = b"bad request\n"
                    self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\n"
                                      b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                      % (len(body), body))
                    return
                control = req.path in ("/_count", "/_reset")
                if first and control:
                    COUNTERS.uncount_connection()
                    self.counted = False
                first = False
                if not control:
                    COUNTERS.request(req.method + " " + req.target)
                log("%s %s %s HTTP/%s" % (self.addr, req.method, req.target, req.version))
                try:
                    keep = dispatch(req)
                except BadRequest as exc:
                    log("%s: bad body: %s" % (self.addr, exc))
                    return
                if not keep or not req.keep_alive:
                    return
        except (OSError, ValueError) as exc:
            log("%s: %s" % (self.addr, exc))
        finally:
            try:
                self.sock.close()
            except OSError:
                pass


# -- responses ---------------------------------------------------------------------------------

def send_simple(req, status, body=b"", headers=(), content_type="text/plain; charset=utf-8"):
    """Read (and discard) the request body, then answer with a small body."""
    req.conn.drain_body(req)
    hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", content_type)]
    hdrs.extend(headers)
    no_body = status in (204, 304) or 100 <= status < 200
    if not no_body:
        hdrs.append(("Content-Length", str(len(body))))
    head = req.conn.build_head(req, status, hdrs)
    if body and not no_body and req.method != "HEAD":
        head += body
    req.conn.sock.sendall(head)
    return True


def send_pattern(req, n, chunked=False, extra=(), pace=None):
    req.conn.drain_body(req)
    hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", "application/octet-stream"),
            ("X-Body-SHA256", body_sha256(n))]
    hdrs.extend(extra)
    if chunked:
        hdrs.append(("Transfer-Encoding", "chunked"))
    else:
        hdrs.append(("Content-Length", str(n)))
    conn = req.conn
    conn.send_head(req, 200, hdrs)
    if req.method == "HEAD":
        return True
    sock = conn.sock
    if chunked:
        for mv in iter_body(n, chunk=64 * 1024):
            sock.sendall(b"%x\r\n" % len(mv))
            sock.sendall(mv)
            sock.sendall(b"\r\n")
        sock.sendall(b"0\r\n\r\n")
    else:
        for mv in iter_body(n):
            sock.sendall(mv)
    return True


def route_hello(req):
    body = (b"proxyd demo backend\n"
            b"This page was served by demo/backend.py, an HTTP/1.1 application behind proxyd.\n")
    if req.header("accept", "").startswith("text/html"):
        body = (b"<!doctype html><title>proxyd demo backend</title>"
                b"<h1>proxyd demo backend</h1><p>served over HTTP/1.1 behind proxyd</p>\n")
        return send_simple(req, 200, body, content_type="text/html; charset=utf-8")
    return send_simple(req, 200, body)


def route_echo(req):
    h = hashlib.sha256()
    length, trailers = req.conn.read_body(req, h.update)
    digest = h.hexdigest()
    doc = {
        "method": req.method,
        "target": req.target,
        "http_version": req.version,
        "headers": [[k, v] for k, v in req.headers],
        "body_length": length,
        "body_sha256": digest,
        "trailers": trailers,
        "client": "%s:%d" % req.conn.addr[:2],
    }
    body = json.dumps(doc, indent=1).encode() + b"\n"
    hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", "application/json"),
            ("X-Request-Body-SHA256", digest), ("X-Request-Body-Length", str(length)),
            ("Content-Length", str(len(body)))]
    head = req.conn.build_head(req, 200, hdrs)
    req.conn.sock.sendall(head + body if req.method != "HEAD" else head)
    return True


def _int_arg(req, name, default, lo=0, hi=1 << 40):
    for k, v in req.query:
        if k == name:
            try:
                return max(lo, min(hi, int(v)))
            except ValueError:
                raise BadArg("%s must be an integer" % name)
    return default


class BadArg(Exception):
    pass


def route(req):
    path = req.path
    if path == "/":
        return route_hello(req)
    if path.startswith("/bytes/") or path.startswith("/chunked/"):
        try:
            n = int(path.split("/", 2)[2])
        except ValueError:
            return send_simple(req, 404, b"not found\n")
        return send_pattern(req, n, chunked=path.startswith("/chunked/"))
    if path == "/echo":
        return route_echo(req)
    if path.startswith("/status/"):
        try:
            code = int(path[len("/status/"):])
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            return send_simple(req, 400, b"status must be 200..599\n")
        return send_simple(req, code, b"status %d\n" % code)
    if path == "/redirect":
        to = dict(req.query).get("to", "/")
        code = _int_arg(req, "code", 302, 300, 399)
        return send_simple(req, code, b"redirect\n", headers=[("Location", to)])
    if path == "/location-self":
        host = req.header("host", "")
        return send_simple(req, 302, b"see /landing\n",
                           headers=[("Location", "http://%s/landing?q=1#frag" % host)])
    if path == "/landing":
        return send_simple(req, 200, b"landing\n")
    if path == "/set-headers":
        close = any(k.lower() == "connection" and "close" in v.lower() for k, v in req.query)
        send_simple(req, 200, b"headers set\n", headers=list(req.query))
        return not close
    if path == "/trailers":
        req.conn.drain_body(req)
        hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", "text/plain"),
                ("Transfer-Encoding", "chunked"), ("Trailer", "x-trailer")]
        req.conn.send_head(req, 200, hdrs)
        if req.method != "HEAD":
            body = b"body before trailers\n"
            req.conn.sock.sendall(b"%x\r\n%s\r\n0\r\nx-trailer: yes\r\n\r\n" % (len(body), body))
        return True
    if path == "/early-hints":
        req.conn.drain_body(req)
        if req.version == "1.1":
            req.conn.sock.sendall(b"HTTP/1.1 103 Early Hints\r\n"
                                  b"Link: </style.css>; rel=preload\r\n\r\n")
        return send_simple(req, 200, b"after early hints\n",
                           headers=[("Link", "</style.css>; rel=preload")])
    if path == "/delay":
        ms = _int_arg(req, "ms", 1000, 0, 600000)
        req.conn.drain_body(req)
        time.sleep(ms / 1000.0)
        return send_simple(req, 200, b"delayed %d ms\n" % ms)
    if path == "/slow":
        chunks = _int_arg(req, "chunks", 10, 0, 100000)
        interval = _int_arg(req, "interval", 100, 0, 600000)
        size = _int_arg(req, "size", 1024, 1, SEND_CHUNK)
        req.conn.drain_body(req)
        total = chunks * size
        hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", "application/octet-stream"),
                ("X-Body-SHA256", body_sha256(total)), ("Content-Length", str(total))]
        req.conn.send_head(req, 200, hdrs)
        if req.method != "HEAD":
            for i, mv in enumerate(iter_body(total, chunk=size)):
                if i:
                    time.sleep(interval / 1000.0)
                req.conn.sock.sendall(mv)
        return True
    if path == "/abort":
        after = _int_arg(req, "after", 1024, 0, 10 * 1024 * 1024 - 1)
        req.conn.drain_body(req)
        total = 10 * 1024 * 1024
        hdrs = [("Server", "proxyd-demo-backend"), ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(total))]
        req.conn.send_head(req, 200, hdrs)
        if req.method != "HEAD":
            for mv in iter_body(after):
                req.conn.sock.sendall(mv)
        try:
            req.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return False
    if path == "/close-before-response":
        req.conn.drain_body(req)
        try:
            req.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return False
    if path == "/_count":
        body = json.dumps(COUNTERS.snapshot()).encode() + b"\n"
        return send_simple(req, 200, body, content_type="application/json")
    if path == "/_reset":
        with COUNTERS.lock:
            COUNTERS.reset()
        return send_simple(req, 200, b"reset\n")
    return send_simple(req, 404, b"not found\n")


def dispatch(req):
    if req.header("expect", "").lower() == "100-continue" and req.version == "1.1":
        req.conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        return route(req)
    except BadArg as exc:
        return send_simple(req, 400, str(exc).encode() + b"\n")


# -- server ------------------------------------------------------------------------------------

def handle(sock, addr):
    COUNTERS.conn_open()
    conn = Connection(sock, addr)
    try:
        conn.serve()
    finally:
        COUNTERS.conn_close(conn.counted)


def main(argv=None):
    global VERBOSE
    p = argparse.ArgumentParser(description="proxyd demo HTTP/1.1 backend")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    VERBOSE = args.verbose

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(1024)
    host, port = lsock.getsockname()[:2]

    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    body_sha256(0)
    sys.stdout.write(json.dumps({"listening": {"host": host, "port": port}, "pid": os.getpid()})
                     + "\n")
    sys.stdout.flush()
    try:
        while not stopping.is_set():
            try:
                sock, addr = lsock.accept()
            except OSError as exc:
                log("accept: %s" % exc)
                time.sleep(0.01)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=handle, args=(sock, addr), daemon=True)
            t.start()
    except KeyboardInterrupt:
        pass
    finally:
        lsock.close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
