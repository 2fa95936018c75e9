"""Process lifecycle and observability: graceful SIGTERM, the access log."""

import re
import signal
import subprocess
import sys
import time

import yaml

from .harness import (REPO, NghttpTrace, curl, demo, port_accepts, proxyd_command, proxyd_env,
                      require_tool, sha256_file, wait_until)


def _wait_refused(port, timeout):
    wait_until(lambda: not port_accepts(port, timeout=0.2), timeout,
               what=f"port {port} to stop accepting after SIGTERM")


def test_sigterm_lets_slow_download_finish(backend, start_proxyd, make_config, tmp_path):
    """SIGTERM during a slow h2 download (2 s): the listeners stop accepting at once, the
    download still completes intact within graceful_shutdown, and the daemon exits 0."""
    proxy = start_proxyd(make_config(backend, timeouts={"graceful_shutdown": "15s"}))
    chunks, size = 20, 4096
    out = tmp_path / "slow.bin"
    curl_proc = subprocess.Popen(
        [require_tool("curl"), "-sS", "-k", "--http2", "-o", str(out), "--max-time", "30",
         proxy.url(f"/slow?chunks={chunks}&interval=100&size={size}", tls=True)],
        stderr=subprocess.PIPE)
    try:
        wait_until(lambda: out.exists() and out.stat().st_size >= size, 10,
                   what="the first bytes of the slow download")
        proxy.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        _wait_refused(proxy.port(tls=True), 3)
        assert curl_proc.poll() is None, "the download ended before it could be observed"
        rc = curl_proc.wait(timeout=30)
        t_done = time.monotonic()
    finally:
        if curl_proc.poll() is None:
            curl_proc.kill()
            curl_proc.wait()
    assert rc == 0, curl_proc.stderr.read()
    assert sha256_file(out) == demo.body_sha256(chunks * size)
    code = proxy.wait_exit(15)
    assert code == 0, proxy.output()
    assert t_done - t_term < 15


def test_sigterm_sends_goaway_and_finishes_open_stream(backend, start_proxyd, make_config,
                                                       tmp_path):
    """An h2 client (nghttp) with an open stream gets GOAWAY NO_ERROR on SIGTERM, and its
    stream still ends with the complete body."""
    proxy = start_proxyd(make_config(backend, timeouts={"graceful_shutdown": "15s"}))
    path = "/slow?chunks=10&interval=100&size=1000"
    out_path = tmp_path / "nghttp.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([require_tool("nghttp"), "-nv", proxy.url(path)], stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: any(path in t for t in backend.count()["targets"]), 10,
                       what="the slow request to reach the backend")
            proxy.proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    trace = NghttpTrace(out_path.read_text(errors="replace"))
    sid = trace.stream(path)
    assert trace.goaway == "NO_ERROR", trace.text[-3000:]
    assert trace.status(sid) == 200 and trace.data.get(sid) == 10000, trace.text[-3000:]
    assert sid in trace.ended and sid not in trace.resets
    assert proxy.wait_exit(15) == 0, proxy.output()


def test_sigterm_idle_exits_promptly(proxy):
    """With nothing in flight, SIGTERM makes the daemon exit 0 within a few seconds."""
    t0 = time.monotonic()
    code = proxy.stop(timeout=10)
    assert code == 0, proxy.output()
    assert time.monotonic() - t0 < 5


# twistd with the SIGTERM sent to itself just before the reactor runs: the ports are bound,
# Twisted's own signal handlers are not installed yet.
_EARLY_SIGTERM = (
    "import os, signal, sys\n"
    "from twisted.internet import reactor\n"
    "run = reactor.run\n"
    "def early(*args, **kwargs):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "    run(*args, **kwargs)\n"
    "reactor.run = early\n"
    "sys.argv[0] = 'twistd'\n"
    "from twisted.scripts.twistd import run as twistd\n"
    "twistd()\n"
)


def test_sigterm_before_the_reactor_runs_is_a_clean_stop(backend, make_config, tmp_path):
    """A SIGTERM that arrives after the ports are bound but before twistd runs the reactor (a
    supervisor stopping a daemon that was just started) is a clean stop: exit 0, not death by
    the signal's default action."""
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(make_config(backend), sort_keys=False))
    cmd = proxyd_command(config, tmp_path / "proxyd.log")
    assert cmd[:2] == [sys.executable, "-c"]
    cmd[2] = _EARLY_SIGTERM
    proc = subprocess.run(cmd, cwd=str(REPO), env=proxyd_env(), capture_output=True, timeout=30)
    log = (tmp_path / "proxyd.log").read_text(errors="replace")
    assert proc.returncode == 0, (proc.stdout, proc.stderr, log)
    assert "proxyd listening on" in log


def test_graceful_shutdown_deadline_is_enforced(backend, start_proxyd, make_config, tmp_path):
    """graceful_shutdown: 1s and a download that would take 10 s: the daemon does not wait for
    it; it exits 0 within a few seconds and the download is cut short."""
    proxy = start_proxyd(make_config(backend, timeouts={"graceful_shutdown": "1s"}))
    out = tmp_path / "long.bin"
    curl_proc = subprocess.Popen(
        [require_tool("curl"), "-sS", "--http2-prior-knowledge", "-o", str(out), "--max-time",
         "30", proxy.url("/slow?chunks=100&interval=100&size=100")], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: out.exists() and out.stat().st_size >= 100, 10,
                   what="the first bytes of the long download")
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        code = proxy.wait_exit(10)
        elapsed = time.monotonic() - t0
        rc = curl_proc.wait(timeout=30)
    finally:
        if curl_proc.poll() is None:
            curl_proc.kill()
            curl_proc.wait()
    assert code == 0, proxy.output()
    assert 0.5 < elapsed < 4, elapsed
    assert rc != 0 and out.stat().st_size < 100 * 100


def test_access_log_one_line_per_request(backend, start_proxyd, make_config, tmp_path):
    """access_log: one line per request with client address, protocol, method, authority, path,
    status and backend address."""
    log = tmp_path / "access.log"
    # one process: the test reads the lines in request order (workers append their own batches)
    proxy = start_proxyd(make_config(backend, access_log=str(log), workers=1))
    r1 = curl(proxy.url("/bytes/123", tls=True), mode="h2", tmpdir=tmp_path)
    r2 = curl(proxy.url("/echo"), "--data-binary", "hello", mode="h1", tmpdir=tmp_path)
    r3 = curl(proxy.url("/status/404"), mode="h2c", tmpdir=tmp_path)
    assert (r1.status, r2.status, r3.status) == (200, 200, 404)
    lines = wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 3 and
                       log.read_text().splitlines(), 10, what="3 access log lines")
    code = proxy.stop()
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    expectations = [("h2", "GET", proxy.authority(tls=True), "/bytes/123", "200"),
                    ("http/1.1", "POST", proxy.authority(), "/echo", "200"),
                    ("h2", "GET", proxy.authority(), "/status/404", "404")]
    for line, (proto, method, authority, path, status) in zip(lines, expectations):
        assert "127.0.0.1" in line
        assert re.search(rf"(?i)(^|[\s\"]){re.escape(proto)}($|[\s\"])", line), (proto, line)
        for word in (method, authority, path, status, backend.address):
            assert re.search(rf"(^|[\s\"]){re.escape(word)}($|[\s\"])", line), (word, line)
    assert code == 0, proxy.output()
