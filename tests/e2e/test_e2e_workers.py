"""Worker processes (``workers: 2``) of the real daemon: they share the load, a killed one is
replaced, SIGTERM stops them all gracefully, per-IP limits hold for the daemon, one access log
and one metrics endpoint, readiness, a reload that runs upgraded code, socket activation.

Strategy: which worker holds which client connection is read from /proc (the established
sockets on the proxy's port in each worker's descriptors), so "both serve" is observed from
outside, not reported by proxyd. Every wait is on a log line, a port or /proc, with a deadline.
Connections through a shared listening socket land on whichever worker accepts them; the
workers balance their accepts (least connections) once each knows its peer, so tests that need
connections on both workers open a batch and check /proc (a batch landing on one worker only,
before the workers know each other, is tried again, a few times at most).
"""

import os
import re
import shutil
import signal
import socket
import time

from .harness import (HOST, REPO, H2Client, NotifySocket, child_pids, connection_owners, curl,
                      demo, free_port, http1_again, http1_keepalive,
                      http_get, parse_h2load, port_accepts, require_tool, run, sample_sum,
                      scrape, sha256_file, signal_and_wait, slow_download,
                      start_socket_activated, wait_until)

READY = "proxyd workers ready"
BALANCED = "accepts balanced with 1 other worker"


def workers_config(make_config, backend, **sections):
    """A cleartext config with two workers and a metrics listener."""
    sections.setdefault("metrics", f"tcp:{free_port()}:interface={HOST}")
    return make_config(backend, tls=False, workers=2, **sections)


def metrics_port(config):
    """The metrics port of a config made by workers_config."""
    return int(re.match(r"tcp:(\d+)", config["metrics"]).group(1))


def ready_workers(proxy, count=2, timeout=30):
    """Wait for the supervisor's "workers ready" line; the workers' pids."""
    wait_until(lambda: READY in proxy.log_text(), timeout, what="the workers to be ready")
    return wait_until(lambda: (pids := child_pids(proxy.pid)) and len(pids) == count and pids,
                      timeout, what=f"{count} worker processes")


def spread_connections(proxy, workers, count, path="/bytes/10", attempts=20):
    """Open ``count`` keep-alive connections (with one request each, unless ``path`` is None)
    until they are held by every worker; (sockets, statuses, owners). The caller closes the
    sockets. The kernel wakes the workers that wait on the shared socket and the first to run
    accepts: the batch's connections are opened at once, then used, but on a machine busy with
    other work one worker may still take a whole batch, so batches are tried again (a bound,
    not a timing)."""
    for _ in range(attempts):
        if path is None:
            socks = [socket.create_connection((HOST, proxy.port()), timeout=10)
                     for _ in range(count)]
            statuses = []
            wait_until(lambda: sum(connection_owners(workers, proxy.port()).values()) == count,
                       10, what=f"{count} connections accepted")
        else:
            # All connections first (a burst wakes both workers), then one request on each.
            socks = [socket.create_connection((HOST, proxy.port()), timeout=10)
                     for _ in range(count)]
            statuses = [http1_again(sock, path) for sock in socks]
        owners = connection_owners(workers, proxy.port())
        if set(owners) == set(workers):
            return socks, statuses, owners
        close_all(socks)
        wait_until(lambda: not connection_owners(workers, proxy.port(), established=False), 10,
                   what="the workers to close the connections of the batch")
    raise AssertionError(f"{attempts} batches of {count} connections all landed on one worker")


def test_a_burst_of_connections_is_shared_between_the_workers(start_proxyd, make_config,
                                                              backend):
    """20 connections opened at once (the kernel queues them all before a worker wakes) are
    held 10/10, 9/11 or 8/12 by the two workers (seen in /proc): a worker ahead of its peer by
    two stops accepting until the peer caught up. Before the balance, whichever worker woke first
    took most of a burst (9/1 and 10/0 for h2load's 10 connections), then served them on one
    core. Every connection is then served."""
    config = workers_config(make_config, backend)
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    wait_until(lambda: proxy.log_text().count(BALANCED) >= 2, 30,
               what="both workers to know their peer")
    socks = [socket.create_connection((HOST, proxy.port()), timeout=10) for _ in range(20)]
    try:
        wait_until(lambda: sum(connection_owners(workers, proxy.port()).values()) == 20, 30,
                   what="20 connections accepted")
        owners = connection_owners(workers, proxy.port())
        assert sorted(owners) == sorted(workers), owners
        assert all(8 <= n <= 12 for n in owners.values()), owners
        assert [http1_again(sock, "/bytes/10") for sock in socks] == [200] * 20
    finally:
        close_all(socks)


def close_all(socks):
    """Close test sockets."""
    for sock in socks:
        sock.close()


def test_workers_share_the_load(start_proxyd, make_config, backend):
    """Two workers accept on the same socket: client connections are held by both (seen in
    /proc), every request is answered, and the one metrics endpoint adds both workers up."""
    config = workers_config(make_config, backend)
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    socks, statuses, owners = spread_connections(proxy, workers, 16)
    try:
        assert statuses == [200] * 16
        assert sum(owners.values()) == 16 and all(n > 0 for n in owners.values()), owners
        samples = scrape(metrics_port(config))
        assert sample_sum(samples, "proxyd_requests_total", code="2xx") >= 16
        assert sample_sum(samples, "proxyd_client_connections") >= 16
        assert sample_sum(samples, "proxyd_workers", state="serving") == 2
        assert sample_sum(samples, "proxyd_build_info") == 2
    finally:
        close_all(socks)


def test_a_killed_worker_is_replaced_while_the_other_serves(start_proxyd, make_config, backend,
                                                            tmp_path):
    """SIGKILL of one worker: the other answers every request meanwhile, a new worker takes
    the dead one's place (after the restart delay), and the restart is counted."""
    config = workers_config(make_config, backend)
    proxy = start_proxyd(config)
    victim, survivor = ready_workers(proxy)
    os.kill(victim, signal.SIGKILL)
    for i in range(8):
        result = curl(proxy.url("/bytes/100"), mode="h1", tmpdir=tmp_path / f"r{i}")
        assert result.status == 200
    wait_until(lambda: "replaces the one that ended" in proxy.log_text(), 20,
               what="a new worker")
    now = child_pids(proxy.pid)
    assert survivor in now and victim not in now and len(now) == 2
    assert "ended (signal 9)" in proxy.log_text()
    samples = scrape(metrics_port(config))
    assert sample_sum(samples, "proxyd_worker_restarts_total") == 1
    assert sample_sum(samples, "proxyd_workers", state="serving") == 2
    socks, statuses, owners = spread_connections(proxy, now, 8)
    close_all(socks)
    assert statuses == [200] * 8


def test_a_worker_stopped_alone_is_no_peer_while_it_drains(start_proxyd, make_config, backend,
                                                          tmp_path):
    """SIGTERM to one worker with a download in flight: it stops accepting and drains, and the
    other worker balances with nobody at once (not only when the draining one has ended), so
    it never waits on a peer that no longer accepts."""
    config = workers_config(make_config, backend, timeouts={"graceful_shutdown": "60s"})
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    wait_until(lambda: proxy.log_text().count(BALANCED) >= 2, 30,
               what="both workers to know their peer")
    out = tmp_path / "slow.bin"
    with slow_download(proxy, out, chunks=150, timeout=60) as download:
        (victim,) = connection_owners(workers, proxy.port())
        os.kill(victim, signal.SIGTERM)
        wait_until(lambda: "accepts balanced with 0 other worker" in proxy.log_text(), 10,
                   what="the other worker to balance with nobody")
        assert download.poll() is None and os.path.exists(f"/proc/{victim}"), \
            "the stopped worker ended before it could be observed draining"
        download.kill()


def test_sigterm_stops_every_worker_gracefully(start_proxyd, make_config, backend, tmp_path):
    """SIGTERM to the supervisor during a slow download: the port stops accepting, the
    download completes intact (its worker drains), every worker ends and the daemon exits 0."""
    config = workers_config(make_config, backend, timeouts={"graceful_shutdown": "15s"})
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    chunks, size = 20, 4096
    out = tmp_path / "slow.bin"
    with slow_download(proxy, out, chunks=chunks, size=size, timeout=60) as download:
        proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_accepts(proxy.port(), timeout=0.2), 5,
                   what="the port to close")
        assert download.poll() is None, "the download ended before it could be observed"
        assert download.wait(timeout=30) == 0, download.stderr.read()
    assert sha256_file(out) == demo.body_sha256(chunks * size)
    assert proxy.wait_exit(30) == 0, proxy.output()
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    log = proxy.log_text()
    assert "proxyd shutting down 2 workers" in log
    assert log.count("proxyd stopped") == 3 and "[proxyd#info] proxyd stopped" in log


def test_connection_limits_hold_across_workers(start_proxyd, make_config, backend):
    """limits.max_connections_per_ip 6 with connections held by both workers: the seventh and
    later connections of the client are refused, whichever worker accepts them; closing one
    lets exactly one more in. max_connections (the total) holds the same way."""
    config = workers_config(make_config, backend, limits={"max_connections_per_ip": 6})
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    socks, statuses, owners = spread_connections(proxy, workers, 6)
    extra = []
    try:
        assert statuses == [200] * 6 and len(owners) == 2
        extra = [http1_keepalive(proxy.port(), "/bytes/10") for _ in range(6)]
        assert [status for _, status in extra] == [0] * 6
        socks.pop().close()
        wait_until(lambda: sum(connection_owners(workers, proxy.port(),
                                                 established=False).values()) == 5, 5,
                   what="the worker to close the connection (and count it closed)")
        again = [http1_keepalive(proxy.port(), "/bytes/10") for _ in range(3)]
        extra += again
        assert sorted(status for _, status in again) == [0, 0, 200]
        samples = scrape(metrics_port(config))
        assert sample_sum(samples, "proxyd_refusals_total", reason="max_connections") == 8
    finally:
        close_all(socks + [sock for sock, _ in extra])


def test_total_connection_limit_holds_across_workers(start_proxyd, make_config, backend):
    """limits.max_connections 4: with connections on both workers, the daemon holds 4."""
    config = workers_config(make_config, backend, limits={"max_connections": 4})
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    socks, statuses, owners = spread_connections(proxy, workers, 4)
    extra = []
    try:
        assert statuses == [200] * 4
        extra = [http1_keepalive(proxy.port(), "/bytes/10") for _ in range(4)]
        assert [status for _, status in extra] == [0] * 4
    finally:
        close_all(socks + [sock for sock, _ in extra])


def test_request_rate_per_ip_holds_across_workers(start_proxyd, make_config, backend):
    """rate_limits.requests_per_ip {rate: 1, burst: 10}: 20 requests within a few seconds on 4
    connections held by both workers: the 10 tokens of the burst plus the refill are answered,
    the rest get 429. A bucket per worker would have answered all 20."""
    config = workers_config(make_config, backend,
                            rate_limits={"requests_per_ip": {"rate": 1, "burst": 10}})
    proxy = start_proxyd(config)
    workers = ready_workers(proxy, 2)
    socks, _, owners = spread_connections(proxy, workers, 4, path=None)
    try:
        started = time.monotonic()
        statuses = [http1_again(sock, "/bytes/10") for _ in range(5) for sock in socks]
        took = time.monotonic() - started
        ok, refused = statuses.count(200), statuses.count(429)
        assert ok + refused == 20, statuses
        assert 10 <= ok <= 10 + int(took) + 1, (statuses, took, owners)
        samples = scrape(metrics_port(config))
        assert sample_sum(samples, "proxyd_rate_limited_total") == refused
    finally:
        close_all(socks)


ACCESS_LINE = re.compile(r'^127\.0\.0\.1 (h2|http/1\.1) "GET 127\.0\.0\.1(?::\d+)? '
                         r'/bytes/(\d+)" 200 (\d+) \d+\.\d{3} 127\.0\.0\.1:\d+ \d+\.\d{3}$')


def h2load(proxy, *args, path="/bytes/100", timeout=120):
    """Run h2load against the cleartext listener; its parsed summary."""
    rc, out, err = run([require_tool("h2load"), *args, proxy.url(path)], timeout=timeout)
    assert rc == 0, err
    return parse_h2load(out)


def test_one_access_log_file_for_every_worker(start_proxyd, make_config, backend, tmp_path):
    """2000 requests from 8 connections, served by both workers, give exactly 2000 whole,
    well-formed lines in one access log (each worker appends whole batches)."""
    log = tmp_path / "access.log"
    config = workers_config(make_config, backend, access_log=str(log))
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    result = h2load(proxy, "-n", "2000", "-c", "8", "-m", "4", path="/bytes/37")
    assert result["succeeded"] == 2000, result
    samples = scrape(metrics_port(config))
    assert sample_sum(samples, "proxyd_client_connections_accepted_total") >= 8
    lines = wait_until(lambda: log.exists() and len(lines := log.read_text().splitlines())
                       >= 2000 and lines, 10, what="2000 access lines")
    assert len(lines) == 2000
    assert all(ACCESS_LINE.match(line) for line in lines), [
        line for line in lines if not ACCESS_LINE.match(line)][:3]
    assert connection_owners(workers, proxy.port()) == {}  # h2load closed its connections


def test_stdout_access_log_goes_through_the_supervisor(start_proxyd, make_config, backend,
                                                       tmp_path):
    """access_log "-" with workers: the workers' lines reach the daemon's standard output
    whole (the supervisor copies them line by line), next to its own log lines."""
    config = workers_config(make_config, backend, access_log="-")
    proxy = start_proxyd(config, log="-")
    workers = ready_workers(proxy)
    socks, statuses, _ = spread_connections(proxy, workers, 8, path="/bytes/21")
    close_all(socks)
    assert statuses == [200] * 8
    wait_until(lambda: proxy.log_text().count(" /bytes/21\" 200 21 ") >= 8, 10,
               what="8 access lines on stdout")
    lines = [line for line in proxy.log_text().splitlines() if "/bytes/21" in line]
    assert all(ACCESS_LINE.match(line) for line in lines), lines
    assert proxy.stop() == 0


def test_sigusr1_makes_every_worker_reopen_the_access_log(start_proxyd, make_config, backend,
                                                         tmp_path):
    """logrotate's convention with workers: after ``mv access.log access.log.1`` and SIGUSR1
    to the supervisor, both workers reopen the file, and requests served by either of them
    are logged in the new access.log only."""
    log = tmp_path / "access.log"
    config = workers_config(make_config, backend, access_log=str(log))
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    socks, statuses, _ = spread_connections(proxy, workers, 6, path="/bytes/11")
    close_all(socks)
    wait_until(lambda: log.exists() and log.read_text().count("/bytes/11") >= 6, 10,
               what="the first lines")
    os.rename(log, tmp_path / "access.log.1")
    before = proxy.log_text().count("reopened the access log")
    os.kill(proxy.pid, signal.SIGUSR1)
    wait_until(lambda: proxy.log_text().count("reopened the access log") == before + 2, 10,
               what="both workers to reopen the access log")
    socks, statuses, owners = spread_connections(proxy, workers, 6, path="/bytes/12")
    close_all(socks)
    wait_until(lambda: log.exists() and log.read_text().count("/bytes/12") >= 6, 10,
               what="lines of both workers in the new file")
    assert "/bytes/11" not in log.read_text()
    assert "/bytes/12" not in (tmp_path / "access.log.1").read_text()


def test_readiness_health_and_stop_with_workers(start_proxyd, make_config, backend, tmp_path):
    """Under a fake NOTIFY_SOCKET: READY=1 comes once both workers accept (both have logged
    that they serve), RELOADING=1 and READY=1 frame a reload, the health path answers 200,
    then 503 from SIGTERM on while a download drains; STOPPING=1; exit 0."""
    notify = NotifySocket(tmp_path)
    try:
        config = workers_config(make_config, backend, timeouts={"graceful_shutdown": "15s"})
        proxy = start_proxyd(config, wait=False, env={"NOTIFY_SOCKET": notify.path})
        ready = notify.wait_for("READY", 30)
        assert proxy.log_text().count(") serving") == 2, proxy.output()
        assert ready["STATUS"].startswith("serving: 2 workers")
        count = len(notify.messages)
        signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded", timeout=60)
        notify.wait(lambda ms: [k for m in ms[count:] for k in ("RELOADING", "READY")
                                if m.get(k) == "1"][:2] == ["RELOADING", "READY"], 10,
                    "RELOADING=1 then READY=1")
        mport = metrics_port(config)
        assert http_get(mport, "/healthz") == (200, b"ok\n")
        out = tmp_path / "slow.bin"
        with slow_download(proxy, out) as download:
            proxy.proc.send_signal(signal.SIGTERM)
            assert notify.wait_for("STOPPING", 10)["STATUS"].startswith("draining")
            assert http_get(mport, "/healthz") == (503, b"draining\n")
            assert download.wait(timeout=30) == 0
        assert out.stat().st_size == 20000
        assert proxy.wait_exit(30) == 0
    finally:
        notify.close()


def test_sighup_while_the_first_workers_start_waits_for_them(start_proxyd, make_config,
                                                            backend, tmp_path):
    """SIGHUP once the supervisor holds its sockets but before its first workers accept: the
    reload waits for them, so systemd hears READY=1, then RELOADING=1 and READY=1, and the
    new workers replace ones that serve. Before, the reload ran beside the first launch:
    RELOADING=1 came first (systemd ignores it while a unit starts), a reload that failed sent
    READY=1 before any worker accepted, and one that committed first told the starting
    workers to retire, which the first launch took for workers that could not start."""
    notify = NotifySocket(tmp_path)
    try:
        config = workers_config(make_config, backend)
        proxy = start_proxyd(config, wait=False, env={"NOTIFY_SOCKET": notify.path})
        wait_until(lambda: " workers)" in proxy.log_text(), 60,
                   what="the supervisor to hold its sockets")
        os.kill(proxy.pid, signal.SIGHUP)

        def order(messages):
            keys = [k for m in messages for k in ("READY", "RELOADING") if m.get(k) == "1"]
            return keys if len(keys) >= 3 else None

        assert notify.wait(order, 60, "three notifications")[:3] == [
            "READY", "RELOADING", "READY"], proxy.output()
        wait_until(lambda: "proxyd reloaded" in proxy.log_text(), 30, what="the reload")
        assert "cannot start" not in proxy.log_text()
        assert proxy.stop() == 0
    finally:
        notify.close()


def test_replaced_workers_let_busy_connections_finish_and_goaway_idle_ones(
        start_proxyd, make_config, backend, tmp_path):
    """After a reload, an old worker keeps a connection with a download in flight (no GOAWAY;
    the download completes), sends GOAWAY to an idle h2 connection after a moment (the client
    would connect again, to a new worker), and ends long before graceful_shutdown."""
    config = workers_config(make_config, backend, timeouts={"graceful_shutdown": "60s"})
    proxy = start_proxyd(config)
    ready_workers(proxy)
    idle = H2Client(proxy.port())
    out = tmp_path / "slow.bin"
    try:
        assert idle.get("/bytes/10")["ended"]
        with slow_download(proxy, out, chunks=100, timeout=40) as download:
            signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded", timeout=60)
            idle.pump(lambda: idle.goaway is not None, timeout=10)
            assert idle.goaway == 0, "no GOAWAY (NO_ERROR) on the idle connection"
            assert download.poll() is None, "the download ended before the GOAWAY"
            assert download.wait(timeout=40) == 0
        assert out.stat().st_size == 100000
        wait_until(lambda: proxy.log_text().count("finished draining") == 2, 15,
                   what="both old workers to end")
    finally:
        idle.close()


def test_a_bad_file_on_reload_keeps_the_workers(start_proxyd, make_config, backend, tmp_path):
    """A broken file on SIGHUP: "reload failed" with the key path (checked by the installed
    package in a child process), the same worker processes serve on."""
    config = workers_config(make_config, backend)
    proxy = start_proxyd(config)
    workers = ready_workers(proxy)
    proxy.config_path.write_text(proxy.config_path.read_text() + "limits: {max_conections: 1}\n")
    signal_and_wait(proxy, signal.SIGHUP, "reload failed", timeout=60)
    assert "limits.max_conections: unknown key (did you mean 'max_connections'?)" in \
        proxy.log_text()
    assert child_pids(proxy.pid) == workers
    assert curl(proxy.url("/bytes/5"), mode="h2c", tmpdir=tmp_path).status == 200
    assert sample_sum(scrape(metrics_port(config)), "proxyd_reloads_total", result="failed") == 1


def test_reload_after_an_upgrade_runs_the_new_code(start_proxyd, make_config, backend, tmp_path):
    """proxyd runs from a copy of the package. A broken upgrade of the copy fails the reload
    (the new package is checked in a child process first) and the old workers serve on; a good
    one (its version changed) makes SIGHUP start new workers that run it, while the supervisor
    stays: the new workers log the new version, the old ones finish draining, and build_info
    counts two workers of the new version."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "proxyd", site / "proxyd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "twisted" / "plugins", site / "twisted" / "plugins",
                    ignore=shutil.ignore_patterns("__pycache__", "dropin.cache"))
    config = workers_config(make_config, backend)
    proxy = start_proxyd(config, env={"PYTHONPATH": str(site)}, cwd=tmp_path)
    old = ready_workers(proxy)
    module = site / "proxyd" / "net" / "worker.py"
    good = module.read_text()
    module.write_text('raise ImportError("a broken release")\n' + good)
    signal_and_wait(proxy, signal.SIGHUP, "reload failed", timeout=60)
    assert "ImportError: a broken release" in proxy.log_text()
    assert child_pids(proxy.pid) == old
    module.write_text(good)
    init = site / "proxyd" / "__init__.py"
    version = re.search(r'__version__ = "([^"]+)"', init.read_text()).group(1)
    init.write_text(init.read_text().replace(f'"{version}"', f'"{version}+upgraded"'))
    signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded", timeout=60)
    assert proxy.log_text().count(f"proxyd {version}+upgraded) serving") == 2
    wait_until(lambda: proxy.log_text().count("finished draining") == 2, 20,
               what="the old workers to finish")
    new = child_pids(proxy.pid)
    assert len(new) == 2 and not set(new) & set(old)
    samples = scrape(metrics_port(config))
    assert sample_sum(samples, "proxyd_build_info", version=f"{version}+upgraded") == 2
    assert sample_sum(samples, "proxyd_build_info", version=version) == 0
    socks, statuses, owners = spread_connections(proxy, new, 6)
    close_all(socks)
    assert statuses == [200] * 6 and set(owners) == set(new)


def test_socket_activation_with_workers(start_proxyd, make_config, backend, tmp_path):
    """systemd-socket-activate passes a TLS and a cleartext socket: the supervisor hands them
    to two workers, which both serve (h2 over TLS by ALPN, h2c), also after a reload."""
    tls_port, clear_port = free_port(), free_port()
    config = make_config(backend, workers=2)
    proxy = start_socket_activated(start_proxyd, config, [tls_port, clear_port])
    workers = ready_workers(proxy)
    result = curl(f"https://{HOST}:{tls_port}/bytes/1000", mode="h2", tmpdir=tmp_path / "a")
    assert (result.status, result.version) == (200, "2"), proxy.output()
    proxy.ports, proxy.listeners = [clear_port], [(clear_port, False)]
    socks, statuses, owners = spread_connections(proxy, workers, 8)
    close_all(socks)
    assert statuses == [200] * 8 and set(owners) == set(workers)
    signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded", timeout=60)
    result = curl(f"https://{HOST}:{tls_port}/bytes/10", mode="h2", tmpdir=tmp_path / "b")
    assert (result.status, result.version) == (200, "2")
    result = curl(f"http://{HOST}:{clear_port}/bytes/10", mode="h2c", tmpdir=tmp_path / "c")
    assert (result.status, result.version) == (200, "2")
    assert proxy.stop() == 0
