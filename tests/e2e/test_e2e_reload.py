"""SIGHUP reload of the real daemon: new listeners, certificates, backends, limits; no failures.

Strategy: the daemon's config file is rewritten in place and SIGHUP sent; each test waits for
the "proxyd reloaded" (or "reload failed") log line before it looks, then checks what a client
sees: which backend answered (two demo backends tell requests apart by their counters), which
certificate a new TLS handshake presents, which ports accept, whether a download that started
before the reload completes intact, and the failure counts of h2load rounds across five
reloads.
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading

import pytest

from .harness import (HOST, Backend, H2Client, curl, curl_in_background, demo, free_port,
                      make_cert, parse_h2load, port_accepts, require_tool, run, sha256_file,
                      rewrite_config, signal_and_wait, start_socket_activated,
                      wait_until)
from .harness import reload_config as reload


def presented_certificate(port):
    """DER bytes of the certificate a new TLS handshake on ``port`` presents."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((HOST, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)


def der(cert_path):
    """DER bytes of a PEM certificate file."""
    return ssl.PEM_cert_to_DER_cert(cert_path.read_text())


def test_sighup_switches_backends_and_header_rules(start_proxyd, make_config, tmp_path):
    """After SIGHUP, new connections go to the new backend with the new header rules."""
    first, second = Backend(), Backend()
    try:
        config = make_config(first)
        proxy = start_proxyd(config)
        before = curl(proxy.url("/echo"), mode="h2c", tmpdir=tmp_path / "a")
        assert before.status == 200 and first.count()["requests"] == 1

        config["backends"][0]["address"] = second.address
        config["headers"] = {"via": False}
        reload(proxy, config)

        after = curl(proxy.url("/echo"), mode="h2c", tmpdir=tmp_path / "b")
        assert after.status == 200
        assert second.count()["requests"] == 1
        names = [name.lower() for name, _ in after.json()["headers"]]
        assert "via" not in names
        assert first.count()["requests"] == 1
    finally:
        first.stop()
        second.stop()


def test_new_streams_of_an_open_connection_use_the_new_backend(start_proxyd, make_config):
    """An h2 connection opened before the reload is not closed (no GOAWAY): its next request
    goes to the new backend."""
    first, second = Backend(), Backend()
    try:
        config = make_config(first)
        proxy = start_proxyd(config)
        client = H2Client(proxy.port())
        try:
            assert client.get("/echo")["ended"] and first.count()["requests"] == 1
            config["backends"][0]["address"] = second.address
            reload(proxy, config)
            stream = client.get("/echo")
            assert stream["ended"] and stream["reset"] is None and client.goaway is None
            assert second.count()["requests"] == 1 and first.count()["requests"] == 1
        finally:
            client.close()
    finally:
        first.stop()
        second.stop()


def test_broken_file_is_refused_and_the_old_configuration_serves(
        start_proxyd, make_config, backend, tmp_path):
    """An invalid file on SIGHUP is logged with every key path; the running configuration
    (listeners, backend) serves on, and a later good file still applies."""
    config = make_config(backend)
    proxy = start_proxyd(config)
    broken = dict(config, mode="sideways", timeouts={"backend_read": "soon"})
    reload(proxy, broken, expect="reload failed")
    log = proxy.log_text()
    assert "mode: must be one of default, client, bridge" in log
    assert "timeouts.backend_read: must be a duration" in log
    assert proxy.alive()
    assert curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path / "c").status == 200
    assert curl(proxy.url("/", tls=True), mode="h2", tmpdir=tmp_path / "d").status == 200
    reload(proxy, config)
    assert curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path / "e").status == 200


def test_reload_that_cannot_bind_a_new_port_changes_nothing(
        start_proxyd, make_config, backend, tmp_path):
    """A new listener whose port is taken fails the reload with the key path and the OS reason;
    the other changes of the same file (here a new backend) are not applied either."""
    other = Backend()
    blocker = socket.socket()
    try:
        blocker.bind((HOST, 0))
        blocker.listen()
        config = make_config(backend)
        proxy = start_proxyd(config)
        changed = dict(config, backends=[dict(config["backends"][0], address=other.address)],
                       listen=[*config["listen"], {"endpoint": f"tcp:{blocker.getsockname()[1]}"
                                                               f":interface={HOST}"}])
        reload(proxy, changed, expect="reload failed")
        assert "listen[2].endpoint: cannot listen on" in proxy.log_text()
        assert "Address already in use" in proxy.log_text()
        assert curl(proxy.url("/"), mode="h2c", tmpdir=tmp_path).status == 200
        assert backend.count()["requests"] == 1 and other.count()["requests"] == 0
    finally:
        blocker.close()
        other.stop()


def test_sighup_adds_a_listener_and_swaps_the_certificate_during_a_download(
        start_proxyd, make_config, backend, tmp_path):
    """While a 20 MB download (read at 5 MB/s) runs on the TLS listener, SIGHUP adds a second
    TLS listener, removes the cleartext one and swaps the certificate: new handshakes on both
    TLS ports present the new certificate, the new port serves h2, the removed port refuses,
    and the download completes intact on the old connection."""
    (tmp_path / "new").mkdir()
    new_cert, new_key = make_cert(tmp_path / "new")
    config = make_config(backend)
    proxy = start_proxyd(config)
    tls_port, clear_port = proxy.port(tls=True), proxy.port()
    first_cert = presented_certificate(tls_port)
    size = 20_000_000
    out = tmp_path / "big.bin"
    with curl_in_background(proxy.url(f"/bytes/{size}", tls=True), out, "--http2",
                            "--limit-rate", "5M") as download:
        wait_until(lambda: out.exists() and out.stat().st_size > 1_000_000, 15,
                   what="the download to be under way")
        added = free_port()
        changed = dict(config)
        tls = {"cert": str(new_cert), "key": str(new_key)}
        changed["listen"] = [dict(config["listen"][0], tls=tls),
                             {"endpoint": f"tcp:{added}:interface={HOST}", "tls": tls,
                              "protocols": ["h2", "http/1.1"]}]
        reload(proxy, changed)
        assert download.poll() is None, "the download ended before the reload was done"
        assert presented_certificate(tls_port) == der(new_cert) != first_cert
        assert presented_certificate(added) == der(new_cert)
        result = curl(f"https://{HOST}:{added}/bytes/1000", mode="h2", tmpdir=tmp_path / "n")
        assert (result.status, result.version) == (200, "2")
        wait_until(lambda: not port_accepts(clear_port), 5, what="the removed port to close")
        rc = download.wait(timeout=60)
        assert rc == 0, download.stderr.read()
    assert sha256_file(out) == demo.body_sha256(size)


def test_a_socket_activated_daemon_applies_a_reload(start_proxyd, make_config, backend,
                                                    tmp_path):
    """systemd-socket-activate passes a TLS and a cleartext socket to one process
    (``workers: 1``): SIGHUP with a new certificate is applied ("proxyd reloaded", new
    handshakes present it) and both passed sockets serve on. Every such reload failed
    ("descriptor 4 passed by systemd is not an open socket": the daemon had closed the
    descriptors it adopted at start), so the running configuration could never change."""
    (tmp_path / "new").mkdir()
    new_cert, new_key = make_cert(tmp_path / "new")
    tls_port, clear_port = free_port(), free_port()
    config = make_config(backend, workers=1)
    proxy = start_socket_activated(start_proxyd, config, [tls_port, clear_port])
    wait_until(lambda: "proxyd listening on systemd:domain=INET:index=1" in proxy.log_text(),
               30, what="the daemon to adopt the passed sockets")
    first = presented_certificate(tls_port)
    changed = dict(config, listen=[dict(config["listen"][0],
                                        tls={"cert": str(new_cert), "key": str(new_key)}),
                                   config["listen"][1]])
    rewrite_config(proxy, changed)
    os.kill(proxy.pid, signal.SIGHUP)
    wait_until(lambda: "reload failed" in proxy.log_text() or "proxyd reloaded" in
               proxy.log_text(), 30, what="the reload's outcome")
    assert "reload failed" not in proxy.log_text(), proxy.output()
    assert presented_certificate(tls_port) == der(new_cert) != first
    result = curl(f"http://{HOST}:{clear_port}/bytes/10", mode="h2c", tmpdir=tmp_path / "a")
    assert (result.status, result.version) == (200, "2")
    assert proxy.stop() == 0


def test_reload_applies_max_connections(start_proxyd, make_config, backend):
    """limits.max_connections set by a reload applies at once (issue 9, item 11: it used to be
    ignored until a restart): with 2 allowed and 2 open, a third connection is closed at
    accept; raising the limit again lets it in."""
    config = make_config(backend, tls=False)
    proxy = start_proxyd(config)
    wait_until(lambda: "proxyd listening" in proxy.log_text(), 10, what="startup")
    reload(proxy, dict(config, limits={"max_connections": 2}))
    held = [socket.create_connection((HOST, proxy.port()), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        rc, out, err = run([require_tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "10", proxy.url("/")], timeout=20)
        assert out != "200", (rc, out, err)
        assert "refusing connections over limits.max_connections" in proxy.log_text()
        reload(proxy, dict(config, limits={"max_connections": 3}))
        rc, out, err = run([require_tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "10", proxy.url("/")], timeout=20)
        assert out == "200", (rc, out, err)
    finally:
        for sock in held:
            sock.close()


class H2loadRounds:
    """h2load rounds of ``seconds`` each, one after another, until :meth:`finish` is called.

    A reload may take longer on a loaded machine than any fixed h2load duration would allow;
    rounds keep the load on for as long as the reloads take (each round's connections live
    across the reloads that happen meanwhile), and every round's numbers are checked.
    """

    def __init__(self, url, out_dir, seconds):
        self.url, self.out_dir, self.seconds = url, out_dir, seconds
        self.results = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for n in range(1000):
            out_path = self.out_dir / f"h2load-{n}.txt"
            with open(out_path, "wb") as out:
                subprocess.run([require_tool("h2load"), "-c", "4", "-m", "10", "-D",
                                str(self.seconds), self.url], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=self.seconds + 60)
            self.results.append(parse_h2load(out_path.read_text()))
            if self._done.is_set():
                return

    def finish(self):
        """Let the running round end, start no other; the rounds' results."""
        self._done.set()
        self._thread.join(timeout=self.seconds + 90)
        assert not self._thread.is_alive(), "an h2load round did not end"
        return self.results


@pytest.mark.parametrize("workers", [1, 2])
def test_h2load_across_five_reloads_has_no_failed_request(start_proxyd, make_config, tmp_path,
                                                          workers):
    """h2load (4 connections x 10 streams, rounds of 3 s until the reloads are over) runs while
    proxyd is reloaded 5 times, each reload changing something (the backend set and the Via
    rule): every request of every round succeeds. With two workers each reload starts two new
    workers; the old ones keep h2load's connections (no GOAWAY), apply the new configuration
    to them (so the second backend gets requests) and finish when h2load closes them."""
    first, second = Backend(), Backend()
    try:
        config = make_config(first, tls=False, workers=workers,
                             timeouts={"graceful_shutdown": "30s"})
        proxy = start_proxyd(config)
        if workers > 1:
            wait_until(lambda: "proxyd workers ready" in proxy.log_text(), 30,
                       what="the workers")
        rounds = H2loadRounds(proxy.url("/bytes/1000"), tmp_path, seconds=3)
        try:
            wait_until(lambda: first.count()["requests"] > 500, 15, what="load to build up")
            for i in range(5):
                backends = [first, second] if i % 2 == 0 else [second]
                changed = dict(config, headers={"via": i % 2 == 1},
                               backends=[dict(config["backends"][0], address=b.address)
                                         for b in backends])
                reload(proxy, changed)
        finally:
            results = rounds.finish()
        assert proxy.log_text().count("proxyd reloaded") == 5
        assert sum(r["succeeded"] for r in results) > 1000, results
        for result in results:
            # A round's end may cut responses in flight: h2load counts their status but not
            # them as done; what matters is that nothing failed and every status was 2xx.
            assert (result["failed"], result["errored"], result["timeout"]) == (0, 0, 0), result
            assert (result.get("3xx"), result.get("4xx"), result.get("5xx")) == (0, 0, 0), result
            assert result["succeeded"] == result["done"] > 0, result
        assert second.count()["requests"] > 0
    finally:
        first.stop()
        second.stop()


def test_sighup_with_stdout_access_log_keeps_logging(start_proxyd, make_config, backend,
                                                     tmp_path):
    """With access_log "-" and twistd logging to stdout (as under systemd), a SIGHUP does not
    silence the daemon: access lines and proxyd's own lines (reloaded, shutdown) still appear
    on stdout afterwards."""
    proxy = start_proxyd(make_config(backend, access_log="-"), log="-")
    assert curl(proxy.url("/before"), mode="h2c", tmpdir=tmp_path / "a").status == 404
    wait_until(lambda: '"GET ' in proxy.log_text() and "/before" in proxy.log_text(), 10,
               what="the first access line")
    signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded")
    assert curl(proxy.url("/after"), mode="h2c", tmpdir=tmp_path / "b").status == 404
    wait_until(lambda: "/after" in proxy.log_text(), 10, what="an access line after SIGHUP")
    assert proxy.stop() == 0
    assert "proxyd stopped" in proxy.log_text()


def _fd_paths(pid):
    """The /proc paths of the process's open descriptors."""
    return [f"/proc/{pid}/fd/{n}" for n in os.listdir(f"/proc/{pid}/fd")]


def _link(path):
    """What a /proc descriptor link points at ("" if it closed since it was listed)."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return ""


def test_sigusr1_without_the_log_directory_keeps_the_old_file(start_proxyd, make_config,
                                                               backend, tmp_path):
    """SIGUSR1 after the access log's directory was removed: the reopen fails, the daemon says
    so and goes on writing into the file it had open (deleted, but still its own). A client
    that connects next never gets access lines: before the fix, the closed descriptor's number
    went to that client's socket and the once-a-second flush wrote other clients' lines to it."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    proxy = start_proxyd(make_config(backend, access_log=str(logdir / "access.log")))
    shutil.rmtree(logdir)
    signal_and_wait(proxy, signal.SIGUSR1, "could not reopen the access log")
    old = [path for path in _fd_paths(proxy.pid)
           if _link(path).endswith("access.log (deleted)")]
    assert len(old) == 1
    size = os.stat(old[0]).st_size
    idle = socket.create_connection((HOST, proxy.port()), timeout=10)
    try:
        assert curl(proxy.url("/secret?token=s3cr3t"), mode="h2c",
                    tmpdir=tmp_path / "a").status == 404
        wait_until(lambda: os.stat(old[0]).st_size > size, 10, what="the line in the old file")
        idle.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing was written to the idle client
            idle.recv(65536)
    finally:
        idle.close()
    assert proxy.alive()


def test_sigusr1_reopens_the_access_log(start_proxyd, make_config, backend, tmp_path):
    """logrotate's convention: after ``mv access.log access.log.1`` and SIGUSR1, new lines go
    to a new access.log; the lines from before stay in access.log.1."""
    log = tmp_path / "access.log"
    proxy = start_proxyd(make_config(backend, access_log=str(log)))
    assert curl(proxy.url("/one"), mode="h2c", tmpdir=tmp_path / "a").status == 404
    wait_until(lambda: log.exists() and "/one" in log.read_text(), 10, what="the first line")
    os.rename(log, tmp_path / "access.log.1")
    signal_and_wait(proxy, signal.SIGUSR1, "reopened the access log")
    assert curl(proxy.url("/two"), mode="h2c", tmpdir=tmp_path / "b").status == 404
    wait_until(lambda: log.exists() and "/two" in log.read_text(), 10,
               what="a line in the new access.log")
    assert "/one" not in log.read_text()
    assert "/two" not in (tmp_path / "access.log.1").read_text()
    assert proxy.alive()
