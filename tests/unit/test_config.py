"""Tests of proxyd.config: sizes, durations, defaults, path resolution and every error message.

Strategy: table-driven. A small valid configuration (``base()``) is mutated one key path at a time
(``edit(data, "listen[0].tls.cert", value)``) and the exact ``str(ConfigError)`` (key path included)
is compared; TLS files live in pytest's ``tmp_path``, which is also the ``base_dir``.
"""

import copy
import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from proxyd import config
from proxyd.config import (
    AccessLog, Metrics, Backend, BackendTLS, Bucket, Config, HeaderPolicy, Limits, Listener,
    ListenerCertificate, ListenerTLS, RateLimits, Timeouts, load_config, parse_config, parse_duration, parse_size,
)
from proxyd.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSING = object()


@pytest.fixture
def tls_dir(tmp_path):
    """A base_dir holding cert.pem, key.pem, ca.pem (contents do not matter to config)."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("dummy\n")
    (tmp_path / "logs").mkdir()
    return tmp_path


def base():
    """A minimal valid configuration with one TLS and one cleartext listener."""
    return {
        "listen": [
            {"endpoint": "tcp:8443:interface=127.0.0.1",
             "tls": {"cert": "cert.pem", "key": "key.pem"}},
            {"endpoint": "tcp:8080:interface=127.0.0.1", "protocols": ["h2", "http/1.1"]},
        ],
        "backends": [{"address": "127.0.0.1:8081"}],
    }


def edit(data, path, value):
    """Return a deep copy of ``data`` with ``path`` (``a.b[0].c``) set, or deleted if MISSING."""
    data = copy.deepcopy(data)
    steps = [int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", path)]
    node = data
    for step in steps[:-1]:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    if value is MISSING:
        del node[steps[-1]]
    else:
        node[steps[-1]] = value
    return data


# ------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("value, expected", [
    (0, 0), (100, 100), ("0", 0), ("100", 100), (" 100 ", 100), ("100B", 100),
    ("64KiB", 65536), ("1MiB", 1048576), ("2GiB", 2147483648), ("1TiB", 2**40),
    ("1.5KiB", 1536), ("0.5MiB", 524288),
    ("4KB", 4000), ("1MB", 1000000), ("1.5MB", 1500000), ("2GB", 2000000000), ("1TB", 10**12),
    ("64kib", 65536), ("4kb", 4000), ("1 MiB", 1048576), (1048576.0, 1048576), (".5KB", 500),
])
def test_parse_size_accepts(value, expected):
    """Every documented size form parses to the right byte count."""
    assert parse_size(value, "x") == expected
    assert isinstance(parse_size(value, "x"), int)


@pytest.mark.parametrize("value, message", [
    ("", "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    ("abc", "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    ("-1", "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    ("1 2KiB", "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    (True, "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    (None, "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    ([1], "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    (float("inf"), "must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    (-5, "must not be negative"),
    ("1K", "ambiguous unit 'K': write KiB (powers of 1024) or KB (powers of 1000)"),
    ("4m", "ambiguous unit 'm': write MiB (powers of 1024) or MB (powers of 1000)"),
    ("1G", "ambiguous unit 'G': write GiB (powers of 1024) or GB (powers of 1000)"),
    ("3PB", "unknown size unit 'PB' (use B, KiB, MiB, GiB, KB, MB or GB)"),
    ("1.0001KB", "'1.0001KB' is not a whole number of bytes"),
    (1.5, "1.5 is not a whole number of bytes"),
])
def test_parse_size_rejects(value, message):
    """Bad sizes raise ConfigError carrying the given key path."""
    with pytest.raises(ConfigError) as info:
        parse_size(value, "limits.max_request_body")
    assert info.value.path == "limits.max_request_body"
    assert info.value.message == message
    assert str(info.value) == f"limits.max_request_body: {message}"


# ---------------------------------------------------------------------------------- durations

@pytest.mark.parametrize("value, expected", [
    (0, 0.0), (5, 5.0), (2.5, 2.5), ("5", 5.0), ("0.25", 0.25), ("500ms", 0.5), ("5s", 5.0),
    ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), ("1m30s", 90.0), ("1h 2m 3s", 3723.0),
    (" 10s ", 10.0), ("0ms", 0.0), ("100ms", 0.1),
])
def test_parse_duration_accepts(value, expected):
    """Every documented duration form parses to float seconds."""
    result = parse_duration(value, "x")
    assert result == pytest.approx(expected)
    assert isinstance(result, float)


@pytest.mark.parametrize("value, message", [
    ("", "must be a duration such as 500ms, 5s, 2m or 1h"),
    ("5 parsecs", "must be a duration such as 500ms, 5s, 2m or 1h"),
    ("5d", "must be a duration such as 500ms, 5s, 2m or 1h"),
    ("s", "must be a duration such as 500ms, 5s, 2m or 1h"),
    ("-5s", "must be a duration such as 500ms, 5s, 2m or 1h"),
    ("5s junk", "must be a duration such as 500ms, 5s, 2m or 1h"),
    (False, "must be a duration such as 500ms, 5s, 2m or 1h"),
    (None, "must be a duration such as 500ms, 5s, 2m or 1h"),
    (float("nan"), "must be a duration such as 500ms, 5s, 2m or 1h"),
    (-1, "must not be negative"),
])
def test_parse_duration_rejects(value, message):
    """Bad durations raise ConfigError carrying the given key path."""
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "timeouts.backend_read")
    assert str(info.value) == f"timeouts.backend_read: {message}"


# ---------------------------------------------------------------------------------- defaults

def test_defaults_of_a_minimal_config(tls_dir):
    """Everything not given takes the documented default."""
    cfg = parse_config(base(), str(tls_dir))
    assert cfg.mode == "default"
    assert cfg.listen[0] == Listener(
        endpoint="tcp:8443:interface=127.0.0.1",
        tls=ListenerTLS(certificates=(
            ListenerCertificate(cert=str(tls_dir / "cert.pem"), key=str(tls_dir / "key.pem")),)),
        protocols=("h2", "http/1.1"))
    assert cfg.listen[1].tls is None and cfg.listen[1].protocols == ("h2", "http/1.1")
    assert cfg.backends == (Backend(address="127.0.0.1:8081", host="127.0.0.1", port=8081,
                                    unix_path=None, protocol="http/1.1", tls=None,
                                    max_connections=100),)
    assert cfg.headers == HeaderPolicy("append", True, True, True)
    assert cfg.rate_limits == RateLimits(read=Bucket(0, 0), write=Bucket(0, 0),
                                         worker_read=Bucket(0, 0), worker_write=Bucket(0, 0),
                                         requests_per_ip=Bucket(0, 0))
    assert cfg.limits == Limits(max_concurrent_streams=100, max_header_list_size=65536,
                                max_request_body=0, max_connections=0, max_connections_per_ip=0,
                                max_pending_requests=16384)
    assert cfg.timeouts == Timeouts(frontend_idle=60.0, frontend_header=15.0, backend_connect=5.0,
                                    backend_read=60.0, graceful_shutdown=30.0)
    assert cfg.access_log is None and cfg.metrics is None


def test_dataclass_defaults_match_parser_defaults(tls_dir):
    """Constructing the dataclasses directly gives the same defaults as parsing."""
    cfg = parse_config(base(), str(tls_dir))
    assert cfg.headers == HeaderPolicy()
    assert cfg.rate_limits == RateLimits()
    assert cfg.limits == Limits()
    assert cfg.timeouts == Timeouts()
    assert BackendTLS() == BackendTLS(ca=None, server_name=None, verify=True, cert=None, key=None)


def test_field_names_are_the_public_api():
    """The dataclass fields are exactly the documented ones, in order."""
    names = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (
        Config, Listener, ListenerTLS, ListenerCertificate, Backend, BackendTLS, HeaderPolicy,
        Bucket, RateLimits, Limits, Timeouts, AccessLog, Metrics)}
    assert names[Config] == ["mode", "listen", "backends", "headers", "rate_limits", "limits",
                             "timeouts", "access_log", "metrics", "routes", "trusted_proxies",
                             "workers"]
    assert names[Listener] == ["endpoint", "tls", "protocols", "proxy_protocol",
                               "enable_connect_protocol", "h2c_upgrade"]
    assert names[ListenerTLS] == ["certificates", "client_ca", "verify_client", "session_tickets",
                                  "session_timeout"]
    assert names[ListenerCertificate] == ["cert", "key", "where"]
    assert names[Backend] == ["address", "host", "port", "unix_path", "protocol", "tls",
                              "max_connections"]
    assert names[BackendTLS] == ["ca", "server_name", "verify", "cert", "key"]
    assert names[HeaderPolicy] == ["x_forwarded_for", "x_forwarded_proto", "via",
                                   "location_rewrite", "forwarded", "client_cert_header"]
    assert names[Bucket] == ["rate", "burst"]
    assert names[RateLimits] == ["read", "write", "worker_read", "worker_write", "requests_per_ip"]
    assert names[Limits] == ["max_concurrent_streams", "max_header_list_size", "max_request_body",
                             "max_connections", "max_connections_per_ip", "max_pending_requests",
                             "shared"]
    assert names[Timeouts] == ["frontend_idle", "frontend_header", "backend_connect",
                               "backend_read", "graceful_shutdown", "tunnel_idle"]
    assert names[AccessLog] == ["path", "format"]
    assert names[Metrics] == ["endpoint", "health_path"]


def test_dataclasses_are_frozen_and_slotted(tls_dir):
    """Config values cannot be changed after parsing and carry no per-instance dict."""
    cfg = parse_config(base(), str(tls_dir))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "client"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.limits.max_concurrent_streams = 1
    for value in (cfg, cfg.listen[0], cfg.listen[0].tls, cfg.backends[0], cfg.headers,
                  cfg.rate_limits, cfg.rate_limits.read, cfg.limits, cfg.timeouts):
        assert not hasattr(value, "__dict__")
    assert isinstance(cfg.listen, tuple) and isinstance(cfg.listen[0].protocols, tuple)


# --------------------------------------------------------------------- accepted variations

@pytest.mark.parametrize("path, value, attribute, expected", [
    ("mode", None, lambda c: c.mode, "default"),
    ("headers", {"x_forwarded_for": False}, lambda c: c.headers.x_forwarded_for, "off"),
    ("headers", {"x_forwarded_for": "replace", "via": False},
     lambda c: (c.headers.x_forwarded_for, c.headers.via), ("replace", False)),
    ("rate_limits.read", {"rate": "2MiB"}, lambda c: c.rate_limits.read, Bucket(2097152, 2097152)),
    ("rate_limits.write", {"rate": "1MB", "burst": 0}, lambda c: c.rate_limits.write,
     Bucket(1000000, 1000000)),
    ("rate_limits.read", {"rate": 0, "burst": 0}, lambda c: c.rate_limits.read, Bucket(0, 0)),
    ("rate_limits.requests_per_ip", {"rate": 10, "burst": 20},
     lambda c: c.rate_limits.requests_per_ip, Bucket(10, 20)),
    ("limits", {"max_header_list_size": "16KiB", "max_request_body": "10MB"},
     lambda c: (c.limits.max_header_list_size, c.limits.max_request_body), (16384, 10000000)),
    ("timeouts", {"backend_read": "500ms", "graceful_shutdown": 0},
     lambda c: (c.timeouts.backend_read, c.timeouts.graceful_shutdown), (0.5, 0.0)),
    ("metrics", "tcp:9100:interface=127.0.0.1", lambda c: c.metrics,
     Metrics("tcp:9100:interface=127.0.0.1", "/healthz")),
    ("metrics", {"endpoint": "tcp:9100", "health_path": "/ready"}, lambda c: c.metrics,
     Metrics("tcp:9100", "/ready")),
    ("metrics", False, lambda c: c.metrics, None),
    ("access_log", "-", lambda c: c.access_log, AccessLog("-", "proxyd")),
    ("access_log", {"path": "-", "format": "combined"}, lambda c: c.access_log,
     AccessLog("-", "combined")),
    ("access_log", {"path": "-", "format": "json"}, lambda c: c.access_log.format, "json"),
    ("access_log", False, lambda c: c.access_log, None),
    ("backends[0].address", "[::1]:8081", lambda c: (c.backends[0].host, c.backends[0].port),
     ("::1", 8081)),
    ("backends[0].address", "app.internal:80", lambda c: (c.backends[0].host, c.backends[0].port),
     ("app.internal", 80)),
    ("backends[0].address", "unix:/run/app.sock",
     lambda c: (c.backends[0].host, c.backends[0].port, c.backends[0].unix_path),
     ("", 0, "/run/app.sock")),
    ("backends[0].tls", True, lambda c: c.backends[0].tls, BackendTLS(verify=True)),
    ("backends[0].tls", False, lambda c: c.backends[0].tls, None),
    ("backends[0].tls", {"server_name": "app.internal", "verify": False},
     lambda c: c.backends[0].tls, BackendTLS(server_name="app.internal", verify=False)),
    ("backends[0].max_connections", 1, lambda c: c.backends[0].max_connections, 1),
    ("listen[0].tls", False, lambda c: c.listen[0].tls, None),
    ("listen[0].tls", {"certificates": [{"cert": "cert.pem", "key": "key.pem"},
                                        {"cert": "ca.pem", "key": "key.pem"}]},
     lambda c: [(x.cert.rsplit("/", 1)[1], x.where) for x in c.listen[0].tls.certificates],
     [("cert.pem", "tls.certificates[0]"), ("ca.pem", "tls.certificates[1]")]),
    ("listen[0].tls.client_ca", "ca.pem",
     lambda c: (c.listen[0].tls.client_ca.rsplit("/", 1)[1], c.listen[0].tls.verify_client),
     ("ca.pem", "require")),
    ("listen[0].tls", {"cert": "cert.pem", "key": "key.pem", "client_ca": "ca.pem",
                       "verify_client": "optional"},
     lambda c: c.listen[0].tls.verify_client, "optional"),
    ("listen[0].tls", {"cert": "cert.pem", "key": "key.pem", "session_tickets": False,
                       "session_timeout": "5m"},
     lambda c: (c.listen[0].tls.session_tickets, c.listen[0].tls.session_timeout), (False, 300.0)),
    ("listen[0].tls.cert", "cert.pem",
     lambda c: (c.listen[0].tls.session_tickets, c.listen[0].tls.session_timeout,
                c.listen[0].tls.client_ca, c.listen[0].tls.certificates[0].where),
     (True, 3600.0, None, "tls")),
    ("headers.forwarded", "append", lambda c: c.headers.forwarded, "append"),
    ("headers.forwarded", False, lambda c: c.headers.forwarded, "off"),
    ("headers.forwarded", None, lambda c: c.headers.forwarded, "off"),
    ("headers.client_cert_header", "X-Client-Subject", lambda c: c.headers.client_cert_header,
     b"x-client-subject"),
    ("headers.client_cert_header", False, lambda c: c.headers.client_cert_header, None),
    ("listen[1].endpoint", "unix:/run/proxyd.sock", lambda c: c.listen[1].endpoint,
     "unix:/run/proxyd.sock"),
    ("listen[1].endpoint", "tcp6:port=8080:interface=\\:\\:1", lambda c: c.listen[1].endpoint,
     "tcp6:port=8080:interface=\\:\\:1"),
    ("listen[1].endpoint", "systemd:domain=INET:index=0", lambda c: c.listen[1].endpoint,
     "systemd:domain=INET:index=0"),
    ("listen[1].protocols", ["spdy/3.1"], lambda c: c.listen[1].protocols, ("spdy/3.1",)),
    ("workers", None, lambda c: c.workers, "auto"),
    ("workers", "auto", lambda c: c.workers, "auto"),
    ("workers", 1, lambda c: c.workers, 1),
    ("workers", 64, lambda c: c.workers, 64),
])
def test_accepted_variations(tls_dir, path, value, attribute, expected):
    """Valid alternative spellings of each key parse to the expected values."""
    cfg = parse_config(edit(base(), path, value), str(tls_dir))
    assert attribute(cfg) == expected


@pytest.mark.parametrize("mode, protocols, backend", [
    ("client", ["http/1.1", "h2"], "h2"),
    ("bridge", ["h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1"], "h2"),
    ("default", ["h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1"], "http/1.1"),
])
def test_modes_choose_backend_protocol(tls_dir, mode, protocols, backend):
    """Each mode accepts its frontend protocols and defaults the backend protocol to its own."""
    data = edit(edit(base(), "mode", mode), "listen[0].protocols", protocols)
    cfg = parse_config(data, str(tls_dir))
    assert cfg.mode == mode
    assert cfg.listen[0].protocols == tuple(protocols)
    assert cfg.backends[0].protocol == backend


def test_several_backends_keep_their_order(tls_dir):
    """All backends are kept, in the order given."""
    data = edit(base(), "backends", [{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:81"}])
    cfg = parse_config(data, str(tls_dir))
    assert [(b.host, b.port) for b in cfg.backends] == [("10.0.0.1", 80), ("10.0.0.2", 81)]


# ----------------------------------------------------------------------------- path resolution

def test_relative_paths_resolve_against_base_dir(tls_dir, monkeypatch):
    """TLS files and access_log are resolved against the config's directory, not the cwd."""
    monkeypatch.chdir("/")
    data = edit(base(), "backends[0].tls", {"ca": "ca.pem", "cert": "./cert.pem",
                                            "key": "../" + tls_dir.name + "/key.pem"})
    data = edit(data, "access_log", "logs/access.log")
    cfg = parse_config(data, str(tls_dir))
    assert cfg.listen[0].tls.certificates == (
        ListenerCertificate(str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")),)
    assert cfg.backends[0].tls == BackendTLS(ca=str(tls_dir / "ca.pem"), server_name=None,
                                             verify=True, cert=str(tls_dir / "cert.pem"),
                                             key=str(tls_dir / "key.pem"))
    assert cfg.access_log == AccessLog(str(tls_dir / "logs" / "access.log"))


def test_absolute_paths_are_kept(tls_dir, tmp_path_factory):
    """An absolute path is used as is, whatever base_dir is."""
    other = tmp_path_factory.mktemp("elsewhere")
    data = edit(base(), "listen[0].tls", {"cert": str(tls_dir / "cert.pem"),
                                          "key": str(tls_dir / "key.pem")})
    data = edit(data, "access_log", str(tls_dir / "logs" / "a.log"))
    cfg = parse_config(data, str(other))
    assert cfg.listen[0].tls.cert == str(tls_dir / "cert.pem")
    assert cfg.access_log.path == str(tls_dir / "logs" / "a.log")


def test_relative_base_dir_gives_absolute_paths(tls_dir, monkeypatch):
    """A relative base_dir is made absolute, so resolved paths survive a later chdir."""
    monkeypatch.chdir(tls_dir.parent)
    cfg = parse_config(base(), tls_dir.name)
    assert cfg.listen[0].tls.cert == str(tls_dir / "cert.pem")


def test_load_config_resolves_against_the_file_directory(tls_dir, monkeypatch):
    """load_config uses the directory of the file as base_dir."""
    (tls_dir / "proxy.yaml").write_text(yaml.safe_dump(base()))
    monkeypatch.chdir("/")
    cfg = load_config(str(tls_dir / "proxy.yaml"))
    assert cfg.listen[0].tls.key == str(tls_dir / "key.pem")


# ------------------------------------------------------------------------------- bad configs

BAD = [
    ("mode", "fast", "mode: must be one of default, client, bridge"),
    ("workers", 0, "workers: must be auto or a number of processes 1..64"),
    ("workers", 65, "workers: must be auto or a number of processes 1..64"),
    ("workers", "all", "workers: must be auto or a number of processes 1..64"),
    ("workers", True, "workers: must be auto or a number of processes 1..64"),
    ("worker", 2, "worker: unknown key (did you mean 'workers'?)"),
    ("mode", 1, "mode: must be one of default, client, bridge"),
    ("limits.max_concurent_streams", 5,
     "limits.max_concurent_streams: unknown key (did you mean 'max_concurrent_streams'?)"),
    ("timeout", {}, "timeout: unknown key (did you mean 'timeouts'?)"),
    ("max_concurrent_streams", 5,
     "max_concurrent_streams: unknown key (did you mean 'limits.max_concurrent_streams'?)"),
    ("zzz", 1, "zzz: unknown key"),
    ("listen[0].protocol", ["h2"], "listen[0].protocol: unknown key (did you mean 'protocols'?)"),
    ("listen[0].tls.crt", "cert.pem", "listen[0].tls.crt: unknown key (did you mean 'cert'?)"),
    ("backends[0].adress", "x:1", "backends[0].adress: unknown key (did you mean 'address'?)"),
    ("rate_limits.read.brust", 1, "rate_limits.read.brust: unknown key (did you mean 'burst'?)"),
    ("backends[0].tls", {"verfiy": False},
     "backends[0].tls.verfiy: unknown key (did you mean 'verify'?)"),
    ("listen[1].protocols[0]", "h3",
     "listen[1].protocols[0]: must be one of h2, spdy/3.1, spdy/3, spdy/2, http/1.1"),
    ("listen[1].protocols[1]", "h2", "listen[1].protocols[1]: duplicate protocol h2"),
    ("listen[1].protocols", "h2", "listen[1].protocols: must be a non-empty list"),
    ("listen[1].protocols", [], "listen[1].protocols: must be a non-empty list"),
    ("listen", [], "listen: must be a non-empty list"),
    ("listen", MISSING, "listen: must be a non-empty list"),
    ("listen", {"endpoint": "tcp:80"}, "listen: must be a non-empty list"),
    ("listen[0]", "tcp:80", "listen[0]: must be a mapping"),
    ("backends", [], "backends: must be a non-empty list"),
    ("backends", MISSING, "backends: must be a non-empty list"),
    ("listen[0].endpoint", MISSING, "listen[0].endpoint: required key missing"),
    ("listen[0].endpoint", "ssl:8443:privateKey=k.pem",
     "listen[0].endpoint: ssl: endpoints are not supported; use tls: instead"),
    ("listen[0].endpoint", "http:80",
     "listen[0].endpoint: must start with one of tcp:, tcp6:, unix:, systemd:"),
    ("listen[0].endpoint", "8443",
     "listen[0].endpoint: must start with one of tcp:, tcp6:, unix:, systemd:"),
    ("listen[0].endpoint", 8443, "listen[0].endpoint: must be a non-empty string"),
    ("listen[0].endpoint", "tcp:https",
     "listen[0].endpoint: tcp: needs a port 0..65535, e.g. 'tcp:8080'"),
    ("listen[0].endpoint", "tcp6:port=70000",
     "listen[0].endpoint: tcp6: needs a port 0..65535, e.g. 'tcp6:8080'"),
    ("listen[0].endpoint", "tcp6:8080:interface=::1",
     "listen[0].endpoint: empty field between colons (write ':' inside a value, e.g. an IPv6"
     " address, as '\\:')"),
    ("listen[0].endpoint", "unix:",
     "listen[0].endpoint: unix: needs a socket path, e.g. 'unix:/run/proxyd.sock'"),
    ("listen[0].endpoint", "systemd:index=0",
     "listen[0].endpoint: systemd: needs domain=INET, INET6 or UNIX, e.g. "
     "'systemd:domain=INET:index=0'"),
    ("listen[1].endpoint", "tcp:8443:interface=127.0.0.1",
     "listen[1].endpoint: duplicate of listen[0].endpoint"),
    ("listen[0].tls.cert", "/nonexistent/x.pem",
     "listen[0].tls.cert: no such file '/nonexistent/x.pem'"),
    ("listen[0].tls.key", MISSING, "listen[0].tls.key: required key missing"),
    ("listen[0].tls", True,
     "listen[0].tls: must be a mapping with certificates (or cert and key), or false"),
    ("listen[0].tls", {}, "listen[0].tls.certificates: required key missing (or cert and key)"),
    ("listen[0].tls", {"certificates": [{"cert": "cert.pem", "key": "key.pem"},
                                        {"cert": "cert.pem", "key": "nokey.pem"}]},
     "listen[0].tls.certificates[1].key: no such file '{base}/nokey.pem'"),
    ("listen[0].tls", {"certificates": [{"cert": "cert.pem"}]},
     "listen[0].tls.certificates[0].key: required key missing"),
    ("listen[0].tls", {"certificates": []}, "listen[0].tls.certificates: must be a non-empty list"),
    ("listen[0].tls", {"certificates": ["cert.pem"]},
     "listen[0].tls.certificates[0]: must be a mapping"),
    ("listen[0].tls.certificates", [{"cert": "cert.pem", "key": "key.pem"}],
     "listen[0].tls.cert: give either cert and key or certificates, not both"),
    ("listen[0].tls.client_ca", "noca.pem", "listen[0].tls.client_ca: no such file '{base}/noca.pem'"),
    ("listen[0].tls.verify_client", "sometimes",
     "listen[0].tls.verify_client: must be one of optional, require"),
    ("listen[0].tls.verify_client", "optional",
     "listen[0].tls.verify_client: needs client_ca (the CAs client certificates chain to)"),
    ("listen[0].tls.session_tickets", "yes", "listen[0].tls.session_tickets: must be true or false"),
    ("listen[0].tls.session_timeout", "0s",
     "listen[0].tls.session_timeout: must be between 1s and 168h (TLS 1.3's longest ticket "
     "lifetime)"),
    ("listen[0].tls.session_timeout", "169h",
     "listen[0].tls.session_timeout: must be between 1s and 168h (TLS 1.3's longest ticket "
     "lifetime)"),
    ("listen[0].tls.session_ticket", True,
     "listen[0].tls.session_ticket: unknown key (did you mean 'session_tickets'?)"),
    ("headers.forwarded", "add", "headers.forwarded: must be one of append, replace, off"),
    ("headers.client_cert_header", "x client",
     "headers.client_cert_header: must be a header name such as x-client-subject"),
    ("headers.client_cert_header", 7,
     "headers.client_cert_header: must be a non-empty string"),
    ("headers.client_cert_header", "X-Forwarded-For",
     "headers.client_cert_header: x-forwarded-for is a header proxyd sets or removes itself; "
     "choose another name such as x-client-subject"),
    ("headers.client_cert_header", "X_Forwarded_For",
     "headers.client_cert_header: x_forwarded_for is a header proxyd sets or removes itself; "
     "choose another name such as x-client-subject"),
    ("listen[0].tls.cert", "logs", "listen[0].tls.cert: not a regular file '{base}/logs'"),
    ("listen[0].tls.key", "missing-key.pem",
     "listen[0].tls.key: no such file '{base}/missing-key.pem'"),
    ("backends[0].protocol", "h2", "backends[0].protocol: must be http/1.1 in default mode"),
    ("backends[0].protocol", "spdy/3", "backends[0].protocol: must be one of http/1.1, h2"),
    ("backends[0].address", MISSING, "backends[0].address: required key missing"),
    ("backends[0].address", "127.0.0.1:0", "backends[0].address: port must be 1..65535"),
    ("backends[0].address", "127.0.0.1:65536", "backends[0].address: port must be 1..65535"),
    ("backends[0].address", "localhost",
     "backends[0].address: must be host:port, [ipv6]:port or unix:/path"),
    ("backends[0].address", "::1:8081",
     "backends[0].address: must be host:port, [ipv6]:port or unix:/path"),
    ("backends[0].address", "http://app:80",
     "backends[0].address: must be host:port, [ipv6]:port or unix:/path"),
    ("backends[0].address", "unix:",
     "backends[0].address: unix: needs a socket path, e.g. 'unix:/run/app.sock'"),
    ("backends[0].max_connections", 0, "backends[0].max_connections: must be at least 1"),
    ("backends[0].max_connections", "10", "backends[0].max_connections: must be an integer"),
    ("backends[0].tls", "yes please", "backends[0].tls: must be true, false or a mapping"),
    ("backends[0].tls", {"cert": "cert.pem"},
     "backends[0].tls.key: cert and key must be given together"),
    ("backends[0].tls", {"key": "key.pem"},
     "backends[0].tls.cert: cert and key must be given together"),
    ("backends[0].tls", {"verify": "no"}, "backends[0].tls.verify: must be true or false"),
    ("backends[0].tls", {"ca": "nope.pem"}, "backends[0].tls.ca: no such file '{base}/nope.pem'"),
    ("backends[0].tls", {"server_name": ""},
     "backends[0].tls.server_name: must be a non-empty string"),
    ("headers.x_forwarded_for", "prepend",
     "headers.x_forwarded_for: must be one of append, replace, off"),
    ("headers.x_forwarded_for", True,
     "headers.x_forwarded_for: must be one of append, replace, off"),
    ("headers.via", "yes please", "headers.via: must be true or false"),
    ("headers", ["via"], "headers: must be a mapping"),
    ("rate_limits.read.rate", "1M",
     "rate_limits.read.rate: ambiguous unit 'M': write MiB (powers of 1024) or MB "
     "(powers of 1000)"),
    ("rate_limits.write", {"rate": 0, "burst": "1MiB"},
     "rate_limits.write.burst: must be 0 when rate is 0 (unlimited)"),
    ("rate_limits.worker_write.burst", -1, "rate_limits.worker_write.burst: must not be negative"),
    ("rate_limits.requests_per_ip.rate", "10KiB",
     "rate_limits.requests_per_ip.rate: must be a non-negative integer"),
    ("rate_limits.read", 5, "rate_limits.read: must be a mapping"),
    ("limits.max_concurrent_streams", 0, "limits.max_concurrent_streams: must be at least 1"),
    ("limits.max_concurrent_streams", True, "limits.max_concurrent_streams: must be an integer"),
    ("limits.max_header_list_size", 100, "limits.max_header_list_size: must be at least 1024"),
    ("limits.max_request_body", "lots",
     "limits.max_request_body: must be a size such as 100, 64KiB, 1MiB or 1.5MB"),
    ("limits.max_connections", -1, "limits.max_connections: must be at least 0"),
    ("limits.max_pending_requests", 0, "limits.max_pending_requests: must be at least 1"),
    ("timeouts.backend_read", 0, "timeouts.backend_read: must be greater than 0"),
    ("timeouts.frontend_idle", "0s", "timeouts.frontend_idle: must be greater than 0"),
    ("timeouts.frontend_header", "5 parsecs",
     "timeouts.frontend_header: must be a duration such as 500ms, 5s, 2m or 1h"),
    ("timeouts.graceful_shutdown", -1, "timeouts.graceful_shutdown: must not be negative"),
    ("access_log", "nodir/access.log", "access_log: no such directory '{base}/nodir'"),
    ("access_log", "logs", "access_log: is a directory '{base}/logs'"),
    ("access_log", "", "access_log: must be a non-empty string"),
    ("metrics", "ssl:9100", "metrics: ssl: endpoints are not supported"),
    ("metrics", "http://127.0.0.1:9100",
     "metrics: must start with one of tcp:, tcp6:, unix:, systemd:"),
    ("metrics", {"health_path": "/h"}, "metrics.endpoint: required key missing"),
    ("metrics", {"endpoint": "tcp:9100", "health_path": "healthz"},
     "metrics.health_path: must be a path such as /healthz (not /metrics, no query)"),
    ("metrics", {"endpoint": "tcp:9100", "health": "/h"},
     "metrics.health: unknown key (did you mean 'health_path'?)"),
    ("metrics", "tcp:8443", "metrics: clashes with listen[0].endpoint (same port 8443)"),
    ("metrics", {"endpoint": "tcp:port=8080:interface=127.0.0.1"},
     "metrics.endpoint: clashes with listen[1].endpoint (same port 8080)"),
    ("listen[1].endpoint", "tcp:8443",
     "listen[1].endpoint: clashes with listen[0].endpoint (same port 8443)"),
    ("access_log", {"format": "combined"}, "access_log.path: required key missing"),
    ("access_log", {"path": "-", "format": "apache"},
     "access_log.format: must be one of proxyd, combined, json"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_config_names_the_key_path(tls_dir, path, value, message):
    """Each invalid value is rejected with its exact key path and message."""
    with pytest.raises(ConfigError) as info:
        parse_config(edit(base(), path, value), str(tls_dir))
    expected = message.replace("{base}", str(tls_dir))
    assert str(info.value) == expected
    assert info.value.path == expected.split(": ", 1)[0]


@pytest.mark.parametrize("mode, index, protocols, message", [
    ("client", 1, ["http/1.1", "spdy/3"],
     "listen[0].protocols[1]: spdy/3 is not available in client mode (allowed: http/1.1, h2)"),
    ("client", 0, ["spdy/3.1"],
     "listen[0].protocols[0]: spdy/3.1 is not available in client mode (allowed: http/1.1, h2)"),
])
def test_protocols_restricted_by_mode(tls_dir, mode, index, protocols, message):
    """A listener may only offer the frontend protocols of the configured mode."""
    data = edit(edit(base(), "mode", mode), "listen[0].protocols", protocols)
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    assert str(info.value) == message


@pytest.mark.parametrize("mode", ["client", "bridge"])
def test_http1_backend_rejected_in_h2_modes(tls_dir, mode):
    """client and bridge modes speak h2 to backends; http/1.1 there is an error."""
    data = edit(edit(base(), "mode", mode), "backends[0].protocol", "http/1.1")
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    assert str(info.value) == f"backends[0].protocol: must be h2 in {mode} mode"


@pytest.mark.parametrize("data", [[], "text", 5])
def test_top_level_must_be_a_mapping(tls_dir, data):
    """A document that is not a mapping is rejected without a key path."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    assert str(info.value) == "the configuration must be a mapping of keys to values"
    assert info.value.path == ""


# ------------------------------------------------------------------------------- load_config

def test_missing_file_names_the_file(tmp_path):
    """A config file that does not exist gives a ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"cannot read config file '{path}': No such file or directory"


@pytest.mark.parametrize("text, line", [
    ("mode: default\nlisten:\n  - endpoint: [unclosed\nbackends: []\n", 4),
    ("mode: default\n\tlisten: []\n", 2),
    ("mode: default\nlisten: []\nbackends: x\n  bad: indent\n", 4),
    ("mode: default\nmode: client\n", 2),
])
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    """A YAML syntax error (or a duplicate key) reports the file and the line of the problem."""
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"YAML syntax error in '{path}' line {line}, column ")
    assert info.value.path == ""


def test_duplicate_key_is_reported(tmp_path):
    """Repeating a key is an error instead of silently keeping the last value."""
    path = tmp_path / "proxy.yaml"
    path.write_text("limits:\n  max_request_body: 1\n  max_request_body: 2\n")
    expected = r"line 3, column 3: found duplicate key 'max_request_body'"
    with pytest.raises(ConfigError, match=expected):
        load_config(str(path))


def test_empty_file_reports_missing_listen_and_backends(tmp_path):
    """An empty file is an empty mapping: both required lists are reported, one line each."""
    path = tmp_path / "proxy.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == ("listen: must be a non-empty list\n"
                               "backends: must be a non-empty list")


def test_every_problem_is_reported_at_once(tls_dir):
    """Problems in several sections, list items and keys come back together, in file order,
    each with its own key path (ConfigErrors.errors), and str() is one line per problem."""
    data = edit(base(), "mode", "fast")
    data = edit(data, "listen[0].tls.cert", "/nonexistent/x.pem")
    data = edit(data, "listen[1].protocols", ["h3"])
    data = edit(data, "backends[0].adress", "x:1")
    data = edit(data, "timeouts", {"backend_read": "soon", "frontend_idle": 0})
    data = edit(data, "limits", {"max_concurrent_streams": 0, "max_conections": 1})
    data = edit(data, "access_log", {"path": "-", "format": "apache"})
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    error = info.value
    assert isinstance(error, config.ConfigErrors)
    assert [e.path for e in error.errors] == [
        "mode", "listen[0].tls.cert", "listen[1].protocols[0]", "backends[0].adress",
        "limits.max_conections", "limits.max_concurrent_streams",
        "timeouts.frontend_idle", "timeouts.backend_read", "access_log.format"]
    assert str(error).splitlines() == [str(e) for e in error.errors]


def test_unknown_mode_does_not_invent_protocol_errors(tls_dir):
    """With a misspelt mode, mode-dependent checks are skipped rather than guessed: only the
    mode itself is reported for an h2 backend."""
    data = edit(edit(base(), "mode", "brigde"), "backends[0].protocol", "h2")
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    assert str(info.value) == "mode: must be one of default, client, bridge"


def test_listeners_on_different_interfaces_do_not_clash(tls_dir):
    """The same port on two specific interfaces, or port 0, is not a clash."""
    data = edit(base(), "listen[1].endpoint", "tcp:8443:interface=127.0.0.2")
    data = edit(data, "metrics", "tcp:0:interface=127.0.0.1")
    cfg = parse_config(data, str(tls_dir))
    assert cfg.listen[1].endpoint == "tcp:8443:interface=127.0.0.2"


@pytest.mark.parametrize("first, second, reason", [
    ("unix:/run/p.sock", "unix:address=/run/p.sock", "same socket path /run/p.sock"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET6:index=0", "same inherited socket"),
    ("tcp6:8080:interface=\\:\\:", "tcp:8080:interface=127.0.0.1", "same port 8080"),
])
def test_endpoint_clashes(tls_dir, first, second, reason):
    """unix paths, systemd sockets and wildcard interfaces clash as the kernel would."""
    data = edit(edit(base(), "listen[0].endpoint", first), "listen[1].endpoint", second)
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tls_dir))
    assert str(info.value) == f"listen[1].endpoint: clashes with listen[0].endpoint ({reason})"


def test_yaml_off_means_x_forwarded_for_off(tls_dir):
    """Unquoted YAML ``off`` (a boolean in YAML 1.1) turns X-Forwarded-For off."""
    path = tls_dir / "proxy.yaml"
    path.write_text(yaml.safe_dump(base()) + "headers: {x_forwarded_for: off}\n")
    assert load_config(str(path)).headers.x_forwarded_for == "off"


def test_config_module_is_pure():
    """Importing proxyd.config pulls in neither twisted nor socket."""
    code = ("import sys, proxyd.config; "
            "bad = [m for m in ('twisted', 'twisted.internet', 'socket') if m in sys.modules]; "
            "sys.exit(repr(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------- the example config

@pytest.fixture
def example_dir(tmp_path):
    """A temp copy of conf/ with the demo PEM files the example refers to."""
    conf = tmp_path / "conf"
    shutil.copytree(os.path.join(REPO, "conf"), conf)
    for name in ("demo-cert.pem", "demo-key.pem"):
        (conf / name).write_text("generated by the demo script\n")
    return conf


def test_example_config_parses(example_dir):
    """conf/proxy.yaml is valid and describes the demo setup."""
    cfg = load_config(str(example_dir / "proxy.yaml"))
    assert cfg.mode == "default"
    assert [listener.endpoint for listener in cfg.listen] == [
        "tcp:8443:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"]
    assert cfg.listen[0].tls == ListenerTLS(certificates=(
        ListenerCertificate(cert=str(example_dir / "demo-cert.pem"),
                            key=str(example_dir / "demo-key.pem")),))
    assert cfg.listen[0].protocols == ("h2", "spdy/3.1", "spdy/3", "spdy/2", "http/1.1")
    assert cfg.listen[1].tls is None and cfg.listen[1].protocols == ("h2", "http/1.1")
    assert [(b.host, b.port, b.protocol, b.tls) for b in cfg.backends] == [
        ("127.0.0.1", 8081, "http/1.1", None)]
    assert cfg.access_log == AccessLog("-", "proxyd")
    assert cfg.metrics is None or cfg.metrics.endpoint == "tcp:9100:interface=127.0.0.1"
    # The example states the defaults explicitly.
    assert (cfg.headers, cfg.rate_limits, cfg.limits, cfg.timeouts) == (
        HeaderPolicy(), RateLimits(), Limits(), Timeouts())


def test_example_config_mentions_every_key():
    """Every configuration key appears in conf/proxy.yaml, set or in a comment."""
    with open(os.path.join(REPO, "conf", "proxy.yaml"), encoding="utf-8") as stream:
        text = stream.read()
    keys = set(config._TOP_KEYS)
    for names in config._SECTION_KEYS.values():
        keys.update(names)
    keys.update(["endpoint", "tls", "protocols", "cert", "key", "address", "protocol", "ca",
                 "server_name", "verify", "max_connections", "rate", "burst", "certificates",
                 "client_ca", "verify_client", "session_tickets", "session_timeout"])
    missing = sorted(k for k in keys if not re.search(rf"^\s*(#\s*)?(- )?{k}:", text, re.M)
                     and not re.search(rf"[{{,]\s*{k}:", text))
    assert missing == []


# ------------------------------------------------------- inputs found by the property test
# (tests/unit/test_config_fuzz.py): each crashed the loader with something else than ConfigError.

_MINIMAL = 'listen:\n  - endpoint: "tcp:8080"\nbackends:\n  - address: "127.0.0.1:8081"\n'


@pytest.mark.parametrize("value", [
    "!!int foo", "!!int 0x", "!!bool maybe", "!!float x", "!!timestamp garbage", "2001-13-45",
    "9" * 5000,
], ids=["int-foo", "int-0x", "bool-maybe", "float-x", "timestamp-garbage", "month-13",
        "5000-digits"])
def test_yaml_values_that_cannot_be_constructed_are_a_yaml_error(tmp_path, value):
    """A scalar whose (explicit or implied) tag cannot build a value (``!!bool maybe``, the
    date 2001-13-45, an integer beyond Python's 4300-digit limit) is a YAML error with its line,
    not a ValueError/KeyError/AttributeError traceback from PyYAML's constructor."""
    path = tmp_path / "proxy.yaml"
    path.write_text(_MINIMAL + f"workers: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"YAML syntax error in '{path}' line 5, column 10: ")
    assert info.value.path == ""


@pytest.mark.parametrize("nested", ["[" * 3000 + "]" * 3000, "{a: " * 2000 + "1" + "}" * 2000],
                         ids=["lists", "mappings"])
def test_deeply_nested_yaml_is_a_config_error(tmp_path, nested):
    """Thousands of nested flow collections are refused with one line, not a RecursionError
    from PyYAML's recursive composer."""
    path = tmp_path / "proxy.yaml"
    path.write_text(_MINIMAL + f"x: {nested}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"YAML in '{path}' is nested too deeply"


@pytest.mark.parametrize("value", [10**400, "9" * 400 + "s", "9" * 400 + "h", "9" * 5000],
                         ids=["int-1e400", "400-digit-seconds", "400-digit-hours", "5000-digits"])
def test_durations_too_large_for_a_float_are_config_errors(value):
    """A duration beyond a float (or beyond Python's int digit limit) is a ConfigError at its
    key path, not an OverflowError/ValueError traceback."""
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "timeouts.frontend_idle")
    assert str(info.value).startswith("timeouts.frontend_idle: ")


@pytest.mark.parametrize("value", ["9" * 5000, "1" + "0" * 400 + "TiB", 10**400, 2**63],
                         ids=["5000-digits", "1e400-TiB", "int-1e400", "2**63"])
def test_sizes_beyond_64_bits_are_config_errors(value):
    """A size that no counter can hold (a digit string past Python's conversion limit, or a
    number the token buckets cannot turn into a float) is a ConfigError, not a ValueError at
    load or an OverflowError when the first connection's bucket is built."""
    with pytest.raises(ConfigError) as info:
        parse_size(value, "rate_limits.read.rate")
    assert str(info.value).startswith("rate_limits.read.rate: ")



@pytest.mark.parametrize("path, value, message", [
    ("listen[1].endpoint", "tcp:\u00b2", "tcp: needs a port 0..65535, e.g. 'tcp:8080'"),
    ("listen[1].endpoint", "tcp:" + "1" * 5000, "tcp: needs a port 0..65535, e.g. 'tcp:8080'"),
    ("listen[1].endpoint", "tcp:\u0668\u0660", "tcp: needs a port 0..65535, e.g. 'tcp:8080'"),
    ("backends[0].address", "h:" + "1" * 5000, "port must be 1..65535"),
    ("limits.shared.redis", "redis://h:" + "1" * 5000, "port must be 1..65535"),
    ("limits.shared.redis", "redis://h:6379/" + "1" * 5000,
     'must be a URL such as "redis://127.0.0.1:6379/0"'),
], ids=["superscript-two", "5000-digit-port", "arabic-indic-digits", "backend-5000-digits",
        "redis-5000-digit-port", "redis-5000-digit-db"])
def test_ports_with_odd_digits_are_config_errors(tls_dir, path, value, message):
    """Ports are ASCII digits of sane length: '²' passed str.isdigit() and then crashed int();
    thousands of digits crashed int() on Python's digit limit; Arabic-Indic digits were passed
    on to Twisted as a port."""
    with pytest.raises(ConfigError) as info:
        parse_config(edit(base(), path, value), str(tls_dir))
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("key, value", [
    ("max_concurrent_streams", 2**32), ("max_header_list_size", 2**32),
    ("max_header_list_size", "4GiB"),
])
def test_settings_limits_fit_in_32_bits(tls_dir, key, value):
    """HTTP/2 and SPDY SETTINGS values are 32-bit: a larger limits.max_concurrent_streams or
    max_header_list_size was accepted by --check and then failed every HTTP/2 connection
    (struct.error packing the server's SETTINGS)."""
    with pytest.raises(ConfigError) as info:
        parse_config(edit(base(), f"limits.{key}", value), str(tls_dir))
    assert str(info.value) == f"limits.{key}: must be at most 4294967295"
    limits = parse_config(edit(base(), f"limits.{key}", 2**32 - 1), str(tls_dir)).limits
    assert getattr(limits, key) == 2**32 - 1


def test_yaml_merge_keys_work_and_explicit_keys_override(tmp_path):
    """YAML merge keys (``<<: *anchor``), which yaml.safe_load supports, work: the duplicate-key
    check of StrictLoader used to construct the ``<<`` key itself and reported 'could not
    determine a constructor for the tag merge' as a YAML syntax error."""
    path = tmp_path / "proxy.yaml"
    path.write_text(_MINIMAL + "rate_limits:\n  read: &bucket {rate: 1MiB, burst: 2MiB}\n"
                    "  write: {<<: *bucket, burst: 4MiB}\n")
    limits = load_config(str(path)).rate_limits
    assert limits.write == Bucket(rate=1048576, burst=4194304)
    path.write_text(_MINIMAL + "rate_limits:\n  write: {<<: {rate: 1}, rate: 2, rate: 3}\n")
    with pytest.raises(ConfigError, match="found duplicate key 'rate'"):
        load_config(str(path))


def test_a_key_with_a_newline_is_reported_on_one_line(tmp_path):
    """An unknown key (or a file name) holding a line break is escaped in the message, so each
    problem stays one line and cannot forge another 'path: problem' line."""
    path = tmp_path / "proxy.yaml"
    path.write_text(_MINIMAL + "? \"x\\nlisten: fine\"\n: 1\naccess_log: \"a\\rb/c\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    lines = str(info.value).split("\n")
    assert lines[0].startswith("x\\nlisten: fine: unknown key")
    assert lines[1].startswith("access_log: no such directory '") and "a\\rb" in lines[1]
    assert len(lines) == 2
