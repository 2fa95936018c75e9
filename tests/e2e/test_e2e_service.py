"""Running proxyd as a service: systemd readiness and socket activation, first errors, version.

Strategy: what systemd would see is observed without systemd. A fake ``NOTIFY_SOCKET`` (a unix
datagram socket of the test) receives the sd_notify messages, and the test checks their order
against the ports (READY=1 arrives only when every port accepts). ``systemd-socket-activate``
binds the ports and starts the real daemon with ``LISTEN_FDS`` on the first connection, as a
socket unit would. Startup errors are checked on what an operator sees: one line per problem on
standard error, exit status 1, no traceback and no usage text.
"""

import signal
import socket
import time

import yaml

from .harness import (HOST, REPO, TWISTD, NotifySocket, curl, free_port, port_accepts,
                      proxyd_env, run, signal_and_wait, start_socket_activated,
                      wait_until)


def _check(config, tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return run([*TWISTD, "--nodaemon", "--pidfile=", f"--logfile={tmp_path / 'check.log'}",
                "proxyd", "--check", "-c", str(path)], timeout=60, env=proxyd_env(),
               cwd=str(REPO))


def _exit(proxy, timeout=30):
    code = proxy.wait_exit(timeout)
    assert code is not None, f"the daemon did not exit\n{proxy.output()}"
    return code


def test_readiness_reload_and_stop_notifications(start_proxyd, make_config, backend, tmp_path):
    """Under a fake NOTIFY_SOCKET: READY=1 (with a STATUS line) arrives once every port
    accepts; a reload sends RELOADING=1 with MONOTONIC_USEC and then READY=1; WATCHDOG=1 pings
    follow WATCHDOG_USEC; SIGTERM sends STOPPING=1."""
    notify = NotifySocket(tmp_path)
    try:
        config = make_config(backend)
        env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
        proxy = start_proxyd(config, wait=False, env=env)
        ready = notify.wait_for("READY", 20)
        assert all(port_accepts(port) for port in proxy.ports), "READY=1 before the ports listen"
        assert ready["STATUS"].startswith("serving: ")
        notify.wait_for("WATCHDOG", 5)
        count = len(notify.messages)
        signal_and_wait(proxy, signal.SIGHUP, "proxyd reloaded")

        def reload_sequence(messages):
            kinds = [key for m in messages[count:] for key in ("RELOADING", "READY")
                     if m.get(key) == "1"]
            return kinds[:2] == ["RELOADING", "READY"]

        notify.wait(reload_sequence, 5, "RELOADING=1 then READY=1")
        reloading = next(m for m in notify.fields()[count:] if m.get("RELOADING") == "1")
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000
        proxy.proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", 10)
        assert stopping["STATUS"].startswith("draining")
        assert _exit(proxy) == 0
    finally:
        notify.close()


def test_socket_activated_start_serves_h2_over_tls(start_proxyd, make_config, backend,
                                                   tmp_path):
    """systemd-socket-activate binds a TLS and a cleartext port and starts proxyd on the first
    connection with ``systemd:domain=INET:index=N`` listeners: h2 over TLS (ALPN) and h2c are
    served, and the config's TLS and protocol settings apply to the inherited sockets."""
    tls_port, clear_port = free_port(), free_port()
    proxy = start_socket_activated(start_proxyd, make_config(backend), [tls_port, clear_port])
    result = curl(f"https://{HOST}:{tls_port}/bytes/1000", mode="h2", tmpdir=tmp_path / "a",
                  timeout=30)
    assert (result.status, result.version) == (200, "2"), (result, proxy.output())
    result = curl(f"http://{HOST}:{clear_port}/bytes/10", mode="h2c", tmpdir=tmp_path / "b")
    assert (result.status, result.version) == (200, "2")
    assert "proxyd listening on systemd:domain=INET:index=0" in proxy.log_text()
    assert proxy.stop() == 0


def test_missing_inherited_socket_is_one_line(start_proxyd, make_config, backend):
    """A systemd: listener without the socket (no socket activation) exits 1 with one line
    naming the key, instead of an IndexError traceback."""
    config = make_config(backend, tls=False)
    config["listen"][0]["endpoint"] = "systemd:domain=INET:index=0"
    proxy = start_proxyd(config, wait=False)
    assert _exit(proxy) == 1
    output = proxy.output()
    assert "proxyd: listen[0].endpoint: invalid endpoint 'systemd:domain=INET:index=0': " \
           "systemd passed no socket at index 0" in output
    assert "Traceback" not in output and "IndexError" not in output


def test_port_in_use_is_one_line_and_exit_1(start_proxyd, make_config, backend):
    """A port already taken: exit status 1, one line with the key path, the address and the
    OS reason on standard error, no traceback."""
    blocker = socket.socket()
    blocker.bind((HOST, 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        config = make_config(backend, tls=False)
        config["listen"][0]["endpoint"] = f"tcp:{port}:interface={HOST}"
        proxy = start_proxyd(config, wait=False)
        assert _exit(proxy) == 1
        output = proxy.output()
        line = (f"proxyd: listen[0].endpoint: cannot listen on {HOST}:{port}: "
                "Address already in use")
        assert line in output.splitlines(), output
        assert "Traceback" not in output
    finally:
        blocker.close()


def test_every_config_error_at_once_without_usage_text(start_proxyd, make_config, backend):
    """Three mistakes in three sections: all three are reported (one line each), and twistd's
    usage text is not printed."""
    config = make_config(backend)
    config["mode"] = "fast"
    config["timeouts"]["backend_read"] = "soon"
    config["listen"][1]["protocol"] = ["h2"]
    proxy = start_proxyd(config, wait=False)
    assert _exit(proxy) == 1
    output = proxy.output()
    for line in ("proxyd: mode: must be one of default, client, bridge",
                 "proxyd: listen[1].protocol: unknown key (did you mean 'protocols'?)",
                 "proxyd: timeouts.backend_read: must be a duration such as 500ms, 5s, 2m or 1h"):
        assert line in output.splitlines(), output
    assert "Usage:" not in output and "--help" not in output


def test_check_catches_metrics_on_a_listener_port(make_config, backend, tmp_path):
    """--check refuses a metrics endpoint on a listener's port (exit 1, both keys named)."""
    config = make_config(backend)
    config["metrics"] = config["listen"][1]["endpoint"]
    rc, out, err = _check(config, tmp_path)
    assert rc == 1, out + err
    port = config["listen"][1]["endpoint"].split(":")[1]
    assert f"proxyd: metrics: clashes with listen[1].endpoint (same port {port})" in err


def test_version_prints_proxyd_version():
    """``twistd proxyd --version`` prints proxyd's version (not only Twisted's)."""
    import proxyd
    rc, out, err = run([*TWISTD, "proxyd", "--version"], timeout=60, env=proxyd_env(),
                       cwd=str(REPO))
    assert rc == 0, err
    assert out.startswith(f"proxyd {proxyd.__version__} (Twisted ")


def test_journal_logger_prefixes_priorities(start_proxyd, make_config, backend):
    """With the unit's ``--logger=proxyd.net.journal.observer``, proxyd's lines go to stderr with
    syslog priority prefixes and no timestamps (the journal adds its own); a failed reload is an
    error (<3>)."""
    config = make_config(backend)
    proxy = start_proxyd(config, log="journal")
    wait_until(lambda: "proxyd listening on" in proxy.log_text(), 10, what="startup lines")
    assert any(line.startswith("<6>proxyd: proxyd listening on ")
               for line in proxy.log_text().splitlines()), proxy.log_text()
    proxy.config_path.write_text("mode: [\n")
    signal_and_wait(proxy, signal.SIGHUP, "reload failed")
    assert any(line.startswith("<3>proxyd: reload failed")
               for line in proxy.log_text().splitlines()), proxy.log_text()
