"""Helpers of the end-to-end tests: processes, ports, clients and output parsers.

Everything here runs on 127.0.0.1, every wait has a deadline and every process started is
stopped by its owner (the fixtures in conftest.py call ``stop()`` in their finalizers).

The daemon under test is proxyd, started as
``twistd --nodaemon --pidfile= --logfile=LOG proxyd -c CONFIG.yaml`` (twistd run by this Python)
from the repository root with PYTHONPATH set to it.  ``PROXYD_E2E_TARGET=nghttpx`` runs the same
tests against nghttpx instead (a stand-in used to validate the harness; the proxyd-specific
expectations, e.g. ``Via: 2 proxyd`` or the config errors, fail there).
"""

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BACKEND_SCRIPT = REPO / "demo" / "backend.py"
HOST = "127.0.0.1"
TARGET = os.environ.get("PROXYD_E2E_TARGET", "proxyd")
# The daemons' ``workers:`` unless a test needs one process and says so: 1 by default (fast, and
# what most tests look at); PROXYD_E2E_WORKERS=2 (or auto) runs the suite through workers.
_WORKERS = os.environ.get("PROXYD_E2E_WORKERS", "1")
E2E_WORKERS = int(_WORKERS) if _WORKERS.isdigit() else _WORKERS


def _load_backend_module():
    spec = importlib.util.spec_from_file_location("proxyd_demo_backend", BACKEND_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The demo backend's byte generator, for local computation of expected bodies.
demo = _load_backend_module()


# -- tools, ports, processes ---------------------------------------------------------------------

def require_tool(name):
    """Path of an external tool; a missing tool FAILS the test (CI must install it), never skips."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/local/sbin/{name}")
         if os.access(p, os.X_OK)), None)
    if not path:
        pytest.fail(f"required tool {name!r} is not installed (apt: curl nghttp2-client "
                    f"nghttp2-proxy nginx openssl); the e2e suite does not skip", pytrace=False)
    return path


_HANDED_OUT = set()


def free_port(host=HOST):
    """A TCP port on ``host`` (127.0.0.1, or ::1) that was free a moment ago and that this
    process has not handed out before: the kernel may give a port it just gave again (two calls
    for one config, a listener and the metrics endpoint, then clashed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def run(cmd, timeout, input=None, binary=False, env=None, cwd=None):
    """Run cmd (a list) with a deadline; returns (rc, stdout, stderr). A timeout fails the test."""
    require_tool(cmd[0])
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, env=env,
                              cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-2000:].decode("utf-8", "replace")
        err = (exc.stderr or b"")[-2000:].decode("utf-8", "replace")
        pytest.fail(f"command timed out after {timeout}s: {cmd}\nstdout: {out}\nstderr: {err}",
                    pytrace=False)
    if binary:
        return proc.returncode, proc.stdout, proc.stderr
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


def rss_kib(pid):
    """Resident set size of pid in KiB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def port_accepts(port, host=HOST, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout, interval=0.02, what="condition"):
    """Poll predicate until true; returns its value or raises AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_pids(pid):
    """The pids of the live processes whose parent is ``pid`` (a supervisor's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(entry))
    return sorted(found)


def connection_owners(pids, port, established=True):
    """{pid: number of established TCP connections on local port ``port``} for ``pids``,
    from /proc/net/tcp and each process's descriptors: which worker holds which client.
    ``established`` False: connections in any state that a process still holds (closing)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A" and (
                        fields[3] == "01" or not established):
                    inodes[int(fields[9])] = True
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                owners[pid] = owners.get(pid, 0) + 1
    return owners


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal proc, wait up to timeout, then SIGKILL; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


# -- certificates ----------------------------------------------------------------------------

def make_cert(directory):
    """Self-signed EC certificate for 127.0.0.1 and localhost made by the openssl command."""
    directory = Path(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    rc, out, err = run([require_tool("openssl"), "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], timeout=30)
    assert rc == 0, f"openssl failed: {err}"
    return cert, key


def openssl(*args, timeout=30):
    """Run the openssl command; a failure fails the test with its stderr."""
    rc, _out, err = run([require_tool("openssl"), *args], timeout=timeout)
    assert rc == 0, f"openssl {' '.join(map(str, args[:2]))} failed: {err}"


def make_ca(directory, name):
    """A test CA (EC P-256, made by openssl) named ``proxyd test <name>``: (cert, key) paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN=proxyd test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_signed_cert(directory, stem, ca, *, subject, san=None, key_type="ec",
                     purpose="serverAuth"):
    """A certificate signed by ``ca`` ((cert, key)), made by openssl: (cert, key) paths.

    ``subject`` like ``/CN=a.test/O=Example``; ``san`` like ``DNS:a.test,IP:127.0.0.1`` (None:
    no subjectAltName); ``key_type`` ``ec`` (P-256) or ``rsa`` (2048 bits); ``purpose`` the
    extended key usage (``serverAuth`` or ``clientAuth``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, cert = (directory / f"{stem}.key", directory / f"{stem}.csr",
                      directory / f"{stem}.pem")
    ext = directory / f"{stem}.ext"
    ext.write_text((f"subjectAltName={san}\n" if san else "") + "basicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={purpose}\n")
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if key_type == "ec"
              else ["-newkey", "rsa:2048"])
    openssl("req", "-new", *newkey, "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", subject)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return cert, key


def s_client(port, *args, host=HOST, request=None, timeout=20):
    """``openssl s_client -connect host:port ARGS``; returns its stdout and stderr together.

    ``request`` (bytes) is sent after the handshake and the output is read until the server
    closes (``-ign_eof``), so TLS 1.3 session tickets sent after the handshake are seen
    (``-sess_out``); without it stdin is closed at once.
    """
    connect = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cmd = [require_tool("openssl"), "s_client", "-connect", connect, *args]
    if request is not None:
        cmd.append("-ign_eof")
    _rc, out, err = run(cmd, timeout=timeout, input=request or b"")
    return out + err


def s_client_facts(output):
    """What an s_client output says: subject CN, "New"/"Reused", TLS version, signature type."""
    subject = re.search(r"^subject=.*?CN\s*=\s*([^,/\n]+)", output, re.M)
    session = re.search(r"^(New|Reused), (TLSv[\d.]+)", output, re.M)
    signature = re.search(r"^Peer signature type: (\S+)", output, re.M)
    return {"cn": subject.group(1).strip() if subject else None,
            "session": session.group(1) if session else None,
            "version": session.group(2) if session else None,
            "signature": signature.group(1) if signature else None}


# -- the demo backend ------------------------------------------------------------------------

class Backend:
    """demo/backend.py as a subprocess."""

    def __init__(self, port=0, verbose=False, host=HOST):
        cmd = [sys.executable, str(BACKEND_SCRIPT), "--port", str(port), "--host", host]
        if verbose:
            cmd.append("-v")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=str(REPO))
        self.pid = self.proc.pid
        line = self._read_ready_line(timeout=15)
        info = json.loads(line)
        self.host = info["listening"]["host"]
        self.port = info["listening"]["port"]
        self.netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{self.netloc}:{self.port}"

    def _read_ready_line(self, timeout):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"demo backend did not start (output {buf!r})")
                if sel.select(timeout=min(left, 0.2)):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        continue
                    buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0]

    def url(self, path="/"):
        return f"http://{self.address}{path}"

    def _get_json(self, path):
        with socket.create_connection((self.host, self.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.address}\r\nConnection: close\r\n\r\n"
                      .encode())
            data = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return json.loads(body)

    def count(self):
        """The backend's counters: connections, requests, peak_connections, targets, ..."""
        return self._get_json("/_count")

    def reset(self):
        with socket.create_connection((self.host, self.port), timeout=10) as s:
            s.sendall(b"GET /_reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.recv(4096)

    def stop(self):
        rc = stop_process(self.proc, timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        return rc


# -- the daemon under test -------------------------------------------------------------------

def _endpoint_port(endpoint):
    m = re.match(r"tcp6?:(?:port=)?(\d+)", endpoint)
    if not m:
        raise ValueError(f"cannot find a TCP port in endpoint {endpoint!r}")
    return int(m.group(1))


def _endpoint_host(endpoint):
    """The address a tcp: or tcp6: endpoint listens on (``\\:`` unescaped); HOST if none."""
    m = re.search(r":interface=((?:\\.|[^:])+)", endpoint)
    return m.group(1).replace("\\", "") if m else HOST


# twistd with this interpreter. (``python -m twisted`` is the newer ``twist`` runner, which has
# no --nodaemon/--pidfile/--logfile; twisted.scripts.twistd has no __main__ guard, hence -c.)
TWISTD = [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
          "from twisted.scripts.twistd import run; run()"]


def proxyd_command(config_path, log_path, extra=(), logger=None):
    """twistd --nodaemon --pidfile= --logfile=LOG proxyd [extra] -c CONFIG (``log_path`` "-":
    twistd logs to stdout, as under systemd; ``logger``: twistd's --logger=LOGGER instead)"""
    log_option = f"--logger={logger}" if logger else f"--logfile={log_path}"
    return [*TWISTD, "--nodaemon", "--pidfile=", log_option, "proxyd", *extra,
            "-c", str(config_path)]


def proxyd_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _dur(value):
    """'1s' / '500ms' / '2m' -> a string nghttpx understands (it takes the same units)."""
    return str(value)


def nghttpx_command(config, log_path):
    """Translate the subset of proxyd's config the tests use into an nghttpx command line."""
    cmd = [require_tool("nghttpx"), "--conf=/dev/null", "-n1", f"--errorlog-file={log_path}",
           "--frontend-http2-read-timeout=60s", "--no-ocsp", "--insecure"]
    tls_files = None
    for lst in config["listen"]:
        port = _endpoint_port(lst["endpoint"])
        if lst.get("tls"):
            tls_files = (lst["tls"]["key"], lst["tls"]["cert"])
            cmd.append(f"-f{HOST},{port}")
        else:
            cmd.append(f"-f{HOST},{port};no-tls")
    for be in config["backends"]:
        cmd.append(f"-b{be['address'].replace(':', ',')}")
        if be.get("max_connections"):
            cmd.append(f"--backend-connections-per-host={be['max_connections']}")
    headers = config.get("headers", {})
    xff = headers.get("x_forwarded_for", "append")
    if xff:
        cmd.append("--add-x-forwarded-for")
        if xff == "replace":
            cmd.append("--strip-incoming-x-forwarded-for")
    if headers.get("x_forwarded_proto") is False:
        cmd.append("--no-add-x-forwarded-proto")
    if headers.get("via") is False:
        cmd.append("--no-via")
    if headers.get("location_rewrite") is False:
        cmd.append("--no-location-rewrite")
    timeouts = config.get("timeouts", {})
    if "backend_read" in timeouts:
        cmd.append(f"--backend-read-timeout={_dur(timeouts['backend_read'])}")
    if "backend_connect" in timeouts:
        cmd.append(f"--backend-connect-timeout={_dur(timeouts['backend_connect'])}")
    if config.get("access_log"):
        cmd.append(f"--accesslog-file={config['access_log']}")
        cmd.append("--accesslog-format=$remote_addr \"$method $path $protocol\" $status "
                   "$body_bytes_sent $request_time $backend_host:$backend_port")
    if tls_files:
        cmd.extend(tls_files)
    return cmd


class Proxy:
    """A running daemon: .pid, .ports, .log_path, .url(path, tls=False), .stop().

    ``log="-"`` makes twistd log to stdout (as the systemd unit does) and ``log="journal"`` uses
    proxyd's journal observer (stderr); log_text() then reads the captured output. ``env`` adds
    environment variables; ``prefix`` is a command put in front of twistd (e.g.
    systemd-socket-activate with its options); ``cwd`` the working directory (the repository
    root by default, which is then also first on sys.path).
    """

    def __init__(self, config, workdir, wait=True, log=None, env=None, prefix=(), cwd=REPO):
        self.config = config
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "proxy.yaml"
        if isinstance(config, str):  # verbatim text, e.g. a YAML syntax error
            self.config_path.write_text(config)
            listen = []
        else:
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            listen = config.get("listen") or []
        self.stdout_path = self.workdir / "stdout.txt"
        self.log_path = self.stdout_path if log in ("-", "journal") else self.workdir / "proxyd.log"
        self.listeners = []
        self.hosts = {}  # port -> the address it listens on (127.0.0.1, ::1)
        for lst in listen:
            try:
                port = _endpoint_port(lst["endpoint"])
                self.hosts[port] = _endpoint_host(lst["endpoint"])
                self.listeners.append((port, bool(lst.get("tls"))))
            except (ValueError, KeyError, TypeError):
                pass  # a deliberately broken endpoint in a config-error test
        self.ports = [p for p, _ in self.listeners]
        if TARGET == "nghttpx":
            cmd = nghttpx_command(config, self.log_path)
        else:
            cmd = [*prefix, *proxyd_command(
                self.config_path, "-" if log == "-" else self.log_path,
                logger="proxyd.net.journal.observer" if log == "journal" else None)]
        self.cmd = cmd
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(cwd), env={**proxyd_env(), **(env or {})},
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.exit_code = None
        if wait:
            # A bound, not a timing: starting worker processes (each imports Twisted and
            # proxyd) took over 15 s once on a 2-core machine running three test suites.
            self.wait_listening(60)

    def wait_listening(self, timeout):
        """Wait until every port accepts and, with workers, until the supervisor says they are
        ready (its sockets accept, into their backlog, before any worker serves them)."""
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        workers = isinstance(self.config, dict) and self.config.get("workers", "auto") != 1
        while workers and TARGET == "proxyd":
            text = self.log_text()
            if "proxyd workers ready" in text or (  # or a single process (auto on one core)
                    "proxyd listening on" in text and " workers)" not in text):
                break
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                pending = pending or ["the workers"]
                break
            time.sleep(0.05)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode} before listening"
                                   f" on {pending}\n{self.output()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"daemon not listening on {pending} after {timeout}s\n"
                                   f"{self.output()}")
            if port_accepts(pending[0], host=self.hosts[pending[0]]):
                pending.pop(0)
            else:
                time.sleep(0.05)

    def url(self, path="/", tls=False):
        for port, is_tls in self.listeners:
            if is_tls == tls:
                return f"{'https' if tls else 'http'}://{self.authority(tls)}{path}"
        raise ValueError(f"no {'TLS' if tls else 'cleartext'} listener in this config")

    def port(self, tls=False):
        for port, is_tls in self.listeners:
            if is_tls == tls:
                return port
        raise ValueError("no such listener")

    def authority(self, tls=False):
        port = self.port(tls)
        host = self.hosts.get(port, HOST)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def log_text(self):
        if not self._out.closed:
            self._out.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self):
        """stdout/stderr plus the log file: what a failing test should show."""
        if not self._out.closed:
            self._out.flush()
        try:
            out = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            out = ""
        return (f"--- daemon command: {' '.join(map(str, self.cmd))}\n--- stdout/stderr:\n"
                f"{out[-6000:]}\n--- log {self.log_path}:\n{self.log_text()[-10000:]}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=40):
        """SIGTERM, wait up to timeout; returns the exit code (SIGKILL and -9 past it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_code = self.proc.returncode
        self._out.close()
        return self.exit_code

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running(config, workdir, **options):
    """A :class:`Proxy` on ``config`` for the ``with`` block (module fixtures), then stopped."""
    proxy = Proxy(config, workdir, **options)
    try:
        yield proxy
    finally:
        try:
            if proxy.alive():
                proxy.stop(timeout=15)
        finally:
            proxy.kill()


def base_config(backend, cert, key, *, tls=True, cleartext=True, **sections):
    """A default-mode config in front of backend with fresh free ports; sections override."""
    listen = []
    if tls:
        listen.append({"endpoint": f"tcp:{free_port()}:interface={HOST}",
                       "tls": {"cert": str(cert), "key": str(key)},
                       "protocols": ["h2", "http/1.1"]})
    if cleartext:
        listen.append({"endpoint": f"tcp:{free_port()}:interface={HOST}",
                       "protocols": ["h2", "http/1.1"]})
    address = backend if isinstance(backend, str) else backend.address
    config = {
        "mode": "default",
        "listen": listen,
        "backends": [{"address": address, "protocol": "http/1.1", "tls": False,
                      "max_connections": 100}],
        # the tests are not about rate limiting: uploads of 20 MiB must not be throttled
        "rate_limits": {"read": {"rate": 0, "burst": 0}},
        # see E2E_WORKERS; tests that observe one process (its backend pools, its per-process
        # buckets, the order of its access lines) pass workers=1 themselves
        "workers": E2E_WORKERS,
        "timeouts": {"backend_read": "30s", "graceful_shutdown": "10s"},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            merged = dict(config[name])
            merged.update(value)
            config[name] = merged
        else:
            config[name] = value
    return config


# -- curl ------------------------------------------------------------------------------------

class CurlResult:
    def __init__(self, rc, stderr, status, version, headers_blocks, body_path):
        self.rc = rc
        self.stderr = stderr
        self.status = status
        self.version = version
        self.blocks = headers_blocks  # every header block received, informational ones too
        self.body_path = body_path

    @property
    def headers(self):
        """Headers of the final response as [(lowercase name, value)]."""
        return self.blocks[-1][1] if self.blocks else []

    def header(self, name):
        vals = self.header_all(name)
        return vals[0] if vals else None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def body(self):
        return Path(self.body_path).read_bytes()

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return (f"<curl rc={self.rc} status={self.status} version={self.version} "
                f"headers={self.headers} stderr={self.stderr[-500:]!r}>")


def parse_header_dump(text):
    """curl -D output -> [(status, [(name, value)])] for each header block."""
    blocks = []
    current = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            current = (int(parts[1]), [])
            blocks.append(current)
        elif line and current is not None and ":" in line:
            k, v = line.split(":", 1)
            current[1].append((k.strip().lower(), v.strip()))
    return blocks


def curl(url, *args, mode="h2", tmpdir, timeout=60, body_name="body"):
    """Run curl; mode is h2 (ALPN over TLS), h2c (prior knowledge), h1 (--http1.1)."""
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    hdr = tmpdir / f"{body_name}.headers"
    body = tmpdir / body_name
    flag = {"h2": "--http2", "h2c": "--http2-prior-knowledge", "h1": "--http1.1"}[mode]
    cmd = [require_tool("curl"), "-sS", "-k", flag, "-D", str(hdr), "-o", str(body),
           "-w", "%{http_code} %{http_version}", "--max-time", str(timeout), *args, url]
    rc, out, err = run(cmd, timeout=timeout + 10)
    parts = out.split()
    status = int(parts[0]) if parts and parts[0].isdigit() else 0
    version = parts[1] if len(parts) > 1 else ""
    blocks = parse_header_dump(hdr.read_text(errors="replace")) if hdr.exists() else []
    if not body.exists():
        body.write_bytes(b"")
    return CurlResult(rc, err, status, version, blocks, body)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def curl_in_background(url, out, *args, timeout=60):
    """``curl -sS -k ARGS -o OUT URL`` running while the block runs (yields its Popen; stderr
    is a pipe); killed on the way out if it is still running."""
    proc = subprocess.Popen([require_tool("curl"), "-sS", "-k", *args, "-o", str(out),
                             "--max-time", str(timeout), url], stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def slow_download(proxy, out, chunks=20, size=1000, timeout=30):
    """An h2c download of ``chunks`` x ``size`` bytes, one chunk every 100 ms, under way (its
    first chunk arrived) while the block runs; yields curl's Popen."""
    url = proxy.url(f"/slow?chunks={chunks}&interval=100&size={size}")
    with curl_in_background(url, out, "--http2-prior-knowledge", timeout=timeout) as download:
        wait_until(lambda: out.exists() and out.stat().st_size >= size, 10,
                   what="the first bytes of the slow download")
        yield download


def start_socket_activated(start_proxyd, config, ports):
    """proxyd under ``systemd-socket-activate``, which listens on ``ports`` (listen[i] of
    ``config`` takes index i); returns the daemon once the first port accepts."""
    for index, _ in enumerate(ports):
        config["listen"][index]["endpoint"] = f"systemd:domain=INET:index={index}"
    listen = [arg for port in ports for arg in ("-l", f"{HOST}:{port}")]
    # systemd-socket-activate passes only TERM, PATH, HOME and what -E names to its child.
    proxy = start_proxyd(config, wait=False, prefix=[
        require_tool("systemd-socket-activate"), "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED",
        *listen])
    wait_until(lambda: port_accepts(ports[0]), 10, what="systemd-socket-activate to listen")
    return proxy


# -- metrics, health, signals and sd_notify -------------------------------------------------

def http_get(port, path):
    """One HTTP/1.1 GET on a fresh connection (the metrics listener answers and closes):
    (status, body bytes)."""
    data = raw_http1(port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(),
                     until_close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


def scrape(port):
    """The daemon's metrics, parsed by prometheus_client's own parser:
    {(sample name, frozenset of label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    status, body = http_get(port, "/metrics")
    assert status == 200, body[:300]
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def sample_sum(samples, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= lbls)


def signal_and_wait(proxy, sig, text, timeout=15):
    """Send ``sig`` to the daemon and wait until its log holds one more line with ``text``."""
    before = proxy.log_text().count(text)
    os.kill(proxy.pid, sig)
    wait_until(lambda: proxy.log_text().count(text) > before, timeout,
               what=f"{text!r} in the log after signal {sig}")


def rewrite_config(proxy, config):
    """Write ``config`` to the daemon's config file (no signal)."""
    proxy.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def reload_config(proxy, config, expect="proxyd reloaded"):
    """Write ``config`` and SIGHUP; wait for the outcome's log line."""
    rewrite_config(proxy, config)
    signal_and_wait(proxy, signal.SIGHUP, expect, timeout=60)  # workers take longer


class NotifySocket:
    """A fake systemd NOTIFY_SOCKET: a unix datagram socket that records what proxyd sends."""

    def __init__(self, directory):
        self.path = str(Path(directory) / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []  # (monotonic time received, {key: value})

    def fields(self):
        """Every message received so far, as {key: value} dicts, in order."""
        return [fields for _, fields in self.messages]

    def wait(self, condition, timeout, what):
        """Receive until ``condition(self.fields())`` is true; return its value."""
        deadline = time.monotonic() + timeout
        while not (result := condition(self.fields())):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no sd_notify message {what} within {timeout}s: "
                                     f"{self.fields()}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))
        return result

    def wait_for(self, key, timeout):
        """The first message with ``KEY=1``."""
        return self.wait(lambda ms: next((m for m in ms if m.get(key) == "1"), None), timeout,
                         f"{key}=1")

    def close(self):
        self.sock.close()


# -- nghttp / h2load output ------------------------------------------------------------------

_NGHTTP_HDR = re.compile(r"^\[\s*[\d.]+\] recv \(stream_id=(\d+)\) (.+?): (.*)$")
_NGHTTP_FRAME = re.compile(r"^\[\s*[\d.]+\] (recv|send) (\w+) frame <length=\d+, "
                           r"flags=0x([0-9a-f]+), stream_id=(\d+)>")
_NGHTTP_ERR = re.compile(r"error_code=(\w+)\(0x([0-9a-f]+)\)")


class NghttpTrace:
    """nghttp -v output parsed: per stream the request path, received header blocks, DATA bytes
    and RST_STREAM codes; GOAWAY."""

    def __init__(self, text):
        self.text = text
        self.paths = {}     # stream id -> :path sent
        self.blocks = {}    # stream id -> [[(name, value)], ...] received header blocks
        self.data = {}      # stream id -> received DATA payload bytes
        self.resets = {}    # stream id -> error name (RST_STREAM received)
        self.sent_resets = {}
        self.ended = set()  # streams that received END_STREAM
        self.goaway = None
        pending = {}
        last_frame = None
        for line in text.splitlines():
            m = _NGHTTP_HDR.match(line)
            if m:
                pending.setdefault(int(m.group(1)), []).append((m.group(2), m.group(3)))
                continue
            m = _NGHTTP_FRAME.match(line)
            if m:
                direction, ftype, sid = m.group(1), m.group(2), int(m.group(4))
                flags = int(m.group(3), 16)
                last_frame = (direction, ftype, sid)
                if direction == "recv":
                    if ftype == "HEADERS":
                        self.blocks.setdefault(sid, []).append(pending.pop(sid, []))
                    elif ftype == "PUSH_PROMISE":
                        pending.pop(sid, None)
                    elif ftype == "DATA":
                        length = int(re.search(r"length=(\d+)", line).group(1))
                        self.data[sid] = self.data.get(sid, 0) + length
                    if ftype in ("HEADERS", "DATA") and flags & 0x1:
                        self.ended.add(sid)
                continue
            if last_frame and last_frame[:2] == ("send", "HEADERS"):
                pm = re.match(r"^\s+:path: (.*)$", line)
                if pm:
                    self.paths[last_frame[2]] = pm.group(1)
                    continue
            m = _NGHTTP_ERR.search(line)
            if m and last_frame:
                direction, ftype, sid = last_frame
                if ftype == "RST_STREAM":
                    (self.resets if direction == "recv" else self.sent_resets)[sid] = m.group(1)
                elif ftype == "GOAWAY" and direction == "recv":
                    self.goaway = m.group(1)
                last_frame = None

    def stream(self, path):
        """The stream id on which path was requested."""
        for sid, p in self.paths.items():
            if p == path:
                return sid
        raise AssertionError(f"no stream for {path!r} in {self.paths}")

    def status(self, sid):
        for block in self.blocks.get(sid, []):
            for k, v in block:
                if k == ":status" and not v.startswith("1"):
                    return int(v)
        return None

    def informational(self, sid):
        return [b for b in self.blocks.get(sid, [])
                if any(k == ":status" and v.startswith("1") for k, v in b)]

    def final_headers(self, sid):
        for b in self.blocks.get(sid, []):
            if any(k == ":status" and not v.startswith("1") for k, v in b):
                return b
        return None

    def trailers(self, sid):
        blocks = self.blocks.get(sid, [])
        return [b for b in blocks if b and not any(k == ":status" for k, v in b)]


def nghttp(*args, timeout=60):
    """Run nghttp -v (plus args); returns (rc, NghttpTrace, stdout, stderr)."""
    rc, out, err = run([require_tool("nghttp"), "-v", *args], timeout=timeout)
    return rc, NghttpTrace(out), out, err


def parse_h2load(text):
    """The numbers of h2load's 'requests:' and 'status codes:' lines."""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not m:
        raise AssertionError(f"no 'requests:' line in h2load output:\n{text[-3000:]}")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    res = dict(zip(keys, map(int, m.groups())))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        res.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups())))
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        res["req_per_s"] = float(m.group(3))
    return res


# -- a raw HTTP/2 client over a socket (the h2 library's H2Connection) -----------------------

class H2Client:
    """A minimal blocking HTTP/2 client for cases curl and nghttp cannot express.

    ``validate=False`` turns off the h2 library's outbound header validation and normalisation,
    so the client can send what a well-behaved client never would (uppercase names,
    connection-specific headers).
    """

    def __init__(self, port, tls=False, validate=True, timeout=10, host=HOST):
        import h2.config
        import h2.connection
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=host)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.timeout = timeout
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", authority=None, scheme="http", headers=(), body=None):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", scheme),
                (":authority", authority or f"{HOST}:{self.sock.getpeername()[1]}")]
        hdrs.extend(headers)
        self.streams[sid] = {"headers": None, "informational": [], "data": bytearray(),
                             "trailers": None, "ended": False, "reset": None}
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        self.flush()
        if body is not None:
            self.send_body(sid, body)
        return sid

    def get(self, path, timeout=None, **kw):
        """One request, waited for; returns the stream record (headers, data, trailers...)."""
        sid = self.request(path, **kw)
        return self.response(sid, timeout)

    def _handle(self, event):
        import h2.events as ev
        st = self.streams.get(getattr(event, "stream_id", None))
        if isinstance(event, ev.ResponseReceived):
            st["headers"] = list(event.headers)
        elif isinstance(event, ev.InformationalResponseReceived):
            st["informational"].append(list(event.headers))
        elif isinstance(event, ev.DataReceived):
            st["data"] += event.data
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif isinstance(event, ev.TrailersReceived):
            st["trailers"] = list(event.headers)
        elif isinstance(event, ev.StreamEnded):
            st["ended"] = True
        elif isinstance(event, ev.StreamReset):
            if st is not None:
                st["reset"] = event.error_code
        elif isinstance(event, ev.ConnectionTerminated):
            self.goaway = event.error_code

    def _recv_once(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("h2 client: deadline passed waiting for the proxy")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        except socket.timeout:
            return
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self._handle(event)
        self.flush()

    def pump(self, done, timeout=None):
        """Read and process frames until done() is true, the peer closes, or the deadline."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not done() and not self.closed:
            self._recv_once(deadline)

    def send_body(self, sid, data, end=True, timeout=None):
        """Send data on an open stream, respecting the peer's flow-control windows."""
        deadline = time.monotonic() + (timeout or self.timeout)
        view = memoryview(data)
        pos = 0
        st = self.streams[sid]
        while pos < len(view):
            if st["reset"] is not None or self.goaway is not None or self.closed:
                return False
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self._recv_once(deadline)
                continue
            n = min(window, len(view) - pos)
            self.conn.send_data(sid, view[pos:pos + n].tobytes())
            pos += n
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()
        return True

    def open_stream(self, path, method="POST", authority=None, scheme="http", headers=()):
        """Send request headers without END_STREAM; the body follows with send_body."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", scheme),
                (":authority", authority or f"{HOST}:{self.sock.getpeername()[1]}")]
        hdrs.extend(headers)
        self.streams[sid] = {"headers": None, "informational": [], "data": bytearray(),
                             "trailers": None, "ended": False, "reset": None}
        self.conn.send_headers(sid, hdrs, end_stream=False)
        self.flush()
        return sid

    def response(self, sid, timeout=None):
        st = self.streams[sid]
        self.pump(lambda: st["ended"] or st["reset"] is not None or self.goaway is not None,
                  timeout)
        return st

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        with contextlib.suppress(OSError):
            self.sock.close()


def header_value(headers, name):
    name = name.lower()
    vals = [v for k, v in headers if k.lower() == name]
    return vals[0] if vals else None


def _complete_response(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if not head.startswith(b"HTTP/1.") or head[9:10] == b"1":
        return False
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(m) and len(body) >= int(m.group(1))


def raw_http1(port, data, timeout=10, tls=False, until_close=False):
    """Send raw bytes to a listener; read until the peer closes, the deadline, or (unless
    until_close) the first response is complete by its content-length."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=HOST)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(data)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            out += chunk
            if not until_close and _complete_response(out):
                break
    finally:
        sock.close()
    return out


def http1_keepalive(port, path, timeout=10):
    """Open a connection and GET ``path`` on it; (the socket, the status or 0 if the
    connection was refused or closed first). The caller closes the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((HOST, port))
    except ConnectionError:
        return sock, 0
    return sock, http1_again(sock, path, timeout)


def http1_again(sock, path, timeout=10):
    """One more GET on an open HTTP/1.1 connection: the status, or 0 if it closed first."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        while not _complete_response(data) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionError, socket.timeout):
        pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0



def closed_by_peer(sock, timeout):
    """True when the peer closes (or resets) ``sock`` within ``timeout`` seconds, reading and
    dropping whatever arrives before; False when it is still open at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionError:
            return True

# -- nginx as a second, independent backend --------------------------------------------------

class NginxBackend:
    """nginx serving a directory of static files on 127.0.0.1 (a real HTTP/1.1 server that is
    not ours)."""

    def __init__(self, workdir, port=None):
        self.workdir = Path(workdir)
        self.root = self.workdir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = HOST
        self.address = f"{HOST}:{self.port}"
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{self.port};
        root {self.root};
        location / {{ }}
        location = /moved {{ return 301 http://$host/static.bin; }}
    }}
}}
""")
        self.proc = subprocess.Popen([require_tool("nginx"), "-p", str(self.workdir), "-c",
                                      str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_accepts(self.port), 15,
                       what="nginx to listen")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}")

    def stop(self):
        rc = stop_process(self.proc, signal.SIGQUIT, timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        return rc


# -- a raw capture backend -------------------------------------------------------------------

class LoopbackServer:
    """A listening socket on 127.0.0.1 served by a selector loop in a thread of the test
    process: subclasses say what an accepted connection registers (:meth:`accepted`) and what a
    readable one does (:meth:`readable`). ``stop()`` ends the thread and closes every socket."""

    def __init__(self):
        import selectors
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import selectors

        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.sock.accept()
                        conn.setblocking(False)
                        for sock, data in self.accepted(conn):
                            self._sel.register(sock, selectors.EVENT_READ, data)
                    continue
                self.readable(key.fileobj, key.data)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()

    def accepted(self, conn):
        """``[(socket, data)]`` to watch for a new connection."""
        raise NotImplementedError

    def readable(self, sock, data):
        """``sock`` (registered with ``data``) has bytes or was closed."""
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()

    @staticmethod
    def read(conn):
        """What ``conn`` has; ``b""`` when the peer closed or reset it."""
        try:
            return conn.recv(65536)
        except (BlockingIOError, ConnectionResetError):
            return b""

    def drop(self, conn):
        """Stop watching ``conn`` and close it."""
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn)
        conn.close()


class CaptureBackend(LoopbackServer):
    """An HTTP/1.1 backend that records every byte proxyd writes to it, per connection.

    It runs in a thread of the test process on 127.0.0.1. Each connection's bytes are kept whole
    (``raw``) and parsed with an h11 server (the independent oracle): each complete request is
    recorded and answered with ``respond(request) -> bytes`` (default: ``200``, body ``ok``); a
    parse error is recorded and the connection closed. With ``proxy_protocol`` each connection
    must start with a PROXY header, parsed by proxyd.proxyproto and kept as ``"proxy"``.
    ``stop()`` ends the thread.
    """

    OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    def __init__(self, respond=None, proxy_protocol=False):
        self.proxy_protocol = proxy_protocol
        self.respond = respond or (lambda request: self.OK)
        self.connections = []  # dicts: raw bytes, requests, errors, closed
        super().__init__()

    def accepted(self, conn):
        import h11

        record = {"raw": bytearray(), "requests": [], "errors": [], "closed": False,
                  "h11": h11.Connection(h11.SERVER), "current": None,
                  "proxy": None if self.proxy_protocol else 0}
        with self._lock:
            self.connections.append(record)
        return [(conn, record)]

    def readable(self, conn, record):
        import h11

        data = self.read(conn)
        if not data:
            self._close(conn, record)
            return
        with self._lock:
            record["raw"] += data
        if record["proxy"] is None:
            from proxyd.proxyproto import parse

            header, used = parse(bytes(record["raw"]))
            if header is None:
                return
            record["proxy"] = header
            data = bytes(record["raw"][used:])
            if not data:
                return
        parser = record["h11"]
        parser.receive_data(data)
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if type(event) is h11.Request:
                    record["current"] = {"method": event.method, "target": event.target,
                                         "headers": list(event.headers), "body": b""}
                elif type(event) is h11.Data:
                    record["current"]["body"] += bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    request, record["current"] = record["current"], None
                    with self._lock:
                        record["requests"].append(request)
                    conn.setblocking(True)
                    conn.sendall(self.respond(request))
                    conn.setblocking(False)
                    leftover = bytes(parser.trailing_data[0])
                    parser = record["h11"] = h11.Connection(h11.SERVER)
                    if leftover:
                        parser.receive_data(leftover)
                elif type(event) is h11.ConnectionClosed:
                    break
        except (h11.RemoteProtocolError, OSError) as exc:
            with self._lock:
                record["errors"].append(str(exc))
            self._close(conn, record)

    def _close(self, conn, record):
        self.drop(conn)
        with self._lock:
            record["closed"] = True

    def requests(self):
        """Every complete request received, over all connections, in arrival order."""
        with self._lock:
            return [r for c in self.connections for r in c["requests"]]

    def raw(self):
        """All bytes received, over all connections."""
        with self._lock:
            return b"".join(bytes(c["raw"]) for c in self.connections)

    def errors(self):
        """The parse errors of the oracle (a well-formed proxy causes none)."""
        with self._lock:
            return [e for c in self.connections for e in c["errors"]]


class IgnoresBodyBackend(LoopbackServer):
    """A legacy HTTP/1.1 app that reads no content on GET, HEAD, DELETE, TRACE and OPTIONS (a
    CORS preflight handler reads none): the backend
    of the CL.0 desync. It finds request heads by their blank line, takes Content-Length only on
    other methods, answers each request with its target as the body, keeps the connection open
    unless the request said ``connection: close`` (then it answers and closes without reading
    further, as servers do). ``executed`` lists ``(connection number, method, target)`` of every
    request it ran, so a request hidden in content shows up there if it ever runs."""

    IGNORED = (b"GET", b"HEAD", b"DELETE", b"TRACE", b"OPTIONS")

    def __init__(self):
        self.executed = []
        self._count = itertools.count()
        super().__init__()

    def accepted(self, conn):
        return [(conn, {"n": next(self._count), "buf": b""})]

    def readable(self, conn, record):
        data = self.read(conn)
        if not data:
            self.drop(conn)
            return
        record["buf"] += data
        while b"\r\n\r\n" in record["buf"]:
            head, _, rest = record["buf"].partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target = (lines[0].split(b" ") + [b"", b""])[:2]
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip().lower()
            length = 0 if method in self.IGNORED else int(fields.get(b"content-length", 0))
            if len(rest) < length:
                return
            record["buf"] = rest[length:]
            with self._lock:
                self.executed.append((record["n"], method, target))
            conn.setblocking(True)
            conn.sendall(self.answer(record, method, target))
            conn.setblocking(False)
            if fields.get(b"connection") == b"close":
                self.drop(conn)
                return

    def answer(self, record, method, target):
        """The bytes answering one request: its target as the body."""
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target)

    def targets(self):
        """The targets of every request it ran, in order."""
        with self._lock:
            return [target for _, _, target in self.executed]


class LateBodyBackend(IgnoresBodyBackend):
    """A legacy app that writes content where none may follow (RFC 9110 §6.4.1: a response to
    HEAD, a 204, a 304) and writes it late: it announces the content in the head
    (``content-length``), as its answer to GET would, and sends the content itself only just
    before its answer to the next request on that connection, the worst moment, a later
    segment. The content it sends so is a whole response of its own (``late_body``): a proxy
    that reuses the connection reads it as the answer to that next request (response queue
    poisoning). A target ``/status/NNN...`` answers with status NNN."""

    @staticmethod
    def late_body(target):
        """The content the app writes late: it reads as a whole response."""
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\nPOISON%s" % (
            len(target) + 6, target)

    def answer(self, record, method, target):
        """The late content of the previous answer on this connection, then this answer."""
        late, record["late"] = record.get("late", b""), b""
        status = int(target[8:11]) if target.startswith(b"/status/") else 200
        body = target
        if method == b"HEAD" or status in (204, 304):
            body = self.late_body(target)
            record["late"] = body
            return late + b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, len(body))
        return late + b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (
            status, len(body), body)


# -- a TCP balancer stand-in and Redis (issue 12) --------------------------------------------

class TcpRelay(LoopbackServer):
    """A TCP relay on 127.0.0.1 in front of ``target_port``: what a balancer in TCP mode does
    (HAProxy ``mode tcp``), so proxyd's peer is the relay while a PROXY header names the client.
    It runs in a thread of the test process; ``stop()`` ends it and its connections."""

    def __init__(self, target_port):
        self.target = (HOST, target_port)
        super().__init__()

    def accepted(self, conn):
        upstream = socket.create_connection(self.target, timeout=5)
        upstream.setblocking(False)
        return [(conn, upstream), (upstream, conn)]

    def readable(self, sock, other):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
            return
        for each in (sock, other):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(each)
            each.close()



class WallClock:
    """A wall clock the test steps, for one daemon: ``tests/e2e/wallclock/sitecustomize.py``
    offsets that daemon's ``time.time()`` (NTP or an administrator stepping the clock), while
    its ``time.monotonic()`` goes on; the machine's clock is never touched.

    ``env()`` is the daemon's environment (pass it to ``start_proxyd(..., env=...)``);
    ``step(proxy, seconds)`` moves the daemon's wall clock by ``seconds`` (negative: back) and
    returns once the daemon has taken the step.
    """

    SHIM = Path(__file__).resolve().parent / "wallclock"

    def __init__(self, directory):
        self.path = Path(directory) / "wallclock-offset"
        self.ack = Path(f"{self.path}.ack")
        self.offset = 0.0

    def env(self):
        """PYTHONPATH with the shim first, and the file it reads its offset from."""
        return {"PYTHONPATH": f"{self.SHIM}{os.pathsep}{proxyd_env()['PYTHONPATH']}",
                "PROXYD_TEST_WALLCLOCK": str(self.path)}

    def step(self, proxy, seconds, timeout=10):
        """Move the daemon's wall clock by ``seconds`` (SIGUSR2; the shim acknowledges)."""
        self.offset += seconds
        with contextlib.suppress(FileNotFoundError):
            self.ack.unlink()
        self.path.write_text(repr(self.offset))
        os.kill(proxy.pid, signal.SIGUSR2)

        def taken():
            try:
                return float(self.ack.read_text()) == self.offset
            except (FileNotFoundError, ValueError):
                return False

        wait_until(taken, timeout, what=f"the daemon's wall clock to step by {seconds}s")

class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence, stopped by ``stop()``."""

    def __init__(self, workdir, port=None):
        self.port = port or free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [require_tool("redis-server"), "--port", str(self.port), "--bind", HOST,
             "--save", "", "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_accepts(self.port), 15, what="redis-server to listen")
        except AssertionError:
            self.stop()
            raise

    def command(self, *args):
        """One command through redis-cli (Debian's redis-tools, a dependency of redis-server);
        returns its raw output lines."""
        out = subprocess.run([require_tool("redis-cli"), "-h", HOST, "-p", str(self.port),
                              *map(str, args)], capture_output=True, timeout=10, check=True)
        return out.stdout.decode().splitlines()

    def stop(self):
        return stop_process(self.proc, timeout=5)
