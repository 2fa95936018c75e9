"""Configuration errors through the real daemon: a bad file exits non-zero before listening and
names the exact key path; ``--check`` validates and exits 0 or 1 without listening."""

import time

import pytest

import yaml

from .harness import REPO, TARGET, TWISTD, Proxy, _endpoint_port, port_accepts, proxyd_env, run


def run_to_exit(config, workdir, timeout=30):
    """Start the daemon on config and wait for it to exit; returns (rc, output, listened) where
    listened says whether any configured port ever accepted a connection meanwhile."""
    if TARGET != "proxyd":
        pytest.fail("configuration errors are proxyd's own contract; run against proxyd",
                    pytrace=False)
    p = Proxy(config, workdir, wait=False)
    listened = False
    deadline = time.monotonic() + timeout
    try:
        while p.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not exit on a bad config within {timeout}s"
                                     f"\n{p.output()}")
            listened = listened or any(port_accepts(port, timeout=0.1) for port in p.ports)
            time.sleep(0.05)
        return p.proc.returncode, p.output(), listened
    finally:
        p.kill()
        p._out.close()


def _bad(make_config, backend, mutate):
    config = make_config(backend)
    mutate(config)
    return config


CASES = {
    "bad-mode": (lambda c: c.__setitem__("mode", "fast"),
                 ["mode: must be one of default, client, bridge"]),
    "missing-cert": (lambda c: c["listen"][0]["tls"].__setitem__(
        "cert", "/nonexistent/proxyd-e2e/cert.pem"),
        ["listen[0].tls.cert: no such file '/nonexistent/proxyd-e2e/cert.pem'"]),
    "unknown-nested-key": (lambda c: c["timeouts"].__setitem__("backend_reed", "1s"),
                           ["timeouts.backend_reed", "backend_read"]),
    "unknown-top-level-key": (lambda c: c.__setitem__("acess_log", "/tmp/x.log"),
                              ["acess_log", "access_log"]),
    "unknown-listener-key": (lambda c: c["listen"][1].__setitem__("protocol", ["h2"]),
                             ["listen[1].protocol", "protocols"]),
    "bad-size": (lambda c: c["rate_limits"]["read"].__setitem__("rate", "1 parsec"),
                 ["rate_limits.read.rate"]),
    "bad-duration": (lambda c: c["timeouts"].__setitem__("backend_read", "soon"),
                     ["timeouts.backend_read"]),
    "bad-endpoint": (lambda c: c["listen"][1].__setitem__("endpoint", "tcp:notaport"),
                     ["listen[1].endpoint"]),
    "bad-backend-address": (lambda c: c["backends"][0].__setitem__("address", "127.0.0.1"),
                            ["backends[0].address"]),
    "bad-protocol": (lambda c: c["listen"][0].__setitem__("protocols", ["h2", "h3"]),
                     ["listen[0].protocols"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_nonzero_naming_the_key(case, backend, make_config, tmp_path):
    """A bad config makes the daemon exit non-zero without ever listening, and its output
    (stderr or log) names the exact key path of the problem."""
    mutate, expected = CASES[case]
    rc, output, listened = run_to_exit(_bad(make_config, backend, mutate), tmp_path)
    assert rc != 0, output
    assert not listened, f"the daemon listened before rejecting its config\n{output}"
    for text in expected:
        assert text in output, f"{text!r} not in the daemon's output:\n{output}"


def test_yaml_syntax_error_names_the_line(tmp_path):
    """A YAML syntax error exits non-zero and points at the line."""
    text = "mode: default\nlisten:\n  - endpoint: \"tcp:1:interface=127.0.0.1\"\n" \
           "    protocols: [h2, http/1.1\nbackends: []\n"
    rc, output, _ = run_to_exit(text, tmp_path)
    assert rc != 0, output
    assert "line" in output.lower(), output
    assert "proxy.yaml" in output or "yaml" in output.lower(), output


def _write(config, tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _check(config_path, workdir):
    if TARGET != "proxyd":
        pytest.fail("--check is proxyd's own flag; run against proxyd", pytrace=False)
    return run([*TWISTD, "--nodaemon", "--pidfile=",
                f"--logfile={workdir / 'check.log'}", "proxyd", "--check", "-c",
                str(config_path)], timeout=60, env=proxyd_env(), cwd=str(REPO))


def test_check_flag_valid_config(backend, make_config, tmp_path):
    """--check on a valid config exits 0 at once and never listens."""
    config = make_config(backend)
    rc, out, err = _check(_write(config, tmp_path), tmp_path)
    assert rc == 0, out + err
    ports = [_endpoint_port(lst["endpoint"]) for lst in config["listen"]]
    assert not any(port_accepts(port) for port in ports)


@pytest.mark.parametrize("case", ["bad-mode", "missing-cert", "unknown-nested-key"])
def test_check_flag_invalid_config(case, backend, make_config, tmp_path):
    """--check on an invalid config exits 1 and names the key path."""
    mutate, expected = CASES[case]
    rc, out, err = _check(_write(_bad(make_config, backend, mutate), tmp_path), tmp_path)
    assert rc == 1, out + err
    for text in expected:
        assert text in out + err, out + err
