#!/usr/bin/env python3
"""Benchmark proxyd against nghttpx in front of the same nginx backend.

One command (see ``bench/README.md`` and DESIGN.md section 8)::

    python bench/run.py [--quick] [--scenarios S1,S3]
                        [--proxies proxyd,nghttpx] [--repeat N] [--json PATH]

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
import subprocess
import sys
import tempfile
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
RUN_ORDER = ("S6", "S1", "S2", "S3", "S5", "S4")


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
}}
"""


def start_nginx(tmp, www):
    """Write nginx.conf and start nginx in the foreground.

    Returns (Proc, port).
    """
    port = free_port()
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
            connections=max(1024, nofile - 64)))
    proc = Proc("nginx", ["nginx", "-p", tmp + "/", "-e",
                          os.path.join(tmp, "nginx-error.log"), "-c", conf],
                os.path.join(tmp, "nginx.out"))
    try:
        wait_for_port(port, proc, name="nginx",
                      log=os.path.join(tmp, "nginx-error.log"))
    except BaseException:
        proc.stop()
        raise
    return proc, port


def start_nghttpx(tmp, backend_port, cert, key):
    """Start nghttpx (one worker thread) in front of nginx.

    Returns (Proc, port).
    """
    port = free_port()
    log = os.path.join(tmp, "nghttpx.log")
    argv = [
        "nghttpx", "--conf=/dev/null",
        "-f127.0.0.1,%d" % port, "-b127.0.0.1,%d" % backend_port, "-n1",
        "--no-ocsp", "--errorlog-file=" + log,
        "--pid-file=" + os.path.join(tmp, "nghttpx.pid"),
        key, cert,
    ]
    # SIGQUIT is nghttpx's graceful shutdown: the main process waits for
    # its worker process (SIGTERM leaves the worker to init).
    proc = Proc("nghttpx", argv, os.path.join(tmp, "nghttpx.out"),
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


def proxyd_yaml(port, backend_port, cert, key):
    """Return the proxyd configuration (DESIGN.md section 3) for the bench."""
    q = json.dumps  # a JSON string is a valid YAML scalar
    return "\n".join([
        "# Generated by bench/run.py",
        "mode: default",
        "listen:",
        "  - endpoint: %s" % q("tcp:%d:interface=127.0.0.1" % port),
        "    tls: {cert: %s, key: %s}" % (q(cert), q(key)),
        "    protocols: [h2, http/1.1]",
        "backends:",
        "  - address: %s" % q("127.0.0.1:%d" % backend_port),
        "    protocol: http/1.1",
        "    tls: false",
        "    max_connections: 100",
        "rate_limits:",
        "  read: {rate: 0, burst: 0}",
        "limits:",
        "  max_concurrent_streams: 100",
        "timeouts:",
        "  graceful_shutdown: 5s",
        "",
    ])


def start_proxyd(tmp, backend_port, cert, key):
    """Start proxyd in the foreground in front of nginx; return (Proc, port).

    ``python -m twisted`` is Twisted's ``twist`` runner: always in the
    foreground, no pid file, so only the log file is given.
    """
    port = free_port()
    conf = os.path.join(tmp, "proxyd.yaml")
    with open(conf, "w") as f:
        f.write(proxyd_yaml(port, backend_port, cert, key))
    log = os.path.join(tmp, "proxyd.log")
    argv = [sys.executable, "-m", "twisted", "--log-format=text",
            "--log-file=" + log, "proxyd", "-c", conf]
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    proc = Proc("proxyd", argv, os.path.join(tmp, "proxyd.out"),
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


def curl_check(url, size):
    """Fetch ``url`` once over h2 and check status, protocol and size."""
    res = run_checked(["curl", "--http2", "-k", "-sS", "-o", "/dev/null",
                       "--max-time", "20", "-w",
                       "%{http_code} %{http_version} %{size_download}", url],
                      timeout=30)
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

def measure(proc, scenario, url, quick, log_path, others=()):
    """Run one scenario against one proxy, with CPU and RSS accounting.

    ``others`` are the other processes started here (nginx, the idle
    proxy): with the client's CPU time they are subtracted from the
    machine's busy time to give ``foreign_cpu_s``, the CPU used meanwhile
    by processes that are not part of the benchmark (a noisy machine).
    """
    pids = proc.tree()
    hwm_reset = reset_hwm(pids)
    cpu0 = cpu_seconds(pids)
    own0 = sum(cpu_seconds(o.tree()) for o in others)
    busy0 = system_busy_seconds()
    client0 = children_cpu_seconds()
    t0 = time.monotonic()
    if scenario.kind == "slow":
        fig = run_slow(url, proc, quick)
        requests = 1
    else:
        fig = run_h2load(url, scenario, quick, log_path)
        # CPU per useful request: refused or failed ones do not count.
        requests = fig["status_2xx"] or fig["done"] or 1
    fig["wall_s"] = time.monotonic() - t0
    pids = proc.tree()  # nghttpx may have respawned nothing, but re-read
    cpu = cpu_seconds(pids) - cpu0
    fig["cpu_s"] = cpu
    fig["client_cpu_s"] = children_cpu_seconds() - client0
    fig["foreign_cpu_s"] = max(0.0, (
        system_busy_seconds() - busy0 - cpu - fig["client_cpu_s"]
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
    ("S3", "CPU ms/MiB", "cpu_ms_per_mib", "%.2f", 0),
    ("S3", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S4", "req/s", "req_per_s", "%.0f", 0),
    ("S4", "failures", "failures", "%d", 100),
    ("S4", "p99 ms", "p99_ms", "%.1f", 0),
    ("S4", "CPU us/req", "cpu_us_per_req", "%.1f", 0),
    ("S4", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S5", "MB/s", "mb_per_s", "%.0f", 0),
    ("S5", "CPU ms/MiB", "cpu_ms_per_mib", "%.2f", 0),
    ("S5", "peak RSS MiB", "vmhwm_mib", "%.1f", 0),
    ("S6", "RSS growth MiB", "rss_growth_mib", "%.1f", 4),
    ("S6", "client MB/s", "mb_per_s", "%.2f", 0),
]


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
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated subset of %s" % ",".join(SCENARIOS))
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help="comma-separated subset of %s" % ",".join(PROXIES))
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per scenario and proxy, interleaved; the "
                         "table shows medians")
    ap.add_argument("--json", help="result file (default: a new temp file)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp directory (configs, logs)")
    args = ap.parse_args(argv)
    args.scenarios = list(dict.fromkeys(
        s.strip().upper() for s in args.scenarios.split(",") if s.strip()))
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r" % s)
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
        www = os.path.join(tmp, "www")
        make_files(www)
        nginx, nginx_port = start_nginx(tmp, www)
        started.append(nginx)
        ports = {}
        procs = {}
        for name in args.proxies:
            start = start_proxyd if name == "proxyd" else start_nghttpx
            proc, port = start(tmp, nginx_port, cert, key)
            started.append(proc)
            procs[name], ports[name] = proc, port
        for name in args.proxies:
            base = "https://127.0.0.1:%d" % ports[name]
            curl_check(base + "/4k", FILES["/4k"])
            # Warm-up, not measured: pools, caches, lazy imports.
            run_h2load(base + "/100b", SCENARIOS["S1"], True,
                       os.path.join(tmp, "h2load-warmup-%s.log" % name))
        meta["idle_rss_mib"] = {n: rss_kib(p.tree()) / 1024.0
                                for n, p in procs.items()}
        dead = {}
        for key in sorted(args.scenarios, key=RUN_ORDER.index):
            sc = SCENARIOS[key]
            results[key] = {p: {"runs": []} for p in args.proxies}
            for i in range(args.repeat):
                for name in args.proxies:
                    if name in dead:
                        continue
                    url = "https://127.0.0.1:%d%s" % (ports[name], sc.path)
                    log = os.path.join(tmp, "h2load-%s-%s-%d.log"
                                       % (key, name, i))
                    print("%s %-7s run %d/%d: %s" % (
                        key, name, i + 1, args.repeat, sc.title), flush=True)
                    try:
                        fig = measure(procs[name], sc, url, args.quick, log,
                                      others=[p for p in started
                                              if p is not procs[name]])
                    except BenchError as exc:
                        print("  error: %s" % exc, flush=True)
                        results[key][name]["error"] = str(exc)
                        if procs[name].poll() is not None:
                            dead[name] = str(exc)
                        continue
                    results[key][name]["runs"].append(fig)
                    print("  " + _one_line(key, fig), flush=True)
            for name in args.proxies:
                runs = results[key][name]["runs"]
                if runs:
                    results[key][name]["median"] = median_figures(runs)
        meta["peak_rss_mib"] = {
            n: max((results[k][n]["median"]["vmhwm_mib"] for k in results
                    if "median" in results[k].get(n, {})), default=None)
            for n in args.proxies}
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
    if "S6" in results and "proxyd" in results["S6"]:
        med = results["S6"]["proxyd"].get("median")
        if med:
            verdict = ("ok" if med["rss_growth_mib"] <= SLOW_RSS_TARGET_MIB
                       else "OVER TARGET")
            print("S6 proxyd RSS growth %.1f MiB (target <= %d MiB): %s"
                  % (med["rss_growth_mib"], SLOW_RSS_TARGET_MIB, verdict))
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
    if key == "S6":
        return ("RSS %.1f -> max %.1f MiB (growth %.1f), %.2f MB/s, %d bytes"
                % (fig["rss_before_mib"], fig["rss_max_mib"],
                   fig["rss_growth_mib"], fig["mb_per_s"], fig["bytes_data"])
                + noise)
    return ("%.0f req/s, %.1f MB/s, failures %d, p99 %.1f ms, CPU %.2f s "
            "(%.1f us/req), VmHWM %.1f MiB"
            % (fig["req_per_s"], fig["mb_per_s"], fig["failures"],
               fig.get("p99_ms", float("nan")), fig["cpu_s"],
               fig["cpu_us_per_req"], fig["vmhwm_mib"]) + noise)


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
