#!/usr/bin/env python3
"""Benchmark proxyd against nghttpx in front of the same nginx backend.

One command (see ``bench/README.md`` and DESIGN.md section 8)::

    python bench/run.py [--quick] [--mode default|bridge|all]
                        [--scenarios S1,S3,B1] [--proxies proxyd,nghttpx]
                        [--repeat N] [--json PATH]

It creates a temporary directory holding a self-signed certificate, the
static files served by nginx (100 B, 4 KiB, 1 MiB, 100 MiB) and the
configuration of every process; starts nginx on a free loopback port, then
nghttpx and/or proxyd in front of it (TLS, ALPN h2), and runs the scenarios
with h2load (and curl for S6), interleaving the proxies (proxyd, nghttpx,
proxyd, nghttpx, ... with ``--repeat``).  For every run it records the
client-side figures reported by h2load and, from ``/proc``, the CPU time
(utime + stime of the proxy's process tree) and the peak RSS (VmHWM, reset
through ``/proc/PID/clear_refs`` before each run when the kernel allows it).

Scenarios:

S1  100-byte responses, ``-c10 -m10``: requests per second.
S2  4 KiB responses, ``-c10 -m10``: requests per second.
S3  1 MiB responses, ``-c4 -m1``: MB/s (10^6 bytes per second of body).
S4  100-byte responses, ``-c100 -m100``: failures and p99 latency (computed
    from h2load's ``--log-file``; h2load itself prints min/max/mean/sd).
S5  one 100 MiB download (``-n1 -c1``): MB/s.
S6  a slow client: curl over h2 reading 100 MiB at ``--limit-rate 5M``
    while the proxy's RSS is sampled every 0.5 s; reports the RSS growth
    (max during minus before).  Target for proxyd: <= 32 MiB.

W1..W4 are the loads of S1..S4 with two worker processes on each side, in
the same run: proxyd ``workers: 2`` (a supervisor and two workers sharing
the listening socket) and ``nghttpx -n2`` (two worker threads); ``--mode
workers`` runs only them.  Every other scenario runs proxyd with
``workers: 1`` (one process) and nghttpx with ``-n1``.

B1..B6 are the same loads with both proxies in bridge mode: HTTP/2 over TLS
to a second nginx listener (``listen ... ssl http2``, a certificate for
localhost signed by a test CA made here), verified by both proxies against
that CA (nghttpx ``-b'127.0.0.1,PORT;;proto=h2;tls;sni=localhost'
--cacert=CA``, proxyd ``mode: bridge`` with
``tls: {ca: CA, server_name: localhost}``).  Bridge
runs also sample, every 0.1 s, how many established connections the
proxy's processes hold to the backend port (from ``/proc/PID/fd`` and
netlink sock_diag).  ``--mode`` picks the group (default: both, S first).

A table (scenario, metric, proxyd, nghttpx, ratio proxyd/nghttpx) goes to
stdout; every figure, every individual run and a description of the machine
go to a JSON file (``--json``, by default a new file in the system's temp
directory, whose path is printed).

Every process started here is stopped in a ``finally`` block, every wait has
a deadline and every load is bounded in request count and time.  Only
loopback addresses are used.
"""

import argparse
import dataclasses
import datetime
import grp
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
MIB = 1 << 20

#: Static files served by nginx: URL path -> size in bytes.
FILES = {
    "/100b": 100,
    "/4k": 4 * 1024,
    "/1m": 1 * MIB,
    "/100m": 100 * MIB,
}

#: S6 settings: curl's ``--limit-rate`` and the resulting rate in bytes/s
#: (curl's suffixes are powers of 1024).
SLOW_RATE = "5M"
SLOW_RATE_BPS = 5 * MIB
#: Target of DESIGN.md section 5 for proxyd's RSS growth during S6.
SLOW_RSS_TARGET_MIB = 32

#: A run during which processes foreign to the benchmark used more than
#: this share of all CPUs is flagged as noisy.
NOISE_SHARE = 0.10

#: Target of the RSS sampling period during S6, in seconds.
SAMPLE_PERIOD = 0.5


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: what to fetch, how, and how much of it."""

    key: str
    title: str
    path: str
    clients: int
    streams: int
    requests: int
    quick_requests: int
    kind: str  # "h2load" or "slow"
    mode: str = "default"  # the proxies' mode: "default" or "bridge"

    def count(self, quick):
        """Return the number of requests (h2load) for this mode."""
        return self.quick_requests if quick else self.requests


SCENARIOS = {
    s.key: s
    for s in (
        Scenario("S1", "100 B, -c10 -m10", "/100b", 10, 10, 100000, 10000,
                 "h2load"),
        Scenario("S2", "4 KiB, -c10 -m10", "/4k", 10, 10, 100000, 10000,
                 "h2load"),
        Scenario("S3", "1 MiB, -c4 -m1", "/1m", 4, 1, 2000, 200, "h2load"),
        Scenario("S4", "100 B, -c100 -m100", "/100b", 100, 100, 20000, 10000,
                 "h2load"),
        Scenario("S5", "100 MiB, -n1 -c1", "/100m", 1, 1, 1, 1, "h2load"),
        Scenario("S6", "slow client, curl h2 --limit-rate 5M", "/100m", 1, 1,
                 1, 1, "slow"),
    )
}
# B1..B6: the loads of S1..S6 through both proxies in bridge mode (HTTP/2
# over verified TLS to an HTTP/2 nginx backend instead of HTTP/1.1).
SCENARIOS.update(
    ("B" + s.key[1:], dataclasses.replace(
        s, key="B" + s.key[1:], title="bridge, " + s.title, mode="bridge"))
    for s in list(SCENARIOS.values()))
# W1..W4: the loads of S1..S4 with two workers on each side (default mode).
SCENARIOS.update(
    ("W" + key[1:], dataclasses.replace(
        SCENARIOS[key], key="W" + key[1:],
        title="2 workers, " + SCENARIOS[key].title, mode="workers"))
    for key in ("S1", "S2", "S3", "S4"))

#: Proxy modes: default (HTTP/1.1 backend) runs S1..S6, bridge runs B1..B6,
#: workers runs W1..W4 (HTTP/1.1 backend, two workers per proxy).
MODES = ("default", "bridge", "workers")
#: Worker processes (proxyd) or threads (nghttpx -n) per proxy mode.
WORKERS = {"default": 1, "bridge": 1, "workers": 2}

#: Wall-clock bound of S6: the whole 100 MiB at 5 MiB/s is 20 s; --quick
#: stops curl after 10 s (about 50 MiB), which is plenty to see whether the
#: proxy buffers what the backend sends faster than the client reads.
SLOW_MAX_TIME = {False: 60, True: 10}

#: Subprocess deadline of one h2load run, seconds.
H2LOAD_TIMEOUT = {False: 300, True: 120}

PROXIES = ("proxyd", "nghttpx")

#: Execution order (the table keeps S1..S6).  S6 runs first, right after the
#: warm-up, so that heap left over by S4's 10000 concurrent streams or S5's
#: fast download cannot hide a slow client's RSS growth; S4 runs last so
#: that its leftovers do not affect the others.
RUN_ORDER = ("S6", "S1", "S2", "S3", "S5", "S4",
             "B6", "B1", "B2", "B3", "B5", "B4",
             "W1", "W2", "W3", "W4")

#: Period of the backend connection count sampling during every bridge run.
CONN_SAMPLE_PERIOD = 0.1

#: Server name of the bridge backend's certificate, sent as SNI and verified
#: by both proxies (proxyd ``server_name``, nghttpx ``sni=`` in ``-b``).
#: A DNS name: nghttpx 1.52 rejects the certificate ("hostname does not
#: match") when it has to verify the IP address 127.0.0.1 against the
#: certificate's IP:127.0.0.1 subjectAltName, which proxyd and curl accept.
BACKEND_TLS_NAME = "localhost"


class BenchError(Exception):
    """A setup step failed; the message says which and why."""


# ---------------------------------------------------------------------------
# small helpers

def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, proc, timeout=15.0, name="process", log=None):
    """Poll until 127.0.0.1:port accepts connections, or raise BenchError.

    Fails early when ``proc`` exits; the tail of ``log`` (a path) is quoted.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("%s exited with status %s before listening%s%s"
                             % (name, proc.returncode, log_tail(log),
                                log_tail(proc.log_path)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError("%s did not listen on 127.0.0.1:%d within %.0f s%s"
                     % (name, port, timeout, log_tail(log)))


def log_tail(path, lines=15):
    """Return the last lines of a log file, formatted for an error message."""
    if not path or not os.path.exists(path) or not os.path.getsize(path):
        return ""
    with open(path, "rb") as f:
        text = f.read()[-4000:].decode("utf-8", "replace")
    tail = "\n".join(text.splitlines()[-lines:])
    return "\n--- %s ---\n%s" % (path, tail)


def run_checked(argv, timeout=60, **kwargs):
    """Run a short command, raising BenchError with its output on failure."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True,
                             timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise BenchError("%s timed out after %d s" % (argv[0], timeout))
    if res.returncode != 0:
        raise BenchError("%s failed (%d): %s%s" % (
            " ".join(argv), res.returncode, res.stdout, res.stderr))
    return res


def tool_version(argv):
    """Return the first line of a tool's version output, or None."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (res.stdout or res.stderr).strip().splitlines()
    return out[0] if out else None


def percentile(values, pct):
    """Return the nearest-rank percentile of a non-empty list of numbers."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100)
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------
# /proc accounting

def process_tree(pid):
    """Return [pid] plus the pids of all its live descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name.
        fields = stat[stat.rindex(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pids):
    """Return utime + stime (all threads) of the given processes, seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def system_busy_seconds():
    """Return the CPU time (all CPUs) the machine has spent busy, seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / CLK_TCK


def children_cpu_seconds():
    """Return user + system CPU time of this script's reaped children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_seconds():
    """Return user + system CPU time of this script (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def status_kib(pids, key):
    """Return the sum of a /proc/PID/status field (e.g. VmRSS) in KiB."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def rss_kib(pids):
    """Return the current resident set size of the processes, KiB."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/statm" % pid) as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return total


#: Linux sock_diag (netlink) constants used by established_tcp4().
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_ESTABLISHED = 1


def established_tcp4():
    """Return [(remote port, inode)] of the machine's established IPv4 TCP
    sockets.

    Asks the kernel over netlink (sock_diag, as ``ss`` does): about 0.2 ms,
    where reading ``/proc/net/tcp`` walks the whole connection hash table
    (several ms on a box with a large one), which a sampler running during
    the measurement cannot afford.  Falls back to ``/proc/net/tcp`` when
    netlink is not available.
    """
    # struct inet_diag_req_v2: family, protocol, ext, pad, states, then a
    # zeroed struct inet_diag_sockid (48 bytes): dump everything.
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0,
                      1 << TCP_ESTABLISHED) + bytes(48)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                      NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    out = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                           NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(5)
            sock.sendto(msg, (0, 0))
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    return out
                off = 0
                while off + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, off)
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR or length < 16:
                        raise OSError("sock_diag answered an error")
                    # struct inet_diag_msg after the 16-byte header: the
                    # remote port (big endian) at 6, the inode at 68.
                    dport, = struct.unpack_from("!H", data, off + 22)
                    inode, = struct.unpack_from("=I", data, off + 84)
                    out.append((dport, inode))
                    off += (length + 3) & ~3
    except (OSError, AttributeError):
        # AttributeError: no AF_NETLINK on this platform.
        out = []
        with open("/proc/net/tcp") as f:
            next(f, None)  # header
            for line in f:
                # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
                fields = line.split()
                if len(fields) > 9 and fields[3] == "01":
                    out.append((int(fields[2].rsplit(":", 1)[1], 16),
                                int(fields[9])))
        return out


def backend_connections(pids, port):
    """Return the inodes of the established TCP connections that the
    processes hold to 127.0.0.1:port.

    The sockets of the processes (``/proc/PID/fd``, ``socket:[INODE]``) are
    matched by inode with the established sockets whose remote port is
    ``port``.  Cheap while the processes have few file descriptors, which
    is the case in bridge mode.
    """
    inodes = set()
    for pid in pids:
        fd_dir = "/proc/%d/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return {inode for dport, inode in established_tcp4()
            if dport == port and inode in inodes}


class ConnSampler:
    """Sample a proxy's backend connections in a thread during one run.

    ``stop()`` returns the largest count seen at once and the number of
    distinct connections (socket inodes) seen, from a sample at the start
    to one at the end (both proxies keep idle backend connections open, so
    the last sample still has those opened during a run too short for the
    periodic ones).
    """

    def __init__(self, pids, port, period=CONN_SAMPLE_PERIOD):
        self.pids, self.port, self.period = list(pids), port, period
        self.max = 0
        self.seen = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        conns = backend_connections(self.pids, self.port)
        self.max = max(self.max, len(conns))
        self.seen |= conns
        self.samples += 1
        return conns

    def _loop(self):
        while True:
            self._sample()
            if self._stop.wait(self.period):
                return

    def start(self):
        """Take the first sample and start the thread."""
        self._thread.start()
        return self

    def stop(self):
        """Stop sampling; return (max at once, distinct seen)."""
        self._stop.set()
        self._thread.join(10)
        self._sample()
        return self.max, len(self.seen)


def reset_hwm(pids):
    """Reset VmHWM of the processes; return False where the kernel refuses."""
    ok = True
    for pid in pids:
        try:
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


# ---------------------------------------------------------------------------
# processes

class Proc:
    """A long-running subprocess with a log file and a careful stop()."""

    def __init__(self, name, argv, log_path, cwd=None, env=None,
                 stop_signal=signal.SIGTERM):
        """Start ``argv``; stdout and stderr go to ``log_path``.

        ``stop_signal`` is what stop() sends first (SIGKILL follows when the
        process is still there after the timeout).
        """
        self.name = name
        self.stop_signal = stop_signal
        self.daemon_log = None  # the program's own log file, if any
        self.argv = argv
        self.log_path = log_path
        self.known_pids = set()
        self._log = open(log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, cwd=cwd, env=env)
        except OSError:
            self._log.close()
            raise
        self.pid = self.popen.pid

    def poll(self):
        """Return the exit status, or None while running."""
        return self.popen.poll()

    @property
    def returncode(self):
        """The exit status, or None while running (or not yet polled)."""
        return self.popen.returncode

    def tree(self):
        """Return the pids of the process and its descendants (remembered)."""
        pids = process_tree(self.pid) if self.poll() is None else []
        self.known_pids.update(pids)
        return pids

    def stop(self, timeout=10.0):
        """Stop the process (stop_signal, then SIGKILL) and any child left."""
        try:
            if self.popen.poll() is None:
                self.tree()
                self.popen.send_signal(self.stop_signal)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout)
            # Descendants we saw (e.g. nghttpx's worker) must not survive.
            for pid in self.known_pids - {self.pid}:
                if os.path.exists("/proc/%d" % pid) and _is_child_of_tree(
                        pid, self.known_pids):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        finally:
            self._log.close()


def _is_child_of_tree(pid, pids):
    """Tell whether ``pid`` is still one of the processes we started.

    Guards against pid reuse: the process must have one of ``pids`` or init
    (after reparenting) as parent and still be ours to signal.
    """
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
    return ppid in pids or ppid == 1


# ---------------------------------------------------------------------------
# setup of the temp directory

def make_cert(tmp):
    """Create a self-signed P-256 certificate for localhost; return paths."""
    key = os.path.join(tmp, "key.pem")
    cert = os.path.join(tmp, "cert.pem")
    run_checked([
        "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ])
    return cert, key


def make_backend_pki(tmp):
    """Create a test CA and a server certificate signed by it for the h2
    backend (subjectAltName DNS:localhost, i.e. BACKEND_TLS_NAME, and
    IP:127.0.0.1).

    Returns (ca_cert, server_cert, server_key) paths.
    """
    ca_key = os.path.join(tmp, "backend-ca-key.pem")
    ca = os.path.join(tmp, "backend-ca.pem")
    run_checked([
        "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=proxyd bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])
    key = os.path.join(tmp, "backend-key.pem")
    csr = os.path.join(tmp, "backend.csr")
    cert = os.path.join(tmp, "backend-cert.pem")
    ext = os.path.join(tmp, "backend.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:%s,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n" % BACKEND_TLS_NAME)
    run_checked([
        "openssl", "req", "-new", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=" + BACKEND_TLS_NAME,
    ])
    run_checked([
        "openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext,
    ], cwd=tmp)
    return ca, cert, key


def make_files(root):
    """Write the static files of FILES under ``root`` (pseudo-random data)."""
    os.makedirs(root, exist_ok=True)
    block = os.urandom(MIB)
    for path, size in FILES.items():
        with open(os.path.join(root, path.lstrip("/")), "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


NGINX_CONF = """\
# Generated by bench/run.py.  One worker: the box has 2 cores, each proxy
# under test is a single process/thread and h2load takes most of the other
# core; nginx serving cached static files with sendfile costs far less per
# request than either proxy, so a second worker would only add contention.
{user}worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections {connections};
    multi_accept on;
}}

http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    open_file_cache max=16;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location / {{ }}
    }}

    # The bridge-mode backend: HTTP/2 over TLS (nginx 1.22: "ssl http2" on
    # the listen line; "http2 on;" from 1.25).  Its defaults otherwise: 128
    # concurrent streams per connection, DATA frames of 8 KiB
    # (http2_chunk_size); keepalive_requests above applies to h2 too.
    server {{
        listen 127.0.0.1:{h2_port} ssl http2 backlog=4096;
        ssl_certificate {h2_cert};
        ssl_certificate_key {h2_key};
        http2_max_concurrent_streams 128;
        root {www};
        location / {{ }}
    }}
}}
"""


def start_nginx(tmp, www, h2_cert, h2_key):
    """Write nginx.conf and start nginx in the foreground.

    Returns (Proc, port, h2_port): the HTTP/1.1 cleartext port (default
    mode) and the HTTP/2 TLS port (bridge mode).
    """
    port = free_port()
    h2_port = free_port()
    while h2_port == port:
        h2_port = free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = min(hard if hard != -1 else 65536, 65536)
    user = ""
    if os.geteuid() == 0:
        # Workers would otherwise run as nobody and could not read the
        # files of a 0700 temp directory.
        user = "user %s %s;\n" % (pwd.getpwuid(os.geteuid()).pw_name,
                                  grp.getgrgid(os.getegid()).gr_name)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(
            user=user, tmp=tmp, www=www, port=port, nofile=nofile,
            connections=max(1024, nofile - 64), h2_port=h2_port,
            h2_cert=h2_cert, h2_key=h2_key))
    proc = Proc("nginx", ["nginx", "-p", tmp + "/", "-e",
                          os.path.join(tmp, "nginx-error.log"), "-c", conf],
                os.path.join(tmp, "nginx.out"))
    try:
        for p in (port, h2_port):
            wait_for_port(p, proc, name="nginx",
                          log=os.path.join(tmp, "nginx-error.log"))
    except BaseException:
        proc.stop()
        raise
    return proc, port, h2_port


def start_nghttpx(tmp, backend_port, cert, key, mode="default", ca=None):
    """Start nghttpx (``-n1``, or ``-n2`` in workers mode) in front of nginx.

    Bridge mode: HTTP/2 over TLS to the backend, verified against ``ca``
    for the name BACKEND_TLS_NAME (also sent as SNI).  Returns (Proc, port).
    """
    workers = WORKERS[mode]
    port = free_port()
    log = os.path.join(tmp, "nghttpx-%s.log" % mode)
    backend = "-b127.0.0.1,%d" % backend_port
    extra = []
    if mode == "bridge":
        backend += ";;proto=h2;tls;sni=" + BACKEND_TLS_NAME
        extra = ["--cacert=" + ca]
    argv = [
        "nghttpx", "--conf=/dev/null",
        "-f127.0.0.1,%d" % port, backend, "-n%d" % workers,
        "--no-ocsp", "--errorlog-file=" + log,
        "--pid-file=" + os.path.join(tmp, "nghttpx-%s.pid" % mode),
    ] + extra + [key, cert]
    # SIGQUIT is nghttpx's graceful shutdown: the main process waits for
    # its worker process (SIGTERM leaves the worker to init).
    proc = Proc("nghttpx", argv, os.path.join(tmp, "nghttpx-%s.out" % mode),
                stop_signal=signal.SIGQUIT)
    proc.daemon_log = log
    try:
        wait_for_port(port, proc, name="nghttpx", log=log)
    except BaseException:
        proc.stop()
        raise
    return proc, port


def proxyd_available():
    """Tell whether ``python -m twisted --help`` lists the proxyd plugin."""
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    try:
        res = subprocess.run([sys.executable, "-m", "twisted", "--help"],
                             capture_output=True, text=True, timeout=60,
                             cwd=REPO_ROOT, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s+proxyd\s", res.stdout, re.M) is not None


def _pythonpath():
    """Return PYTHONPATH with the repository root first."""
    old = os.environ.get("PYTHONPATH")
    return REPO_ROOT + (os.pathsep + old if old else "")


def proxyd_yaml(port, backend_port, cert, key, mode="default", ca=None):
    """Return the proxyd configuration (DESIGN.md section 3) for the bench.

    Bridge mode: the backend speaks h2 over TLS, verified against ``ca``
    with ``server_name`` BACKEND_TLS_NAME (what nghttpx checks too).
    Workers mode: default mode with ``workers: 2``; the others ``workers:
    1`` (the default, ``auto``, would depend on the machine).
    """
    q = json.dumps  # a JSON string is a valid YAML scalar
    workers = WORKERS[mode]
    mode = "bridge" if mode == "bridge" else "default"
    if mode == "bridge":
        backend = ["    protocol: h2",
                   "    tls: {ca: %s, server_name: %s}"
                   % (q(ca), q(BACKEND_TLS_NAME))]
    else:
        backend = ["    protocol: http/1.1", "    tls: false"]
    return "\n".join([
        "# Generated by bench/run.py",
        "mode: %s" % mode,
        "workers: %d" % workers,
        "listen:",
        "  - endpoint: %s" % q("tcp:%d:interface=127.0.0.1" % port),
        "    tls: {cert: %s, key: %s}" % (q(cert), q(key)),
        "    protocols: [h2, http/1.1]",
        "backends:",
        "  - address: %s" % q("127.0.0.1:%d" % backend_port),
    ] + backend + [
        "    max_connections: 100",
        "rate_limits:",
        "  read: {rate: 0, burst: 0}",
        "limits:",
        "  max_concurrent_streams: 100",
        "timeouts:",
        "  graceful_shutdown: 5s",
        "",
    ])


def start_proxyd(tmp, backend_port, cert, key, mode="default", ca=None):
    """Start proxyd in the foreground in front of nginx; return (Proc, port).

    ``python -m twisted`` is Twisted's ``twist`` runner: always in the
    foreground, no pid file, so only the log file is given.
    """
    port = free_port()
    conf = os.path.join(tmp, "proxyd-%s.yaml" % mode)
    with open(conf, "w") as f:
        f.write(proxyd_yaml(port, backend_port, cert, key, mode, ca))
    log = os.path.join(tmp, "proxyd-%s.log" % mode)
    argv = [sys.executable, "-m", "twisted", "--log-format=text",
            "--log-file=" + log, "proxyd", "-c", conf]
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = Proc("proxyd", argv, os.path.join(tmp, "proxyd-%s.out" % mode),
                cwd=REPO_ROOT, env=env)
    proc.daemon_log = log
    try:
        wait_for_port(port, proc, timeout=30, name="proxyd", log=log)
    except BaseException:
        proc.stop()
        raise
    return proc, port


# ---------------------------------------------------------------------------
# clients

_RE_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_RE_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout")
_RE_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, "
                        r"(\d+) 5xx")
_RE_TRAFFIC = re.compile(r"traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) "
                         r"headers.*?, \S+ \((\d+)\) data")


def parse_h2load(text):
    """Parse h2load's summary into a dict; missing lines raise BenchError."""
    m_fin = _RE_FINISHED.search(text)
    m_req = _RE_REQUESTS.search(text)
    m_st = _RE_STATUS.search(text)
    m_tr = _RE_TRAFFIC.search(text)
    if not (m_fin and m_req and m_st and m_tr):
        raise BenchError("cannot parse h2load output:\n" + text[-2000:])
    value, unit = float(m_fin.group(1)), m_fin.group(2)
    seconds = value / {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    rps = float(m_fin.group(3))
    total, _, done, ok, failed, errored, timeout = map(int, m_req.groups())
    if rps > 0:
        seconds = done / rps  # more digits than "finished in 1.23s"
    s2xx, s3xx, s4xx, s5xx = map(int, m_st.groups())
    return {
        "seconds": seconds, "req_per_s": rps, "requests": total,
        "done": done, "succeeded": ok, "failed": failed,
        "errored": errored, "timeout": timeout, "status_2xx": s2xx,
        "status_other": s3xx + s4xx + s5xx,
        "bytes_total": int(m_tr.group(1)), "bytes_headers": int(m_tr.group(2)),
        "bytes_data": int(m_tr.group(3)),
    }


def read_latencies(path):
    """Return durations (us) of successful requests from an h2load log."""
    out = []
    with open(path) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] != "-1":
                out.append(int(cols[2]))
    return out


def run_h2load(url, scenario, quick, log_path):
    """Run h2load for one scenario and return the parsed figures."""
    n = scenario.count(quick)
    argv = ["h2load", "-n%d" % n, "-c%d" % scenario.clients,
            "-m%d" % scenario.streams, "-t1", "-N30s",
            "--log-file=" + log_path, url]
    try:
        res = subprocess.run(argv, capture_output=True, text=True,
                             timeout=H2LOAD_TIMEOUT[quick])
    except subprocess.TimeoutExpired:
        raise BenchError("h2load did not finish within %d s"
                         % H2LOAD_TIMEOUT[quick])
    fig = parse_h2load(res.stdout)
    lat = read_latencies(log_path)
    if lat:
        fig["p50_ms"] = percentile(lat, 50) / 1000.0
        fig["p99_ms"] = percentile(lat, 99) / 1000.0
        fig["max_ms"] = max(lat) / 1000.0
    fig["failures"] = n - fig["status_2xx"]
    fig["mb_per_s"] = fig["bytes_data"] / fig["seconds"] / 1e6 \
        if fig["seconds"] else 0.0
    fig["argv"] = argv
    return fig


def curl_check(url, size, cacert=None):
    """Fetch ``url`` once over h2 and check status, protocol and size.

    With ``cacert`` the server's certificate is verified against it
    (otherwise not: ``-k``).
    """
    verify = ["--cacert", cacert] if cacert else ["-k"]
    argv = ["curl", "--http2"] + verify + [
        "-sS", "-o", "/dev/null", "--max-time", "20",
        "-w", "%{http_code} %{http_version} %{size_download}", url]
    res = run_checked(argv, timeout=30)
    code, version, got = res.stdout.split()
    if code != "200" or version != "2" or int(got) != size:
        raise BenchError("sanity check of %s failed: status %s, HTTP/%s, "
                         "%s bytes (want 200, HTTP/2, %d)"
                         % (url, code, version, got, size))


def run_slow(url, proc, quick):
    """S6: a rate-limited curl download while sampling the proxy's RSS."""
    max_time = SLOW_MAX_TIME[quick]
    argv = ["curl", "--http2", "-k", "-sS", "-o", "/dev/null",
            "--limit-rate", SLOW_RATE, "--max-time", str(max_time),
            "-w", "%{http_code} %{http_version} %{size_download} "
                  "%{speed_download}", url]
    before = rss_kib(proc.tree())
    samples = []
    curl = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + max_time + 10
        next_at = time.monotonic()
        while curl.poll() is None and time.monotonic() < deadline:
            samples.append(rss_kib(proc.tree()))
            next_at += SAMPLE_PERIOD
            time.sleep(max(0.0, next_at - time.monotonic()))
        out, err = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()
    fields = out.split()
    # Exit status 28 is curl's --max-time, expected with --quick.
    if curl.returncode not in (0, 28) or len(fields) != 4:
        raise BenchError("curl failed (%s): %s %s"
                         % (curl.returncode, out, err))
    peak = max(samples) if samples else before
    return {
        "rss_before_mib": before / 1024.0,
        "rss_max_mib": peak / 1024.0,
        "rss_growth_mib": (peak - before) / 1024.0,
        "samples": len(samples),
        "status": fields[0], "http_version": fields[1],
        "bytes_data": int(fields[2]),
        "mb_per_s": float(fields[3]) / 1e6,
        "curl_exit": curl.returncode, "max_time_s": max_time,
        "complete": int(fields[2]) == FILES[url[url.rindex("/"):]],
    }


# ---------------------------------------------------------------------------
# running

def measure(proc, scenario, url, quick, log_path, others=(),
            backend_port=None):
    """Run one scenario against one proxy, with CPU and RSS accounting.

    ``others`` are the other processes started here (nginx, the idle
    proxy): with the client's CPU time they are subtracted from the
    machine's busy time to give ``foreign_cpu_s``, the CPU used meanwhile
    by processes that are not part of the benchmark (a noisy machine).
    With ``backend_port`` the proxy's connections to it are sampled during
    the run (``backend_conns_*``).
    """
    pids = proc.tree()
    sampler = None
    if backend_port:
        sampler = ConnSampler(pids, backend_port)
        fig_conns_before = len(backend_connections(pids, backend_port))
        sampler.start()
    hwm_reset = reset_hwm(pids)
    cpu0 = cpu_seconds(pids)
    own0 = sum(cpu_seconds(o.tree()) for o in others)
    busy0 = system_busy_seconds()
    client0 = children_cpu_seconds()
    self0 = self_cpu_seconds()
    t0 = time.monotonic()
    try:
        if scenario.kind == "slow":
            fig = run_slow(url, proc, quick)
            requests = 1
        else:
            fig = run_h2load(url, scenario, quick, log_path)
            # CPU per useful request: refused or failed ones do not count.
            requests = fig["status_2xx"] or fig["done"] or 1
    finally:
        conns = sampler.stop() if sampler else None
    fig["wall_s"] = time.monotonic() - t0
    if conns:
        fig["backend_conns_before"] = fig_conns_before
        fig["backend_conns_max"], fig["backend_conns_seen"] = conns
        fig["backend_conns_after"] = len(backend_connections(
            proc.tree(), backend_port))
        fig["backend_conn_samples"] = sampler.samples
    pids = proc.tree()  # nghttpx may have respawned nothing, but re-read
    cpu = cpu_seconds(pids) - cpu0
    fig["cpu_s"] = cpu
    fig["client_cpu_s"] = children_cpu_seconds() - client0
    fig["bench_cpu_s"] = self_cpu_seconds() - self0
    fig["foreign_cpu_s"] = max(0.0, (
        system_busy_seconds() - busy0 - cpu - fig["client_cpu_s"]
        - fig["bench_cpu_s"]
        - (sum(cpu_seconds(o.tree()) for o in others) - own0)))
    fig["cpu_us_per_req"] = cpu / requests * 1e6
    if fig.get("bytes_data"):
        fig["cpu_ms_per_mib"] = cpu * 1e3 / (fig["bytes_data"] / MIB)
    fig["vmhwm_mib"] = status_kib(pids, "VmHWM") / 1024.0
    fig["vmhwm_since"] = "scenario start" if hwm_reset else "process start"
    fig["rss_after_mib"] = rss_kib(pids) / 1024.0
    if proc.poll() is not None:
        raise BenchError("%s exited (status %s) during %s%s%s" % (
            proc.name, proc.returncode, scenario.key,
            log_tail(proc.daemon_log), log_tail(proc.log_path)))
    return fig


#: Table rows: (scenario, metric label, key in the median dict, format,
#: smallest nghttpx figure for which a ratio is printed: ratios of counts
#: near zero, such as failures or an RSS growth of 0.1 MiB, mean nothing).
ROWS = [
    ("S1", "req/s", "req_per_s", "%.0f", 0),
    ("S1", "CPU us/req", "cpu_us_per_req", "%.1f", 0),
    ("S1", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S2", "req/s", "req_per_s", "%.0f", 0),
    ("S2", "CPU us/req", "cpu_us_per_req", "%.1f", 0),
    ("S2", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S3", "MB/s", "mb_per_s", "%.0f", 0),
    ("S3", "CPU us/req", "cpu_us_per_req", "%.0f", 0),
    ("S3", "CPU ms/MiB", "cpu_ms_per_mib", "%.2f", 0),
    ("S3", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S4", "req/s", "req_per_s", "%.0f", 0),
    ("S4", "failures", "failures", "%d", 100),
    ("S4", "p99 ms", "p99_ms", "%.1f", 0),
    ("S4", "CPU us/req", "cpu_us_per_req", "%.1f", 0),
    ("S4", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S5", "MB/s", "mb_per_s", "%.0f", 0),
    ("S5", "CPU us/req", "cpu_us_per_req", "%.0f", 0),
    ("S5", "CPU ms/MiB", "cpu_ms_per_mib", "%.2f", 0),
    ("S5", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S6", "RSS growth MiB", "rss_growth_mib", "%.1f", 4),
    ("S6", "client MB/s", "mb_per_s", "%.2f", 0),
    ("S6", "CPU us/req", "cpu_us_per_req", "%.0f", 0),
]
# B1..B6: the same rows, plus the backend connections of the proxy (the most
# open at once during the run, and how many distinct ones were seen).
ROWS += [("B" + key[1:], label, field, fmt, min_base)
         for key, label, field, fmt, min_base in ROWS]
ROWS += [("B%d" % i, label, field, "%d", 0)
         for i in range(1, 7)
         for label, field in (("backend conns max", "backend_conns_max"),
                              ("backend conns seen", "backend_conns_seen"))]
# W1..W4: the rows of S1..S4 (two workers each side).
ROWS += [("W" + key[1:], label, field, fmt, min_base)
         for key, label, field, fmt, min_base in ROWS
         if key in ("S1", "S2", "S3", "S4")]
ROWS.sort(key=lambda row: ("SBW".index(row[0][0]), row[0]))  # stable sort


def median_figures(runs):
    """Return the per-key median of numeric figures over repeated runs."""
    keys = [k for k, v in runs[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs if k in r)
            for k in keys}


def format_table(results, proxies):
    """Return the text table: scenario, metric, one column per proxy, ratio."""
    header = ["scenario", "metric"] + list(proxies)
    ratio = "proxyd" in proxies and "nghttpx" in proxies
    if ratio:
        header.append("proxyd/nghttpx")
    rows = []
    for key, label, field, fmt, min_base in ROWS:
        if key not in results:
            continue
        line = [key, label]
        values = {}
        for p in proxies:
            med = results[key].get(p, {}).get("median")
            if med is None or field not in med:
                line.append(results[key].get(p, {}).get("error") and "error"
                            or "-")
            else:
                values[p] = med[field]
                line.append(fmt % med[field])
        if ratio:
            a, b = values.get("proxyd"), values.get("nghttpx")
            line.append("%.2f" % (a / b) if a is not None and b
                        and b >= min_base else "-")
        rows.append(line)
    widths = [max(len(str(r[i])) for r in [header] + rows)
              for i in range(len(header))]
    out = []
    for r in [header] + rows:
        out.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))))
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine_info():
    """Describe the machine and the tools, for the JSON file and README."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model,
        "kernel": platform.release(), "python": platform.python_version(),
        "h2load": tool_version(["h2load", "--version"]),
        "nghttpx": tool_version(["nghttpx", "--version"]),
        "nginx": tool_version(["nginx", "-v"]),
        "curl": tool_version(["curl", "--version"]),
    }


def parse_args(argv):
    """Parse the command line."""
    ap = argparse.ArgumentParser(
        description="h2load benchmarks of proxyd vs nghttpx (DESIGN.md 8).")
    ap.add_argument("--quick", action="store_true",
                    help="smaller request counts; S6 stops after %d s"
                    % SLOW_MAX_TIME[True])
    ap.add_argument("--mode", default="all",
                    choices=MODES + ("all",),
                    help="default: S1..S6 with proxyd and nghttpx in front "
                         "of HTTP/1.1 nginx; bridge: B1..B6, the same loads "
                         "with both proxies speaking HTTP/2 over TLS to an "
                         "HTTP/2 nginx; workers: W1..W4, the loads of "
                         "S1..S4 with proxyd workers: 2 and nghttpx -n2; "
                         "all (the default): all three")
    ap.add_argument("--scenarios",
                    help="comma-separated subset of %s (default: all of "
                         "--mode's)" % ",".join(SCENARIOS))
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help="comma-separated subset of %s" % ",".join(PROXIES))
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per scenario and proxy, interleaved; the "
                         "table shows medians")
    ap.add_argument("--json", help="result file (default: a new temp file)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp directory (configs, logs)")
    args = ap.parse_args(argv)
    modes = MODES if args.mode == "all" else (args.mode,)
    if args.scenarios is None:
        args.scenarios = [k for k in SCENARIOS if SCENARIOS[k].mode in modes]
    else:
        args.scenarios = list(dict.fromkeys(
            s.strip().upper() for s in args.scenarios.split(",")
            if s.strip()))
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r" % s)
        if SCENARIOS[s].mode not in modes:
            ap.error("%s is a %s-mode scenario (--mode %s)"
                     % (s, SCENARIOS[s].mode, args.mode))
    for p in args.proxies:
        if p not in PROXIES:
            ap.error("unknown proxy %r" % p)
    if not args.scenarios or not args.proxies or args.repeat < 1:
        ap.error("nothing to run")
    return args


def check_tools(proxies):
    """Raise BenchError naming any missing executable."""
    need = ["h2load", "nginx", "openssl", "curl"]
    if "nghttpx" in proxies:
        need.append("nghttpx")
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        raise BenchError("missing tools: " + ", ".join(missing))
    if "proxyd" in proxies and not proxyd_available():
        raise BenchError("`python -m twisted --help` does not list proxyd "
                         "(run with --proxies nghttpx until it does)")


def run(args):
    """Set everything up, run the scenarios, print and save the results."""
    check_tools(args.proxies)
    tmp = tempfile.mkdtemp(prefix="proxyd-bench-")
    started = []
    results = {}
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "machine": machine_info(),
        "quick": args.quick, "repeat": args.repeat,
        "proxies": args.proxies, "scenarios": args.scenarios,
        "tmp": tmp,
        "loadavg_at_start": _loadavg(),
    }
    try:
        print("temp dir: %s" % tmp, flush=True)
        cert, key = make_cert(tmp)
        ca, h2_cert, h2_key = make_backend_pki(tmp)
        www = os.path.join(tmp, "www")
        make_files(www)
        nginx, h1_port, h2_port = start_nginx(tmp, www, h2_cert, h2_key)
        started.append(nginx)
        backend_ports = {"default": h1_port, "bridge": h2_port,
                         "workers": h1_port}
        meta["idle_rss_mib"] = {}
        meta["peak_rss_mib"] = {}
        modes = [m for m in MODES
                 if any(SCENARIOS[k].mode == m for k in args.scenarios)]
        if "bridge" in modes:
            # The backend itself, checked directly: h2, TLS verified
            # against the test CA for 127.0.0.1.
            curl_check("https://127.0.0.1:%d/4k" % h2_port, FILES["/4k"],
                       cacert=ca)
        for mode in modes:
            keys = sorted((k for k in args.scenarios
                           if SCENARIOS[k].mode == mode), key=RUN_ORDER.index)
            print("mode %s: %s" % (mode, ", ".join(keys)), flush=True)
            # The proxies of one mode run while its scenarios do, then stop
            # before the next mode's start.
            mode_procs = []
            try:
                run_mode(args, tmp, mode, keys, cert, key, ca,
                         backend_ports[mode], started, mode_procs, results,
                         meta)
            finally:
                for proc in reversed(mode_procs):
                    proc.stop()
                    started.remove(proc)
    finally:
        for proc in reversed(started):
            proc.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    table = format_table(results, args.proxies)
    print()
    print("%s, %s x %s, %s%s" % (
        meta["date"], meta["machine"]["cpus"], meta["machine"]["cpu_model"],
        "quick" if args.quick else "full",
        ", median of %d" % args.repeat if args.repeat > 1 else ""))
    print(table)
    for slow in ("S6", "B6"):
        med = results.get(slow, {}).get("proxyd", {}).get("median")
        if med:
            verdict = ("ok" if med["rss_growth_mib"] <= SLOW_RSS_TARGET_MIB
                       else "OVER TARGET")
            print("%s proxyd RSS growth %.1f MiB (target <= %d MiB): %s"
                  % (slow, med["rss_growth_mib"], SLOW_RSS_TARGET_MIB,
                     verdict))
    noisy = sorted({"%s %s" % (k, n) for k in results
                    for n, r in results[k].items() for fig in r["runs"]
                    if foreign_share(fig) > NOISE_SHARE})
    if noisy:
        print("warning: other processes used more than %d%% of the CPUs "
              "during: %s; figures are unreliable (load average %.2f at "
              "start)" % (100 * NOISE_SHARE, ", ".join(noisy),
                          meta["loadavg_at_start"] or 0.0))
    meta["noisy_runs"] = noisy
    path = args.json
    if not path:
        fd, path = tempfile.mkstemp(prefix="proxyd-bench-", suffix=".json")
        os.close(fd)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results, "table": table}, f,
                  indent=2)
    print("results: %s" % path)
    failed = any("error" in r for per in results.values()
                 for r in per.values())
    return 1 if failed else 0


def run_mode(args, tmp, mode, keys, cert, key, ca, backend_port, started,
             mode_procs, results, meta):
    """Start both proxies in ``mode``, check them, warm them up and run the
    scenarios ``keys`` (interleaved, ``--repeat`` times); fill ``results``.

    Every process started is appended to ``started`` and ``mode_procs``
    (the caller stops them).
    """
    ports = {}
    procs = {}
    for name in args.proxies:
        start = start_proxyd if name == "proxyd" else start_nghttpx
        proc, port = start(tmp, backend_port, cert, key, mode, ca)
        started.append(proc)
        mode_procs.append(proc)
        procs[name], ports[name] = proc, port
    for name in args.proxies:
        base = "https://127.0.0.1:%d" % ports[name]
        curl_check(base + "/4k", FILES["/4k"])
        # Warm-up, not measured: pools, caches, lazy imports.
        run_h2load(base + "/100b", SCENARIOS["S1"], True,
                   os.path.join(tmp, "h2load-warmup-%s-%s.log"
                                % (mode, name)))
        if mode == "bridge" and not backend_connections(
                procs[name].tree(), backend_port):
            raise BenchError("%s (bridge mode) holds no connection to the "
                             "backend port %d after the warm-up"
                             % (name, backend_port))
    meta["idle_rss_mib"][mode] = {n: rss_kib(p.tree()) / 1024.0
                                  for n, p in procs.items()}
    dead = {}
    for sc_key in keys:
        sc = SCENARIOS[sc_key]
        results[sc_key] = {p: {"runs": []} for p in args.proxies}
        for i in range(args.repeat):
            for name in args.proxies:
                if name in dead:
                    results[sc_key][name]["error"] = dead[name]
                    continue
                url = "https://127.0.0.1:%d%s" % (ports[name], sc.path)
                log = os.path.join(tmp, "h2load-%s-%s-%d.log"
                                   % (sc_key, name, i))
                print("%s %-7s run %d/%d: %s" % (
                    sc_key, name, i + 1, args.repeat, sc.title), flush=True)
                try:
                    fig = measure(
                        procs[name], sc, url, args.quick, log,
                        others=[p for p in started if p is not procs[name]],
                        backend_port=backend_port if mode == "bridge"
                        else None)
                except BenchError as exc:
                    print("  error: %s" % exc, flush=True)
                    results[sc_key][name]["error"] = str(exc)
                    if procs[name].poll() is not None:
                        dead[name] = str(exc)
                    continue
                results[sc_key][name]["runs"].append(fig)
                print("  " + _one_line(sc_key, fig), flush=True)
        for name in args.proxies:
            runs = results[sc_key][name]["runs"]
            if runs:
                results[sc_key][name]["median"] = median_figures(runs)
    meta["peak_rss_mib"][mode] = {
        n: max((results[k][n]["median"]["vmhwm_mib"] for k in keys
                if "median" in results[k].get(n, {})), default=None)
        for n in args.proxies}


def foreign_share(fig):
    """Return the share of the machine's CPUs used by foreign processes."""
    return fig["foreign_cpu_s"] / max(1e-9, fig["wall_s"] * os.cpu_count())


def _loadavg():
    """Return the 1-minute load average, or None."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _one_line(key, fig):
    """Summarise one run for the progress output."""
    noise = "; foreign CPU %.0f%%" % (100 * foreign_share(fig))
    conns = ""
    if "backend_conns_max" in fig:
        conns = "; backend conns %d before, max %d, %d seen, %d after" % (
            fig["backend_conns_before"], fig["backend_conns_max"],
            fig["backend_conns_seen"], fig["backend_conns_after"])
    if key in ("S6", "B6"):
        return ("RSS %.1f -> max %.1f MiB (growth %.1f), %.2f MB/s, %d bytes"
                % (fig["rss_before_mib"], fig["rss_max_mib"],
                   fig["rss_growth_mib"], fig["mb_per_s"], fig["bytes_data"])
                + conns + noise)
    return ("%.0f req/s, %.1f MB/s, failures %d, p99 %.1f ms, CPU %.2f s "
            "(%.1f us/req), VmHWM %.1f MiB"
            % (fig["req_per_s"], fig["mb_per_s"], fig["failures"],
               fig.get("p99_ms", float("nan")), fig["cpu_s"],
               fig["cpu_us_per_req"], fig["vmhwm_mib"]) + conns + noise)


def main(argv=None):
    """Entry point: parse arguments and run.

    Exit status 0 when every run completed, 1 on a setup error or a failed
    run (a proxy that died, h2load output that cannot be parsed ...).
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except BenchError as exc:
        print("bench: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
